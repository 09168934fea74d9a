"""The ``relaydiff`` command line: one sub-command per module in ``relaydiff.app.commands``.

Errors in user input surface as one line ``error: …`` on stderr and exit status 2, never as a
traceback (set ``RELAYDIFF_DEBUG=1`` to see the traceback); warnings are one line
``warning: …``. Command modules import only click at module level (torch and the rest are
imported when a command runs), so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import os
import sys
import warnings

import click

from ..version import __version__
from .commands.analyze import analyze
from .commands.convert import convert
from .commands.data import data
from .commands.demo import demo
from .commands.ema import ema
from .commands.eval import eval_group
from .commands.sample import sample, upscale
from .commands.study import study
from .commands.train import cascade, train
from .threads import apply_thread_policy


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
cli.add_command(study)
cli.add_command(convert)
cli.add_command(ema)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warning: <message>`` on stderr (no source line), on a line of its own."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    click.echo(f"\nwarning: {text}" if _tqdm_active() else f"warning: {text}", err=True)


def _tqdm_active() -> bool:
    tqdm_module = sys.modules.get("tqdm")
    return bool(tqdm_module and getattr(tqdm_module.tqdm, "_instances", None))


def _error_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split("\n")[0].split())


def main(argv: list[str] | None = None) -> None:
    """Console entry point (it sets the CPU thread policy before anything imports torch)."""
    apply_thread_policy()
    debug = bool(os.environ.get("RELAYDIFF_DEBUG"))
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        cli.main(args=argv, prog_name="relaydiff", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        prefix = "\n" if _tqdm_active() else ""
        click.echo(f"{prefix}error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("\nInterrupted; finished work is kept and a re-run continues from it.", err=True)
        sys.exit(130)
    except (ValueError, OSError, RuntimeError, MemoryError) as e:
        if debug:
            raise
        prefix = "\n" if _tqdm_active() else ""
        click.echo(f"{prefix}error: {_error_line(e)}", err=True)
        sys.exit(2)
