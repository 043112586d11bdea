"""A Lighthouse and N replica processes on one machine: the demo's, the benchmarks' and the
tests' cluster.

Replicas are real separate processes (``python -m potluck.trainer.replica``) talking gloo
and torchft over loopback; this class only starts, kills, restarts and reaps them.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from potluck.contracts.addressing import http_url
from potluck.contracts.errors import TrainingError
from potluck.contracts.jobspec import JobSpec, ReplicaSpec, TestHooks
from potluck.launcher.process import spawn_replica, write_spec
from potluck.trainer.ft import lighthouse_port, start_lighthouse
from potluck.trainer.grpc_guard import GuardedLighthouse, loopback_for
from potluck.trainer.sinks import read_jsonl
from potluck.trainer.trust import new_job_secret


class LocalCluster:
    """Start with ``with LocalCluster(job, speeds, run_dir) as cluster: cluster.wait()``."""

    def __init__(self, job: JobSpec, speeds: list[float], run_dir: str | Path, *,
                 host: str = "127.0.0.1", record_indices: bool = False,
                 fail_at: dict[int, int] | None = None, save_model: str | None = None,
                 memory_caps: dict[int, int] | None = None,
                 speed_changes: dict[int, list[list[float]]] | None = None,
                 late: tuple[int, ...] = ()) -> None:
        """``late``: slots that do not start with the others; ``restart(slot)`` starts one
        (it joins the running job and heals from a peer)."""
        self.job = job
        self.speeds = speeds
        self.run_dir = Path(run_dir)
        self.host = host
        self.record_indices = record_indices
        self.fail_at = dict(fail_at or {})
        self.save_model = save_model
        self.memory_caps = dict(memory_caps or {})
        self.speed_changes = dict(speed_changes or {})
        self.late = set(late)
        self.procs: dict[int, subprocess.Popen] = {}
        self.lighthouse: Any = None
        self.secret = new_job_secret()

    def name(self, slot: int) -> str:
        return f"node{slot}"

    def spec(self, slot: int, *, fail: bool = True) -> ReplicaSpec:
        return ReplicaSpec(
            job=self.job, slot=slot, name=self.name(slot), lighthouse=self.lighthouse_addr,
            run_dir=str(self.run_dir), advertise_host=self.advertise(slot), speed=self.speeds[slot],
            save_model=self.save_model if slot == 0 else None,
            memory_cap=self.memory_caps.get(slot),
            start_barrier=len(self.speeds) - len(self.late), secret=self.secret,
            hooks=TestHooks(record_indices=self.record_indices,
                            fail_at_step=self.fail_at.get(slot) if fail else None,
                            speed_changes=[(int(a), float(b)) for a, b in self.speed_changes.get(slot, [])]),
        )

    def advertise(self, slot: int) -> str:
        """The address replica ``slot`` listens on and advertises."""
        del slot
        return self.host

    def prefix(self, slot: int) -> list[str]:
        """The command replica ``slot`` is started through (none: directly)."""
        del slot
        return []

    def _start_lighthouse(self) -> Any:
        """The real Lighthouse on loopback; replicas reach it through the gRPC-only guard.
        Returns an object with ``address()`` and ``shutdown()``."""
        return GuardedLighthouse(start_lighthouse(loopback_for(self.host), 0), listen=(self.host, 0))

    @property
    def lighthouse_addr(self) -> str:
        assert self.lighthouse is not None, "start() first"
        return http_url(self.host, lighthouse_port(self.lighthouse))

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "specs").mkdir(exist_ok=True)
        (self.run_dir / "replicas").mkdir(exist_ok=True)
        self.lighthouse = self._start_lighthouse()
        for slot in range(len(self.speeds)):
            if slot not in self.late:
                self._spawn(self.spec(slot))

    def _spawn(self, spec: ReplicaSpec) -> None:
        path = self.run_dir / "specs" / f"{spec.name}.json"
        write_spec(path, spec.to_json())
        self.procs[spec.slot] = spawn_replica(
            path, self.run_dir / "replicas" / f"{spec.name}.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, prefix=self.prefix(spec.slot),
        )

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        proc.kill()
        proc.wait()

    def restart(self, slot: int) -> None:
        """Start ``slot`` again (without its failure injection), or a late slot for the first
        time; it heals from a peer."""
        spec = self.spec(slot, fail=False).model_copy(update={"start_barrier": 0})
        self._spawn(spec)

    def records(self, slot: int) -> list[dict]:
        return read_jsonl(self.run_dir / "replicas" / f"{self.name(slot)}.jsonl")

    def wait(self, timeout: float = 300.0) -> dict[int, int]:
        """Wait for every process to end; return exit codes. Raises TrainingError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = {s: p.poll() for s, p in self.procs.items()}
            if all(c is not None for c in codes.values()):
                return {s: int(c) for s, c in codes.items() if c is not None}
            time.sleep(0.1)
        raise TrainingError(f"replicas still running after {timeout:.0f}s; see {self.run_dir}/replicas/*.log")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.lighthouse is not None:
            self.lighthouse.shutdown()
            self.lighthouse = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
