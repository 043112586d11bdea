"""Cluster commands: ``host``, ``join``, ``status``, ``train``, ``jobs``, ``logs``, ``cancel``.

Thin wiring: parse flags, build the config objects, call the coordinator/agent services and
render. Every failure is a :class:`~potluck.contracts.errors.PotluckError` (one red line, exit code).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from potluck.cli import cluster_view as view
from potluck.cli.options import job_options
from potluck.contracts.addressing import url_host
from potluck.contracts.errors import (
    ConfigError,
    HostUnreachableError,
    MissingTokenError,
    NetworkConfigError,
    TrainingError,
    VersionMismatchError,
)
from potluck.contracts.jobspec import JobSpec

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATE_DIR_HELP = "State directory (default: $XDG_DATA_HOME/potluck/{what} or ~/.local/share/potluck/{what})."
HOST_HELP = "Coordinator URL or HOST[:PORT] (default: the host running in --state-dir)."
TOKEN_HELP = "Join token printed by `potluck host` (prefer the POTLUCK_TOKEN variable: flags show up in `ps`)."


def _host_state_dir(state_dir: Path | None) -> Path:
    from potluck.coordinator.host import default_data_dir

    return state_dir or default_data_dir() / "host"


def _connect(host: str | None, token: str | None, state_dir: Path | None) -> Any:
    """A client for ``--host/--token`` (or their env vars), else the host in the state dir."""
    from potluck.contracts.client import CoordinatorClient
    from potluck.coordinator.host import DEFAULT_PORT, read_host_file
    from potluck.net.address import split_host_port

    if host:
        addr, port = split_host_port(host, DEFAULT_PORT)
        url = f"http://{url_host(addr)}:{port}"
        if not token:
            sd = _host_state_dir(state_dir)
            token = (sd / "token").read_text().strip() if (sd / "token").exists() else None
        if not token:
            raise MissingTokenError("missing token: pass --token or set POTLUCK_TOKEN (printed by `potluck host`)")
        return CoordinatorClient(url, token)
    sd = _host_state_dir(state_dir)
    info = read_host_file(sd)
    if info is None:
        raise HostUnreachableError(
            f"no running `potluck host` found in {sd}: start one, or pass --host URL --token T "
            "(or set POTLUCK_HOST and POTLUCK_TOKEN) to reach a host elsewhere"
        )
    token = token or (sd / "token").read_text().strip()
    return CoordinatorClient(str(info["url"]), token)


def read_token(token_file: Path | None) -> str:
    """The join token from ``--token-file``, else asked for on a terminal (not echoed).
    Raises MissingTokenError (exit code 2) with the ways to give it."""
    if token_file is not None:
        try:
            text = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --token-file {token_file} ({getattr(exc, 'strerror', None) or exc}): "
                              "give a text file holding the token `potluck host` printed") from None
        if text:
            return text
        raise ConfigError(f"--token-file {token_file} is empty: put the token `potluck host` printed in it")
    if sys.stdin.isatty():
        import getpass

        text = getpass.getpass("token (printed by `potluck host`): ").strip()
        if text:
            return text
    raise MissingTokenError("missing token: set POTLUCK_TOKEN, pass --token-file FILE, or run "
                            "`potluck join` in a terminal to be asked for it (printed by `potluck host`)")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


# host -----------------------------------------------------------------------------------------


def host(
    port: int = typer.Option(7077, "--port", help="Coordinator API port (0: any free port)."),
    lighthouse_port: int = typer.Option(7078, "--lighthouse-port", help="torchft Lighthouse port (0: any free port)."),
    advertise: str | None = typer.Option(None, "--advertise", help="Address to bind and advertise (default: VPN address, else primary LAN address)."),
    allow_public: bool = typer.Option(False, "--allow-public", help="Allow a public address (gloo/torchft traffic is unencrypted and unauthenticated)."),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help="Use this join token instead of the stored or a new random one."),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR", help=STATE_DIR_HELP.format(what="host")),
    no_local_agent: bool = typer.Option(False, "--no-local-agent", help="Do not train on this machine; coordinate only."),
    name: str | None = typer.Option(None, "--name", help="Node name of the local agent (default: hostname)."),
    emulate_speed: float | None = typer.Option(None, "--emulate-speed", help="Emulated speed factor of the local agent (testing)."),
    show_ports: bool = typer.Option(False, "--show-ports", help="List the ports the cluster uses (to open in a firewall) and exit."),
    json_out: bool = typer.Option(False, "--json", help="Print the join details as one JSON line instead of text."),
) -> None:
    """Start the coordinator (API, Lighthouse, local agent) and print the join command."""
    from potluck.contracts.versions import local_versions
    from potluck.coordinator.auth import load_or_create_metrics_token, load_or_create_token
    from potluck.coordinator.config import Timeouts
    from potluck.coordinator.host import Host, HostConfig
    from potluck.dashboard.routes import dashboard_router
    from potluck.doctor.rounds import doctor_router
    from potluck.net import address as net

    for flag, value in (("--port", port), ("--lighthouse-port", lighthouse_port)):
        if not 0 <= value < 65536:
            raise ConfigError(f"{flag} must be in 0-65535, got {value}")
    if emulate_speed is not None:
        check_speed(emulate_speed)
    timeouts = Timeouts.from_env()  # bad input stops here, before the state dir is written
    if show_ports:
        rows = view.ports_rows(port, lighthouse_port, _ephemeral_range())
        _print_json(rows) if json_out else console.print(view.ports_table(rows))
        return
    choice = net.choose_advertise(
        net.list_interfaces(),
        override=advertise,
        allow_public=allow_public,
        default_interface=net.default_route_interface(),
    )
    sd = _host_state_dir(state_dir)
    from potluck.coordinator.host import prepare_state_dir

    prepare_state_dir(sd)
    the_token = load_or_create_token(sd, token)
    agent_args = ["--name", name] if name else []
    if emulate_speed is not None:
        agent_args += ["--emulate-speed", str(emulate_speed)]
    if allow_public:
        agent_args.append("--allow-public")
    config = HostConfig(
        state_dir=sd, advertise=choice.address, interface=choice.interface, port=port,
        lighthouse_port=lighthouse_port, token=the_token,
        metrics_token=load_or_create_metrics_token(sd), versions=local_versions(),
        local_agent=not no_local_agent, agent_args=agent_args, timeouts=timeouts,
    )
    the_host = Host(config, routers=[doctor_router, dashboard_router])

    def ready() -> None:
        # The token is never part of a command line (shell history, `ps`): `join` asks for it,
        # or reads POTLUCK_TOKEN or --token-file.
        join = f"potluck join {url_host(choice.address)}:{config.port}"
        token_file = sd / "token"
        if json_out:  # one line: a script reads it while the host keeps running
            sys.stdout.write(json.dumps({"url": config.url, "advertise": choice.address, "port": config.port,
                                         "lighthouse_port": config.lighthouse_port, "state_dir": str(sd),
                                         "join": join, "token_file": str(token_file),
                                         "dashboard": config.url + "/"}) + "\n")
            sys.stdout.flush()
            return
        console.print(f"[bold green]potluck host[/] at {escape(config.url)} ({escape(choice.reason)})")
        if choice.kind.value == "loopback":
            console.print("[yellow]advertising a loopback address: only this machine can join[/]")
        console.print(f"state dir {escape(str(sd))}; Lighthouse on port {config.lighthouse_port}; "
                      f"local agent {'off' if no_local_agent else 'on'}")
        console.print("On each friend's machine run (it asks for the token):")
        console.print(f"  {join}", soft_wrap=True, markup=False)
        if sys.stdout.isatty():
            console.print(f"  token: {the_token}", soft_wrap=True, markup=False)
        else:  # a redirected log must not hold the secret
            console.print(f"  token: in {token_file} (mode 0600)", soft_wrap=True, markup=False)
        if sys.stdout.isatty():
            console.print(f"Dashboard: {dashboard_link(config.url, the_token)}", soft_wrap=True, markup=False)
        else:  # the link holds the token: `potluck dashboard` prints it on demand
            console.print(f"Dashboard: {config.url}/ (sign in with the link `potluck dashboard` prints on "
                          "this machine)", soft_wrap=True, markup=False)
        console.print(f"Prometheus: scrape {config.url}/metrics with the bearer token in "
                      f"{sd / 'metrics-token'} (it can only read metrics)", soft_wrap=True, markup=False)
        console.print("Ctrl-C stops the host.")

    the_host.serve(on_ready=ready)


def dashboard_link(url: str, token: str) -> str:
    """The dashboard's sign-in link: the token rides in the fragment (``#t=``), which a
    browser never sends to the server; the page trades it for a session cookie."""
    from urllib.parse import quote

    return f"{url}/#t={quote(token, safe='')}"


def _ephemeral_range() -> str:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return f"{low}-{high}"
    except (OSError, ValueError):
        return "32768-60999"


# join -----------------------------------------------------------------------------------------

TRUST_NOTICE = ("joining {host} lets its jobs run code on this machine as your user (a job file "
                "and its folder are shipped to every node)")


def confirm_trust(state_dir: Path, host: str, yes: bool) -> None:
    """Ask once per host whether it may run job code here; remembered in the state dir.
    Raises ConfigError when nobody can answer (no terminal, no --yes)."""
    from potluck.coordinator.auth import write_private

    path = state_dir / "trusted_hosts.json"
    try:
        trusted = set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        trusted = set()
    if host in trusted:
        return
    notice = TRUST_NOTICE.format(host=host)
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"{notice}: pass --yes to accept, or --builtin-only to run only "
                              "built-in models")
        err.print(f"[yellow]{escape(notice)}[/]")
        if not typer.confirm("trust this host?", default=False, err=True):
            raise ConfigError("not joined: the host was not trusted (--builtin-only joins "
                              "without running shipped code)")
    state_dir.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(sorted(trusted | {host})) + "\n")


def join(
    host_addr: str = typer.Argument(..., metavar="HOST[:PORT]", help="Address printed by `potluck host`."),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help=TOKEN_HELP),
    token_file: Path | None = typer.Option(None, "--token-file", help="Read the join token from this file (kept out of shell history and `ps`)."),
    name: str | None = typer.Option(None, "--name", help="Node name (default: hostname; duplicates get a suffix)."),
    advertise: str | None = typer.Option(None, "--advertise", help="This node's address (default: source address of the route to HOST)."),
    allow_public: bool = typer.Option(False, "--allow-public", help="Allow a public address for this node's replicas."),
    emulate_speed: str = typer.Option("1.0", "--emulate-speed", help="Emulate a device this many times as fast (0.25: 4x slower), or one factor per device (1,0.5); testing."),
    device: str = typer.Option("auto", "--device", help="Devices to train on, one replica each: auto (every visible GPU, else cpu), cpu, cuda, cuda:N, or a list such as cuda:0,cuda:1."),
    threads: int = typer.Option(0, "--threads", help="torch threads per replica (0: default)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_AGENT_DIR", help=STATE_DIR_HELP.format(what="agent")),
    yes: bool = typer.Option(False, "--yes", "-y", help="Accept that the host may run job code on this machine without asking (scripts)."),
    builtin_only: bool = typer.Option(False, "--builtin-only", help="Run only potluck's built-in models here, never code a job ships."),
) -> None:
    """Join a cluster: register this machine, then run the jobs the host assigns. Ctrl-C leaves.

    Joining lets the host run a job's code on this machine (as your user); potluck asks once
    per host (--yes accepts, --builtin-only runs built-in models only)."""
    from potluck.agent import devices as dev
    from potluck.agent.hardware import detect_gpus
    from potluck.agent.node import Agent, AgentConfig, default_node_name
    from potluck.agent.runner import NodeSettings
    from potluck.coordinator.host import DEFAULT_PORT, default_data_dir
    from potluck.doctor.responder import DoctorResponder
    from potluck.net import address as net

    token = token or read_token(token_file)
    if threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {threads}")
    devices = dev.parse_devices(device, dev.visible_gpu_count(len(detect_gpus())) if device == "auto" else 0)
    speeds = dev.parse_speeds(emulate_speed, len(devices))
    for speed in speeds:
        check_speed(speed)
    addr, port = net.split_host_port(host_addr, DEFAULT_PORT)
    interfaces = net.list_interfaces()
    try:
        choice = net.agent_address(addr, interfaces, override=advertise, allow_public=allow_public)
    except NetworkConfigError as exc:
        hint = None if advertise else net.vpn_down_hint(addr, None)
        raise (NetworkConfigError(hint) if hint else exc) from exc
    root = state_dir or default_data_dir() / "agent"
    if not builtin_only:
        confirm_trust(root, f"{addr}:{port}", yes)
    lock = dev.StateDirLock(root).acquire()
    names = dev.device_nodes(name or default_node_name(), devices)
    agents = [
        Agent(
            AgentConfig(
                url=f"http://{url_host(net.resolve(addr))}:{port}",
                token=token,
                name=node_name,
                state_dir=dev.device_state_dir(root, devices, i),
                node=NodeSettings(advertise=choice.address, interface=choice.interface,
                                  speed=speeds[i], device=devices[i], threads=threads),
                interface=choice.interface,
                builtin_only=builtin_only,
            ),
            on_event=_event_printer(node_name if len(devices) > 1 else None),
            services=[DoctorResponder],
        )
        for i, node_name in enumerate(names)
    ]
    joined: list[Any] = []
    try:
        for agent in agents:
            joined.append(agent.join())
    except VersionMismatchError as exc:
        err.print(view.versions_table(exc.diffs))
        raise
    except HostUnreachableError as exc:
        hint = net.vpn_down_hint(addr, choice)
        if hint is None:
            raise
        raise HostUnreachableError(f"cannot reach the host: {hint} (the connection: {exc})") from exc
    finally:
        if len(joined) < len(agents):
            for agent in agents[: len(joined)]:
                agent.stop()
                agent.run()  # stops at once: leaves the cluster cleanly
            lock.release()
    for agent, reg, device_name in zip(agents, joined, devices):
        on = f" on {device_name}" if len(devices) > 1 else ""
        console.print(
            f"[bold green]joined[/] {escape(agent.config.url)} as [bold]{escape(reg.name)}[/] "
            f"(slot {reg.slot}){escape(on)} from {escape(choice.address)} via "
            f"{escape(choice.interface or '?')}; waiting for jobs. Ctrl-C leaves."
        )

    def stop_all(*_: Any) -> None:
        for agent in agents:
            agent.stop()

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    try:
        dev.run_all([agent.run for agent in agents])
    finally:
        lock.release()
    for reg in joined:
        console.print(f"{reg.name} left the cluster", markup=False)


# status / jobs / logs -------------------------------------------------------------------------


def status(
    host_url: str | None = typer.Option(None, "--host", envvar="POTLUCK_HOST", help=HOST_HELP),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help=TOKEN_HELP),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR", help=STATE_DIR_HELP.format(what="host")),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the cluster's nodes (devices, speed, state, last heartbeat, versions) and the
    running job's progress and sync (`potluck jobs --json` has every job's figures)."""
    client = _connect(host_url, token, state_dir)
    nodes = client.nodes()
    if json_out:
        from potluck.doctor.remote import attach_links

        _print_json(attach_links(client, [n.model_dump() for n in nodes]))
        return
    if not nodes:
        console.print("no nodes yet: run `potluck join` on a machine")
    else:
        console.print(view.nodes_table(nodes))
    for job in client.jobs():
        if job.state == "running":
            console.print(view.job_status_text(job))


