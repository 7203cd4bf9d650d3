"""The typer application, its error handling and the registration of every subcommand."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import typer
from rich.console import Console

from gradleak.errors import GradleakError

app = typer.Typer(
    name="gradleak",
    help=(
        "Measure how much private text leaks from the updates clients share in federated "
        "fine-tuning."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)


def _register() -> None:
    from gradleak.cli import attack, demo, invert, listing, report, simulate, sweep

    for module in (demo, attack, sweep, invert, simulate, report, listing):
        module.register(app)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


#: Commands that a rerun resumes where an interruption stopped them.
RESUMABLE = ("attack", "sweep")
#: The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> None:
    """Runs the command line; a GradleakError becomes its message and exit status 2.

    Ctrl-C prints one line and exits 130, so a scheduler never reads an interrupted run as done.
    """
    _quiet_libraries()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # Outside standalone mode typer returns a command's exit status (130 for Ctrl-C).
        status = app(args=args, standalone_mode=False)
    except GradleakError as err:
        errors.print(f"[bold red]error:[/] {err}")
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted(args)
    except Exception as err:
        # Usage errors, aborts and exits come from the click that typer bundles (typer._click in
        # typer >= 0.29, click before it), so they are recognised by what they carry.
        if type(err).__name__ == "Abort":
            _interrupted(args)
        if hasattr(err, "show") and hasattr(err, "exit_code"):
            err.show()
            sys.exit(err.exit_code)
        if hasattr(err, "exit_code"):
            sys.exit(err.exit_code)
        raise
    if status == INTERRUPTED:
        _interrupted(args)
    if isinstance(status, int) and status:
        sys.exit(status)


def _interrupted(args: list[str]) -> NoReturn:
    """Says that the command was interrupted (and how to resume it) and exits 130."""
    resume = "; rerun the same command to resume" if args and args[0] in RESUMABLE else ""
    errors.print(f"interrupted{resume}")
    sys.exit(INTERRUPTED)


_register()
