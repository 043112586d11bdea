"""``potluck doctor``: check this machine, the host and the cluster, and say how to fix problems."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import typer
from rich.console import Console

from potluck.contracts.errors import ConfigError, HostUnreachableError, NetworkConfigError
from potluck.doctor.node import NodeOptions, check_node, default_state_dir
from potluck.doctor.render import render, to_json


def _host_from_state(state_dir: Path | None) -> tuple[str, int, str | None]:
    """HOST, PORT and token of the host running on this machine (its host.json)."""
    from potluck.coordinator.host import read_host_file

    root = state_dir or default_state_dir()
    # --state-dir may name potluck's state dir or, as for `potluck status`, the host's.
    sd = root if (root / "host.json").exists() else root / "host"
    info = read_host_file(sd)
    if info is None:
        raise HostUnreachableError(
            f"no running `potluck host` found in {sd}: give HOST:PORT and --token of the host "
            "to check the cluster from another machine"
        )
    url = str(info["url"])
    host, _, port = url.removeprefix("http://").rpartition(":")
    token_file = sd / "token"
    token = token_file.read_text().strip() if token_file.exists() else None
    return host.strip("[]"), int(port), token


def doctor(
    host: str | None = typer.Argument(
        None, metavar="[HOST[:PORT]]", envvar="POTLUCK_HOST",
        help="The host to check against (as given to `potluck join`).",
    ),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help="Join token."),
    cluster: bool = typer.Option(False, "--cluster", help="Also probe every pair of nodes (full mesh)."),
    name: str | None = typer.Option(None, "--name", help="This node's name in the report."),
    advertise: str | None = typer.Option(None, "--advertise", help="Address given to `potluck join --advertise`."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="potluck's state dir (default ~/.local/share/potluck)."),
    experiments_dir: Path = typer.Option(Path("experiments"), "--experiments-dir", help="Where local runs write."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Find and explain setup problems; exit 1 if a check failed."""
    from potluck.coordinator.host import DEFAULT_PORT
    from potluck.doctor.remote import check_host, cluster_round
    from potluck.net.address import split_host_port

    target: tuple[str, int, str | None] | None = None
    if host:
        try:
            addr, port = split_host_port(host, DEFAULT_PORT)
        except NetworkConfigError as exc:
            raise ConfigError(str(exc)) from exc
        target = (addr, port, token)
    elif cluster:
        addr, port, stored = _host_from_state(state_dir)
        target = (addr, port, token or stored)
    me = name or socket.gethostname()
    report = check_node(NodeOptions(
        name=me,
        host=target[0] if target else None,
        advertise=advertise,
        state_dir=state_dir or default_state_dir(),
        experiments_dir=experiments_dir,
    ))
    if target is not None:
        host_report, client = check_host(me, *target)
        report.extend(host_report)
        if cluster and client is not None:
            nodes = cluster_round(client, "full")
            # This machine's agent reports its own checks in the round: show them once.
            covered = {(c.node, c.id) for c in nodes.checks}
            report.checks = [c for c in report.checks if (c.node, c.id) not in covered]
            report.extend(nodes)
        if client is not None:
            client.close()
    if as_json:
        print(to_json(report))
    else:
        render(report, Console(highlight=False, soft_wrap=True))
    # SystemExit, not typer.Exit: the entry point runs click with standalone_mode=False,
    # where click turns typer.Exit into a return value that would be lost.
    sys.exit(report.exit_code)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
