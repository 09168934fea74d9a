"""The ``relaydiff`` command line: one sub-command per module in ``relaydiff.commands``.

Errors in user input surface as one line ``error: …`` on stderr and exit status 2, never as a
traceback (set ``RELAYDIFF_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import os
import sys

import click

from . import __version__
from .commands.analyze import analyze
from .commands.data import data
from .commands.demo import demo
from .commands.eval import eval_group
from .commands.sample import sample, upscale
from .commands.train import cascade, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="relaydiff")
def cli() -> None:
    """Relay Diffusion Models: train, sample, upscale and evaluate cascaded pixel diffusion."""


cli.add_command(sample)
cli.add_command(upscale)
cli.add_command(data)
cli.add_command(eval_group)
cli.add_command(train)
cli.add_command(cascade)
cli.add_command(analyze)
cli.add_command(demo)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        cli.main(args=argv, prog_name="relaydiff", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted; finished work is kept and a re-run continues from it.", err=True)
        sys.exit(130)
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("RELAYDIFF_DEBUG"):
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
