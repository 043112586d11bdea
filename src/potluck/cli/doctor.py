"""``potluck doctor``: check this machine, the host and the cluster, and say how to fix problems."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import typer
from rich.console import Console

from potluck.doctor.node import NodeOptions, check_node, default_state_dir
from potluck.doctor.render import render, to_json
from potluck.errors import ConfigError, NetworkConfigError


def doctor(
    host: str | None = typer.Argument(
        None, metavar="[HOST[:PORT]]", help="The host to check against (as given to `potluck join`)."
    ),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help="Join token."),
    name: str | None = typer.Option(None, "--name", help="This node's name in the report."),
    advertise: str | None = typer.Option(None, "--advertise", help="Address given to `potluck join --advertise`."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="potluck's state dir."),
    experiments_dir: Path = typer.Option(Path("experiments"), "--experiments-dir", help="Where local runs write."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Find and explain setup problems; exit 1 if a check failed."""
    from potluck.net.address import split_host_port

    target: tuple[str, int] | None = None
    if host:
        try:
            target = split_host_port(host, 7077)
        except NetworkConfigError as exc:
            raise ConfigError(str(exc)) from exc
    options = NodeOptions(
        name=name or socket.gethostname(),
        host=target[0] if target else None,
        advertise=advertise,
        state_dir=state_dir or default_state_dir(),
        experiments_dir=experiments_dir,
    )
    report = check_node(options)
    if as_json:
        print(to_json(report))
    else:
        render(report, Console(highlight=False, soft_wrap=True))
    # SystemExit, not typer.Exit: the entry point runs click with standalone_mode=False,
    # where click turns typer.Exit into a return value that would be lost.
    sys.exit(report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