def jobs(
    host_url: str | None = typer.Option(None, "--host", envvar="POTLUCK_HOST", help=HOST_HELP),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help=TOKEN_HELP),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR", help=STATE_DIR_HELP.format(what="host")),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List jobs, newest first."""
    found = _connect(host_url, token, state_dir).jobs()
    if json_out:
        _print_json([j.model_dump() for j in found])
    elif not found:
        console.print("no jobs yet: submit one with `potluck train`")
    else:
        console.print(view.jobs_table(found))


def logs(
    job_id: int = typer.Argument(..., metavar="JOB", help="Job id (see `potluck jobs`)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events until the job ends."),
    host_url: str | None = typer.Option(None, "--host", envvar="POTLUCK_HOST", help=HOST_HELP),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help=TOKEN_HELP),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR", help=STATE_DIR_HELP.format(what="host")),
    json_out: bool = typer.Option(False, "--json", help="Print JSON lines instead of text."),
) -> None:
    """Show a job's events (submitted, started, replicas joining and leaving, result)."""
    from potluck.contracts.wire import FINISHED_JOB_STATES

    client = _connect(host_url, token, state_dir)
    after = 0
    while True:
        for event in client.events(job_id, after):
            after = event.id
            if json_out:
                sys.stdout.write(event.model_dump_json() + "\n")
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.t))
                node = f" [{event.node}]" if event.node else ""
                console.print(f"{stamp} {event.kind}{node}: {event.message}", markup=False)
        if not follow or client.job(job_id).state in FINISHED_JOB_STATES:
            return
        time.sleep(1.0)


