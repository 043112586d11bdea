"""Hermetic tests: clean environment, every child process reaped, a timeout per test."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

# `PYTHONPATH=src pytest` from a second worktree: the processes the tests start (hosts, agents
# and the replicas agents start in their run folders) resolve a relative entry against their
# own working directory and would silently import another checkout. Make it absolute.
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p)

_LEAKY_VARS = (
    "POTLUCK_HOST", "POTLUCK_TOKEN", "POTLUCK_LOG_LEVEL", "MASTER_ADDR",
    "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHFT_LIGHTHOUSE",
    "TORCHFT_MANAGER_PORT", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _LEAKY_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("POTLUCK_FAKE_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session", autouse=True)
def reap_children():
    """Kill any process group a test started and forgot (replicas run in their own sessions)."""
    started: list[subprocess.Popen] = []
    original = subprocess.Popen.__init__

    def tracking_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        started.append(self)

    subprocess.Popen.__init__ = tracking_init  # type: ignore[method-assign]
    yield
    subprocess.Popen.__init__ = original  # type: ignore[method-assign]
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()
