"""``potluck host``: the coordinator API, the Lighthouse and the local agent, wired together.

Start-up order makes failure cheap: bind the API socket and check the Lighthouse's port first
(a taken port fails before anything is written), then open and check the SQLite store (a
damaged one fails before anything starts), start the Lighthouse, write ``host.json`` (how local
commands find the API), serve, and start the local agent once the API answers. On Ctrl-C or
SIGTERM everything is stopped in reverse order and ``host.json`` is removed.

State dir layout::

    potluck.db          SQLite: nodes, jobs, replicas, events, metrics
    token               the join token (0600)
    metrics-token       the scrape secret for GET /metrics (0600): give this one to Prometheus
    host.json           url, ports and pid of the running host (absent when stopped)
    experiments/job-N/  per-job metrics (replicas/<node>.jsonl) and summary.json
    local-agent/        the host's own agent: its node key, runs and log
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from potluck.contracts.errors import ExperimentDirError, PortInUseError, StorageError
from potluck.contracts.wire import Versions
from potluck.coordinator.auth import write_private
from potluck.coordinator.config import Timeouts
from potluck.coordinator.lighthouse import Lighthouse, LighthouseSettings, check_port_free
from potluck.coordinator.service import Coordinator, CoordinatorConfig
from potluck.coordinator.store import Store
from potluck.log import get_logger

if TYPE_CHECKING:
    from potluck.coordinator.app import Router
from potluck.contracts.addressing import url_host

log = get_logger("host")

DEFAULT_PORT = 7077
DEFAULT_LIGHTHOUSE_PORT = 7078


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/potluck`` (``~/.local/share/potluck``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "potluck"


@dataclass(kw_only=True)
class HostConfig:
    """Everything ``potluck host`` needs, validated by the CLI."""

    state_dir: Path
    """Where the database, token and experiments live."""
    advertise: str
    """Address to bind and advertise (already checked against the public-address rule)."""
    interface: str | None
    """Interface of ``advertise`` (for the local agent's gloo/NCCL settings)."""
    port: int = DEFAULT_PORT
    """HTTP API port (0: pick a free one)."""
    lighthouse_port: int = DEFAULT_LIGHTHOUSE_PORT
    """torchft Lighthouse port (0: pick a free one)."""
    token: str
    """The join token."""
    metrics_token: str | None = None
    """The scrape secret ``GET /metrics`` also accepts (None: only the join token)."""
    versions: Versions
    """This machine's versions."""
    local_agent: bool = True
    """Also run an agent here so the host's devices train."""
    agent_args: list[str] = field(default_factory=list)
    """Extra ``potluck join`` arguments for the local agent (``--emulate-speed``, ``--name``)."""
    lighthouse: LighthouseSettings = field(default_factory=LighthouseSettings)
    """Quorum settings."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """Heartbeats, lost nodes and the waits of a job's life cycle (``POTLUCK_HOST_TIMEOUTS``)."""

    @property
    def url(self) -> str:
        return f"http://{url_host(self.advertise)}:{self.port}"


def prepare_state_dir(path: Path) -> Path:
    """Create the state dir (0700). Raises ExperimentDirError if it cannot be written, and
    StorageError if its disk is full (the probe writes a few pages, as the database will)."""
    probe = path / ".write-test"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe.write_bytes(b"\0" * 65536)
        probe.unlink()
    except OSError as exc:
        probe.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(
                f"the disk holding {path} is full ({exc.strerror}): free space there, or pass "
                "--state-dir on another disk"
            ) from exc
        raise ExperimentDirError(
            f"state dir {path} is not writable ({exc.strerror}): pass --state-dir with a "
            "directory you own"
        ) from exc
    return path


def bind_api_socket(address: str, port: int) -> socket.socket:
    """The API's listening socket, bound now so a taken port fails early. Raises PortInUseError."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only when it does, and
    # without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise PortInUseError(
            f"cannot listen on {address}:{port} ({exc.strerror}): is another `potluck host` "
            "running? Stop it, or pass --port with a free port"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def loopback_sockets(advertise: str, port: int) -> list[socket.socket]:
    """The API on ``127.0.0.1:port`` too, so the host's own machine always reaches its
    coordinator, whichever address is advertised (an IPv6 ULA, a VPN address that went down).
    Empty when ``advertise`` is a loopback address; a taken loopback port is logged, not fatal.
    """
    if ipaddress.ip_address(advertise.strip("[]")).is_loopback:
        return []
    try:
        return [bind_api_socket("127.0.0.1", port)]
    except PortInUseError as exc:
        log.warning("the API is not on loopback: %s", exc)
        return []


def agent_lock_holder(agent_dir: Path) -> int | None:
    """Pid of the live agent holding ``agent_dir/agent.lock`` (see ``agent.devices``), or None."""
    path = agent_dir / "agent.lock"
    if not path.exists():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            text = fh.read().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def read_host_file(state_dir: Path) -> dict[str, object] | None:
    """``host.json`` of a running host in ``state_dir``, or None."""
    try:
        return json.loads((state_dir / "host.json").read_text())
    except (OSError, ValueError):
        return None


class Host:
    """A running host: call :meth:`serve` (blocks until Ctrl-C / SIGTERM)."""

    def __init__(self, config: HostConfig, *, routers: Sequence[Router] = ()) -> None:
        """``routers`` extend the API (``potluck host`` passes the doctor's)."""
        self.config = config
        self.routers = list(routers)
        prepare_state_dir(config.state_dir)
        check_port_free(config.advertise, config.lighthouse_port, "lighthouse", "--lighthouse-port")
        self.sock = bind_api_socket(config.advertise, config.port)
        config.port = self.sock.getsockname()[1]
        self.sockets = [self.sock, *loopback_sockets(config.advertise, config.port)]
        try:
            # The database before the Lighthouse: a damaged one stops the host with its one
            # line last (the Lighthouse's native log would print after it), nothing started.
            self.store = Store(config.state_dir / "potluck.db")
            self.lighthouse = Lighthouse(config.advertise, config.lighthouse_port, config.lighthouse)
        except BaseException:
            for sock in self.sockets:
                sock.close()
            if hasattr(self, "store"):
                self.store.close()
            raise
        config.lighthouse_port = self.lighthouse.port
        self.coordinator = Coordinator(
            self.store,
            CoordinatorConfig(
                state_dir=config.state_dir,
                advertise=config.advertise,
                port=config.port,
                lighthouse_port=config.lighthouse_port,
                versions=config.versions,
                timeouts=config.timeouts,
            ),
        )
        self.agent: subprocess.Popen[bytes] | None = None
        self.adopted_agent: int | None = None
        """Pid of a local agent left running by a previous host process, kept (not duplicated)."""

    def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        import uvicorn

        from potluck.coordinator.app import create_app

        host = self

        class _Server(uvicorn.Server):
            # The local agent must say goodbye while the API still answers: stop it first.
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if self.should_exit or getattr(self, "_stopping", False):
                    super().handle_exit(sig, frame)  # a second Ctrl-C: stop now
                    return
                self._stopping = True
                threading.Thread(target=self._graceful, daemon=True).start()

            def _graceful(self) -> None:
                host.coordinator.closing = True  # long polls answer now, not at a timeout
                host._stop_local_agent()
                self.should_exit = True

        app = create_app(self.coordinator, self.config.token, tick_s=self.config.timeouts.housekeeping_interval_s,
                         metrics_token=self.config.metrics_token, routers=self.routers)
        server = _Server(
            uvicorn.Config(
                app, log_level="warning", access_log=False, lifespan="on",
                timeout_graceful_shutdown=3, timeout_keep_alive=30,
            )
        )
        host_file = self.config.state_dir / "host.json"

        def when_up() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.02)
            if server.should_exit:
                return
            write_private(
                host_file,
                json.dumps(
                    {
                        "url": self.config.url,
                        "advertise": self.config.advertise,
                        "port": self.config.port,
                        "lighthouse_port": self.config.lighthouse_port,
                        "pid": os.getpid(),
                    }
                ),
            )
            if self.config.local_agent:
                self.agent = self._start_local_agent()
            if on_ready:
                on_ready()

        threading.Thread(target=when_up, name="host-ready", daemon=True).start()
        try:
            server.run(sockets=self.sockets)
        finally:
            self._stop_local_agent()
            host_file.unlink(missing_ok=True)
            self.lighthouse.shutdown()
            self.store.close()
            for sock in self.sockets:
                sock.close()

    def _start_local_agent(self) -> subprocess.Popen[bytes] | None:
        agent_dir = self.config.state_dir / "local-agent"
        agent_dir.mkdir(parents=True, exist_ok=True)
        survivor = agent_lock_holder(agent_dir)
        if survivor is not None:
            # A host killed with -9 left its agent running: it reconnects to this host by
            # itself (same node, same slot, its replica still training). Adopt it rather than
            # start a second agent on the same node.
            log.warning("the local agent of the previous run (pid %s) is still running: keeping it", survivor)
            self.adopted_agent = survivor
            return None
        cmd = [
            sys.executable, "-m", "potluck", "join", f"{url_host(self.config.advertise)}:{self.config.port}",
            "--state-dir", str(agent_dir), "--advertise", self.config.advertise,
            "--yes",  # the host's own machine runs the jobs its owner submits
            *self.config.agent_args,
        ]
        env = {**os.environ, "POTLUCK_TOKEN": self.config.token, "POTLUCK_LOG_LEVEL": os.environ.get("POTLUCK_LOG_LEVEL", "INFO")}
        logfile = os.fdopen(os.open(agent_dir / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        log.info("starting the local agent: %s", " ".join(cmd))
        return subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT)

    def _stop_local_agent(self) -> None:
        if self.adopted_agent is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.adopted_agent, signal.SIGINT)  # it leaves the cluster cleanly
            self.adopted_agent = None
        if self.agent is None or self.agent.poll() is not None:
            return
        self.agent.send_signal(signal.SIGINT)  # the agent leaves the cluster cleanly
        try:
            self.agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait()