def cancel(
    job_id: int = typer.Argument(..., help="Job id (see `potluck jobs`)."),
    host_url: str | None = typer.Option(None, "--host", envvar="POTLUCK_HOST", help=HOST_HELP),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help=TOKEN_HELP),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR", help=STATE_DIR_HELP.format(what="host")),
    json_out: bool = typer.Option(False, "--json", help="Print the cancelled job as JSON."),
) -> None:
    """Cancel a queued or running job: its replicas stop and the next queued job starts."""
    if job_id < 1:
        raise ConfigError(f"JOB_ID must be a job id from `potluck jobs` (1 or more), got {job_id}")
    job = _connect(host_url, token, state_dir).cancel(job_id)
    if json_out:
        _print_json(job.model_dump())
    else:
        console.print(f"job {job.id} ({job.name}) {job.state}", markup=False)


def forget(
    names: list[str] = typer.Argument(None, metavar="[NODE]...", help="Names of nodes that are away (see `potluck status`)."),
    away: bool = typer.Option(False, "--away", help="Forget every node that is lost or has left."),
    host_url: str | None = typer.Option(None, "--host", envvar="POTLUCK_HOST", help=HOST_HELP),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help=TOKEN_HELP),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR", help=STATE_DIR_HELP.format(what="host")),
    json_out: bool = typer.Option(False, "--json", help="Print the forgotten nodes as JSON."),
) -> None:
    """Forget nodes that are away: they leave `potluck status`, the running job stops waiting
    for them, and their names and slots are free. A forgotten machine can join again."""
    if not names and not away:
        raise ConfigError("name the nodes to forget (see `potluck status`), or pass --away for "
                          "every node that is lost or has left")
    client = _connect(host_url, token, state_dir)
    if away:
        names = [*(names or []), *(n.name for n in client.nodes() if n.state != "alive")]
    forgotten = [client.forget(name) for name in dict.fromkeys(names)]
    if json_out:
        _print_json([n.model_dump() for n in forgotten])
    elif not forgotten:
        console.print("no node is away: nothing to forget")
    for node in [] if json_out else forgotten:
        console.print(f"forgot {node.name} (slot {node.slot} is free)", markup=False)


