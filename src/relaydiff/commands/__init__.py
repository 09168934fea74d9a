"""Sub-commands of the ``relaydiff`` CLI, one module per command (group)."""
