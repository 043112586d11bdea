"""Start a replica process: the one way every launcher (the agent, LocalCluster) does it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPLICA_MODULE = "potluck.trainer.replica"


def _detach_and_die_with_parent() -> None:
    """In the child before exec: own session (Ctrl-C in the launcher's terminal reaches only
    the launcher, which stops replicas itself), and SIGKILL if the launcher dies, so a crashed
    or killed launcher never leaves an orphan replica training in the group."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def write_spec(path: Path, text: str) -> None:
    """Write a replica spec readable by its owner only: it holds the job's secret."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def spawn_replica(spec_path: Path, log_path: Path, *, env: dict[str, str],
                  prefix: list[str] | None = None) -> subprocess.Popen:
    """``python -m potluck.trainer.replica SPEC`` with stdout and stderr appended to ``log_path``.

    ``prefix`` runs it through a command that execs it (``ip netns exec NS``: the process is
    still the replica, so signals and the parent-death signal reach it)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", REPLICA_MODULE, str(spec_path)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_detach_and_die_with_parent,
        )
