"""Fixtures for cluster tests: real ``potluck host`` / ``potluck join`` processes on loopback.

Every process gets its own state dir under ``tmp_path``; ports are chosen by the OS (port 0)
and read back from ``host.json``; waiting is polling with a deadline, never a fixed sleep.
Processes are stopped (SIGTERM, then SIGKILL) at teardown, and their logs are printed when a
test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import BRISK, wait_until  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("POTLUCK_", "GLOO_", "NCCL_", "TP_SOCKET", "TORCHFT_")):
            monkeypatch.delenv(name, raising=False)


def _plain(model: Any) -> Any:
    """A message as the CLI's ``--json`` prints it (JSON types only)."""
    return json.loads(json.dumps(model.model_dump(), default=str))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Cluster:
    """Starts hosts and agents as separate processes, like a user would."""

    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    host_dir: Path | None = None
    prefix: list[str] = field(default_factory=list)
    """Command prefix (``ip netns exec NS``) for processes started in a namespace."""

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POTLUCK_")}
        env.update(XDG_DATA_HOME=str(self.tmp / "xdg"), POTLUCK_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
                   COLUMNS="250")
        env.update(extra)
        return env

    def spawn(self, name: str, args: list[str], prefix: list[str] | None = None, **env: str) -> Proc:
        log = self.tmp / f"{name}.log"
        cmd = [*(self.prefix if prefix is None else prefix), sys.executable, "-m", "potluck", *args]
        with log.open("ab") as fh:
            popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env(**env))
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 60, prefix: list[str] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a potluck command to completion (stdout and stderr captured as text)."""
        cmd = [*(self.prefix if prefix is None else prefix), sys.executable, "-m", "potluck", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env(**env))

    def start_host(self, advertise: str = "127.0.0.2", *extra: str, name: str = "host", local_agent: bool = False,
                   state_dir: Path | None = None, prefix: list[str] | None = None,
                   timeouts: dict[str, float] | None = None) -> dict[str, Any]:
        """Start ``potluck host`` and wait for its ``host.json``; returns it plus the token.
        ``timeouts`` shortens the host's waits (``POTLUCK_HOST_TIMEOUTS``, coordinator/config.py)
        for a test that would otherwise sit one out; by default heartbeats and housekeeping
        are brisker (``BRISK``), every other wait is the product's."""
        self.host_dir = state_dir or self.tmp / "host-state"
        (self.host_dir / "host.json").unlink(missing_ok=True)
        args = ["host", "--state-dir", str(self.host_dir), *(["--advertise", advertise] if advertise else [])]
        if "--port" not in extra:
            args += ["--port", "0"]
        if "--lighthouse-port" not in extra:
            args += ["--lighthouse-port", "0"]
        if not local_agent:
            args.append("--no-local-agent")
        waits = BRISK if timeouts is None else timeouts
        env = {"POTLUCK_HOST_TIMEOUTS": ",".join(f"{k}={v}" for k, v in waits.items())}
        proc = self.spawn(name, [*args, *extra], prefix=prefix, **env)
        path = self.host_dir / "host.json"

        def ready() -> dict[str, Any] | None:
            if not proc.alive():
                raise AssertionError(f"host exited with {proc.popen.returncode}:\n{proc.tail()}")
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return None

        info = wait_until(ready, 60, "the host to start")
        info["token"] = (self.host_dir / "token").read_text().strip()
        info["proc"] = proc
        return info

    def start_agent(self, host: dict[str, Any], name: str, address: str | None, speed: float = 1.0,
                    *extra: str, prefix: list[str] | None = None, target: str | None = None) -> Proc:
        args = ["join", "--yes", target or host["url"].removeprefix("http://"), "--name", name,
                "--state-dir", str(self.tmp / f"agent-{name}"), "--emulate-speed", str(speed), *extra]
        if address:
            args += ["--advertise", address]
        return self.spawn(f"agent-{name}", args, prefix=prefix, POTLUCK_TOKEN=host["token"])

    def cli(self, *args: str, timeout: float = 60, prefix: list[str] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        """A reporting command against the host in ``host_dir``."""
        assert self.host_dir is not None
        return self.run(*args, "--state-dir", str(self.host_dir), timeout=timeout, prefix=prefix, **env)

    def json(self, *args: str, prefix: list[str] | None = None) -> Any:
        out = self.cli(*args, "--json", prefix=prefix)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def nodes(self, prefix: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """The host's nodes (``status --json`` less the doctor's links)."""
        if self.prefix or prefix:  # only a process in the namespace reaches the host
            return {n["name"]: n for n in self.json("status", prefix=prefix)}
        return {n.name: _plain(n) for n in self.api().nodes()}

    def jobs(self) -> list[dict[str, Any]]:
        """The host's jobs, as ``potluck jobs --json`` prints them."""
        if self.prefix:
            return self.json("jobs")
        return [_plain(j) for j in self.api().jobs()]

    def api(self) -> Any:
        """A client of the host in ``host_dir`` (the project's HTTP client, real requests).
        Waiting loops poll through it: a CLI process per poll would keep a core busy."""
        from potluck.contracts.client import CoordinatorClient

        assert self.host_dir is not None
        url = json.loads((self.host_dir / "host.json").read_text())["url"]
        return CoordinatorClient(url, (self.host_dir / "token").read_text().strip())

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if proc.alive():
            proc.popen.send_signal(sig)
        try:
            return proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            return proc.popen.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.tail()}" for p in self.procs)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(c.logs())


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
