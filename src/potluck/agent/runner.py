"""Runs one replica process for one job assignment and tails its metrics file.

The replica is ``python -m potluck.trainer.replica SPEC.json`` with the network settings of
this node: ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` / ``TP_SOCKET_IFNAME`` name the
interface of the route to the host, and ``advertise_host`` is this node's address, so every
data-plane connection uses the same path the control plane does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potluck.contracts.jobspec import ReplicaSpec
from potluck.contracts.wire import Assignment, ReplicaReport
from potluck.launcher.process import spawn_replica, write_spec
from potluck.log import get_logger
from potluck.trainer.sinks import JsonlTail

log = get_logger("agent.runner")


@dataclass(kw_only=True)
class NodeSettings:
    """What this node adds to every replica it starts."""

    advertise: str
    """Address peers use to reach this node's replicas."""
    interface: str | None
    """Interface for gloo/NCCL/TensorPipe (None: let them pick)."""
    speed: float = 1.0
    """Emulated speed factor (``--emulate-speed``)."""
    device: str = "cpu"
    """torch device string."""
    threads: int = 0
    """torch intra-op threads per replica (0: the replica decides)."""


def replica_env(settings: NodeSettings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The replica's environment: ``base`` plus the interface pins. Pure."""
    env = dict(os.environ if base is None else base)
    env.pop("POTLUCK_TOKEN", None)  # replicas never talk to the API; keep the secret out
    env.setdefault("RUST_LOG", "warn")  # torchft logs every step at INFO otherwise
    if settings.interface:
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME"):
            env[var] = settings.interface
    return env


def exit_reason(code: int, last_line: str = "") -> str:
    """Why a replica ended, for humans: ``killed by signal 9 (SIGKILL)`` or ``exited with
    code 1: <its last log line>``. Pure."""
    if code < 0:
        try:
            name = f" ({signal.Signals(-code).name})"
        except ValueError:
            name = ""
        return f"killed by signal {-code}{name}"
    return f"exited with code {code}" + (f": {last_line}" if last_line else "")


class ReplicaRunner:
    """One replica process: start, poll, tail its metrics, stop."""

    def __init__(self, assignment: Assignment, settings: NodeSettings, runs_dir: Path, *,
                 code_dir: Path | None = None, resume_from: Path | None = None) -> None:
        """Start the replica. If ``assignment.go`` is False it waits at the start barrier
        (``run_dir/ready``: the replica touches its slot file there and waits for a second
        file, which :meth:`release` creates when the coordinator says go)."""
        self.assignment = assignment
        job_dir = runs_dir / f"job-{assignment.job_id}"
        attempt = 1
        while (job_dir / f"attempt-{attempt}").exists():
            attempt += 1
        self.run_dir = job_dir / f"attempt-{attempt}"
        self.run_dir.mkdir(parents=True)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.spec = ReplicaSpec(
            job=assignment.job,
            slot=assignment.slot,
            name=assignment.name,
            lighthouse=assignment.lighthouse,
            run_dir=str(self.run_dir),
            advertise_host=settings.advertise,
            speed=settings.speed,
            device=settings.device,
            threads=settings.threads,
            start_barrier=0 if assignment.go else 2,
            secret=assignment.secret,
            code_dir=str(code_dir) if code_dir else None,
            resume_from=str(resume_from) if resume_from else None,
            checkpoint_dir=str(self.checkpoint_dir),
            min_step=assignment.min_step,
        )
        self._ready_dir = self.run_dir / "ready"
        self.waiting = not assignment.go
        self.metrics_path = self.run_dir / "replicas" / f"{assignment.name}.jsonl"
        self._tail = JsonlTail([self.metrics_path])
        self._seen_records = False
        self._done = False
        self._last_step: int | None = None
        spec_path = self.run_dir / "spec.json"
        write_spec(spec_path, self.spec.to_json())
        env = replica_env(settings)
        # For `potluck doctor` and humans: which interface this replica was pinned to.
        pins = {k: v for k, v in env.items() if k.endswith("_SOCKET_IFNAME")}
        (self.run_dir / "network.json").write_text(json.dumps(pins) + "\n")
        self.proc = spawn_replica(spec_path, self.run_dir / "replica.log", env=env)
        log.info("job %s: started replica pid %s in %s", assignment.job_id, self.proc.pid, self.run_dir)

    @property
    def job_id(self) -> int:
        return self.assignment.job_id

    @property
    def ready(self) -> bool:
        """The replica reached the start barrier (its manager is up)."""
        return (self._ready_dir / str(self.spec.slot)).exists()

    def release(self) -> None:
        """Let a replica waiting at the start barrier begin training."""
        self._ready_dir.mkdir(parents=True, exist_ok=True)
        (self._ready_dir / "go").touch()
        self.waiting = False

    def read_records(self) -> list[dict[str, Any]]:
        """New complete records from the event file since the last call."""
        records = self._tail.poll()
        for rec in records:
            self._seen_records = True
            if rec.get("type") == "done":
                self._done = True
            if isinstance(rec.get("step"), int):
                self._last_step = rec["step"]
        return records

    def report(self) -> ReplicaReport:
        """The replica's state now (read the records first so ``done`` is not missed)."""
        code = self.proc.poll()
        if code is None:
            return ReplicaReport(
                job_id=self.job_id, state="running" if self._seen_records else "starting",
                step=self._last_step, ready=self.ready,
            )
        if code == 0 and self._done:
            return ReplicaReport(job_id=self.job_id, state="done", step=self._last_step, exit_code=0)
        return ReplicaReport(
            job_id=self.job_id,
            state="failed",
            step=self._last_step,
            exit_code=code,
            message=exit_reason(code, self.last_log_line()),
        )

    def last_log_line(self) -> str:
        try:
            lines = (self.run_dir / "replica.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:500] if lines else ""

    @property
    def finished(self) -> bool:
        return self.proc.poll() is not None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the replica (its whole process group), then kill it if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except (ProcessLookupError, PermissionError):
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
