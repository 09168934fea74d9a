"""The version of relaydiff (one place; recorded in every file relaydiff writes)."""

__version__ = "0.1.0"
