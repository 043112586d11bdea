"""Entry point of the ``potluck`` command.

Each ``potluck.cli.<module>`` exposes ``register(app)``; this file only collects them and
turns errors into one red line and an exit code (httpx ``_main.py`` style).
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console
from rich.markup import escape

from potluck import __version__
from potluck.contracts.errors import PotluckError
from potluck.log import setup_logging

COMMAND_MODULES = [
    "potluck.cli.training",
    "potluck.cli.cluster",
    "potluck.cli.doctor",
    "potluck.cli.monitoring",
]

app = typer.Typer(
    name="potluck",
    help="Pool a group's machines into one cluster and train PyTorch models on all of them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Typer >= 0.29 vendors click; find its exception classes through a public one.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)
_UsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _version_callback(value: bool) -> None:
    if value:
        print(f"potluck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    del debug  # read by main() before parsing: errors raised while parsing need it too


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; exit 0 on success, 2 on bad input, 1 on other failures."""
    setup_logging()
    debug = "--debug" in (argv if argv is not None else sys.argv)
    try:
        # Without standalone mode, click returns a typer.Exit's code instead of exiting.
        rc = app(args=argv, prog_name="potluck", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        error_line("aborted")
        sys.exit(130)
    except _UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        error_line(exc.format_message().replace("\n", " ") + hint)  # type: ignore[attr-defined]
        sys.exit(2)
    except _ClickException as exc:
        error_line(exc.format_message().replace("\n", " "))  # type: ignore[attr-defined]
        sys.exit(getattr(exc, "exit_code", 1))
    except PotluckError as exc:
        if debug:
            raise
        error_line(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        error_line("interrupted")
        sys.exit(130)
