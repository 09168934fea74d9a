"""``python -m relaydiff`` runs the command line."""

from .cli import main

main()