# train ----------------------------------------------------------------------------------------


def check_speed(speed: float) -> None:
    """``--emulate-speed`` must be a finite factor in (0, 1000). Raises ConfigError."""
    if not 0 < speed < 1000:
        raise ConfigError(f"--emulate-speed must be in (0, 1000), got {speed} (0.25 behaves "
                          "like a device 4x slower)")


def _read_yaml(config_file: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(config_file.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read --config {config_file}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {config_file} is not a text (YAML) file: pass a job "
                          "file like docs/jobs.md shows") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {config_file} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {config_file} must be a mapping of job fields, e.g. `model: mlp`")
    return loaded


def job_config(config_file: Path | None, flags: dict[str, Any], job_file: Path | None = None,
               base: dict[str, Any] | None = None, *, names: bool = True) -> JobSpec:
    """The job: ``base`` (a resumed job's fields), then the job file's ``POTLUCK`` defaults,
    then a YAML file, then flags; validated (``names``: the model, data set and sync names
    too, against the kernel's registries, which import torch). Raises ConfigError."""
    from potluck.contracts.jobspec import merge_fields

    layers: list[dict[str, Any]] = [base or {}]
    if job_file is not None:
        from potluck.recipes.jobfile import job_defaults

        layers.append(job_defaults(job_file))
        layers.append({"code": {"file": str(job_file.resolve()), "bundle": None}})
    if config_file is not None:
        layers.append(_read_yaml(config_file))
    spec = JobSpec.parse(merge_fields(*layers)).with_options(flags)
    if not names:
        return spec
    from potluck.recipes import check_spec

    return check_spec(spec)


def _ship(client: Any, spec: JobSpec, quiet: bool) -> JobSpec:
    """Pack the job file's folder, print the manifest, upload it; the spec names the bundle."""
    from potluck.contracts.bundle import pack

    assert spec.code.file is not None
    path = Path(spec.code.file)
    bundle = pack(path.parent)
    if not quiet:
        shown = ", ".join(f"{name} ({size:,} B)" for name, size in bundle.files[:8])
        more = f" and {len(bundle.files) - 8} more" if len(bundle.files) > 8 else ""
        err.print(f"shipping {escape(str(path.parent))}: {len(bundle.files)} file(s), "
                  f"{bundle.raw_bytes / 1e6:.2f} MB ({len(bundle.data) / 1e6:.2f} MB packed, "
                  f"sha256 {bundle.sha256[:12]}): {escape(shown)}{more}")
    info = client.upload_bundle(bundle.data)
    return spec.updated({"code.file": path.name, "code.bundle": info.sha256})


@job_options
def train(
    job_flags: dict[str, Any],
    job_file: Path | None = typer.Argument(None, metavar="[JOB_FILE]", help="Your job file (a .py defining model, dataset and loss; see docs/jobfiles.md); its folder is shipped to every node. Without it, a built-in model trains."),
    config_file: Path | None = typer.Option(None, "--config", help="YAML file of job fields (sections or the flat option names below, see docs/jobs.md); flags override it."),
    resume: int | None = typer.Option(None, "--resume", metavar="JOB", help="Continue this finished, failed or cancelled job from its last checkpoint (same data order; give --steps for more)."),
    name: str | None = typer.Option(None, "--name", help="Job name shown in `potluck jobs`."),
    detach: bool = typer.Option(False, "--detach", help="Submit and return at once."),
    json_out: bool = typer.Option(False, "--json", help="Print a final JSON summary instead of a progress bar."),
    host_url: str | None = typer.Option(None, "--host", envvar="POTLUCK_HOST", help=HOST_HELP),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help=TOKEN_HELP),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR", help=STATE_DIR_HELP.format(what="host")),
) -> None:
    """Train a model on every live node of the cluster; shows progress until the job ends."""
    from potluck.contracts.jobspec import MIN_USEFUL_STEPS

    if job_file is not None and job_file.suffix in (".yaml", ".yml") and config_file is None:
        job_file, config_file = None, job_file  # `potluck train job.yaml` means --config
    if job_file is not None and not job_file.is_file():
        raise ConfigError(f"job file {job_file} not found: pass the path of your .py job file")
    client = _connect(host_url, token, state_dir) if resume is not None else None
    base = None
    if resume is not None:
        assert client is not None
        old = client.job(resume)
        base = old.config.model_dump(exclude={"code"}) if job_file is not None else old.config.model_dump()
    # A built-in job's names are checked by the host on submission (the same check, with one
    # line and exit code 2 for a bad name): this command then starts without importing torch
    # (about 1.5 s). A job file is loaded here (its defaults), so it is checked here too.
    config = job_config(config_file, job_flags, job_file, base, names=job_file is not None)
    code_root = None
    if config.code.file is not None and config.code.bundle is None:
        code_root = Path(config.code.file).parent
    if config.counts_epochs:  # counting an epoch's steps loads the data set
        from potluck.trainer.core import planned_steps

        total = planned_steps(config, code_root)
    else:
        total = config.total_steps(1)
    if total < MIN_USEFUL_STEPS and config.code.file is None:
        err.print(f"[yellow]warning:[/] this job trains only {total} step(s); the built-in models "
                  f"need about {MIN_USEFUL_STEPS} to learn (see docs/jobs.md): pass --steps "
                  f"{MIN_USEFUL_STEPS * 2} or more, or more --epochs")
    client = client or _connect(host_url, token, state_dir)
    from potluck.doctor.remote import preflight  # no job on a cluster that would fail

    preflight(client)
    if config.code.file is not None and config.code.bundle is None:
        config = _ship(client, config, json_out)
    job = client.submit_resume(config, resume, name) if resume is not None else client.submit(config, name)
    if detach:
        if json_out:
            _print_json({"job_id": job.id, "state": job.state})
        else:
            console.print(f"submitted job {job.id} ({job.state}); follow it with `potluck logs {job.id} -f`")
        return
    # Ctrl-C only sets a flag that _watch checks between polls: a KeyboardInterrupt raised in
    # the middle of an HTTP call could leave the client unusable for the cancel request.
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        job = _watch(client, job.id, total, quiet=json_out, stop=interrupted)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        job = client.job(job.id)
        if job.state not in ("succeeded", "failed", "cancelled"):
            try:
                cancel = typer.confirm(f"\ncancel job {job.id}?", default=False, err=True)
            except (typer.Abort, EOFError):
                cancel = False
            if cancel:
                job = client.cancel(job.id)
                err.print(f"job {job.id} cancelled")
            else:
                err.print(f"job {job.id} keeps running; follow it with `potluck logs {job.id} -f`")
                return
    _report(job, json_out)


