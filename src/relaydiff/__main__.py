"""``python -m relaydiff`` (and ``torchrun -m relaydiff``): the command line."""

from .app.cli import main

main()