def _watch(client: Any, job_id: int, total: int | None, *, quiet: bool,
           stop: threading.Event) -> Any:
    """Poll the job until it finishes or ``stop`` is set; returns the last JobInfo."""
    from potluck.contracts.wire import FINISHED_JOB_STATES

    if quiet:
        while (job := client.job(job_id)).state not in FINISHED_JOB_STATES and not stop.wait(0.5):
            pass
        return job
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(f"job {job_id} queued", total=total)
        while True:
            job = client.job(job_id)
            bar.update(task, completed=job.progress.step, description=view.progress_text(job))
            if job.state in FINISHED_JOB_STATES:
                if job.summary:
                    bar.update(task, completed=job.summary.steps)
                return job
            if stop.wait(0.5):
                return job


def _report(job: Any, json_out: bool) -> None:
    summary = job.summary
    if json_out:
        _print_json(summary.model_dump() if summary else {"job_id": job.id, "state": job.state})
    elif summary:
        console.print(view.summary_table(summary))
    if job.state != "succeeded":
        raise TrainingError(f"job {job.id} {job.state}: {job.message or 'no details'} (see `potluck logs {job.id}`)")


def pull(
    job_id: int = typer.Argument(..., metavar="JOB", help="Job id (see `potluck jobs`)."),
    path: Path | None = typer.Argument(None, help="Where to write the model (default: ./job-JOB-model.safetensors)."),
    checkpoint: bool = typer.Option(False, "--checkpoint", help="Fetch the last full checkpoint (model, optimizer, step ...) instead of the model."),
    force: bool = typer.Option(False, "--force", help="Overwrite PATH if it exists."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object about the file."),
    host_url: str | None = typer.Option(None, "--host", envvar="POTLUCK_HOST", help=HOST_HELP),
    token: str | None = typer.Option(None, "--token", envvar="POTLUCK_TOKEN", help=TOKEN_HELP),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="POTLUCK_STATE_DIR", help=STATE_DIR_HELP.format(what="host")),
) -> None:
    """Fetch a job's trained model (safetensors) from the host, from any machine with the token."""
    import hashlib

    from potluck.system import write_atomic

    kind = "checkpoint" if checkpoint else "model"
    path = path or Path(f"job-{job_id}-{kind}.safetensors")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists: pass --force to overwrite it, or another PATH")
    if not path.resolve().parent.is_dir():
        raise ConfigError(f"folder {path.resolve().parent} does not exist: create it or pass another PATH")
    client = _connect(host_url, token, state_dir)
    step = None
    if checkpoint:
        step, data = client.checkpoint(job_id)
    else:
        data = client.model(job_id)
    write_atomic(path, data)
    digest = hashlib.sha256(data).hexdigest()
    info = {"job_id": job_id, "kind": kind, "path": str(path), "bytes": len(data),
            "sha256": digest, "step": step}
    if json_out:
        _print_json(info)
    else:
        what = f"checkpoint after step {step}" if checkpoint else "model"
        console.print(f"wrote job {job_id}'s {what} to {escape(str(path))} ({len(data) / 1e6:.2f} MB, "
                      f"sha256 {digest[:12]}); load it with "
                      "safetensors.torch.load_file(PATH)")


def _event_printer(who: str | None) -> Callable[[str], None]:
    """An agent's event line on stderr, timed, and named by its node when one command runs
    several (``who``)."""

    def show(msg: str) -> None:
        err.print(f"[dim]{time.strftime('%H:%M:%S')}[/] " + escape(f"{who}: {msg}" if who else msg))

    return show


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the ``potluck`` CLI."""
    for command in (host, join, status, train, jobs, logs, cancel, forget, pull):
        app.command(command.__name__)(command)
