"""A whole cluster inside this process: an in-process Lighthouse and one thread per replica.

The fast test tier (torchft's ``manager_integ_test`` habit): the replicas are real
:class:`~potluck.trainer.replica.Replica` loops with real torchft managers and gloo groups
on loopback, but share one process, so a test of equivalence, exactly-once, healing or a
policy runs in seconds. Events stay in memory (:class:`ListSink`); failures are injected by
step (:class:`~potluck.trainer.faults.Faults`). ``LocalCluster`` is the real-process tier.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from potluck.contracts.addressing import http_url
from potluck.contracts.errors import TrainingError
from potluck.contracts.jobspec import JobSpec, ReplicaSpec, TestHooks
from potluck.trainer.faults import Faults, InjectedFailure
from potluck.trainer.ft import lighthouse_port, start_lighthouse
from potluck.trainer.replica import Replica
from potluck.trainer.sinks import ListSink


class ThreadCluster:
    """``with ThreadCluster(job, speeds, run_dir) as c: c.wait()``; then ``c.results``,
    ``c.events(slot)`` and ``c.replicas[slot]`` (the live objects, model included)."""

    def __init__(self, job: JobSpec, speeds: list[float], run_dir: str | Path, *,
                 faults: Faults | None = None, memory_caps: dict[int, int] | None = None,
                 record_indices: bool = False, host: str = "127.0.0.1",
                 late: tuple[int, ...] = ()) -> None:
        """``late``: slots that do not start with the others; ``restart(slot)`` starts one
        (it joins the running job and heals from a peer)."""
        self.job = job
        self.speeds = speeds
        self.run_dir = Path(run_dir)
        self.faults = faults or Faults()
        self.memory_caps = dict(memory_caps or {})
        self.record_indices = record_indices
        self.host = host
        self.late = set(late)
        self.lighthouse: Any = None
        self.replicas: dict[int, Replica] = {}
        self.sinks: dict[int, list[ListSink]] = {}
        self.results: dict[int, dict[str, Any] | BaseException] = {}
        self._threads: dict[int, threading.Thread] = {}

    def spec(self, slot: int, *, barrier: bool = True) -> ReplicaSpec:
        return ReplicaSpec(
            job=self.job, slot=slot, name=f"node{slot}", run_dir=str(self.run_dir),
            lighthouse=http_url(self.host, lighthouse_port(self.lighthouse)),
            advertise_host=self.host, speed=self.speeds[slot], threads=1,
            memory_cap=self.memory_caps.get(slot),
            start_barrier=len(self.speeds) - len(self.late) if barrier else 0,
            hooks=TestHooks(record_indices=self.record_indices),
        )

    def start(self) -> ThreadCluster:
        torch.set_num_threads(1)  # one global pool for every replica thread
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lighthouse = start_lighthouse(self.host, 0)
        # Build every replica first (data, model), then start them together.
        first = [slot for slot in range(len(self.speeds)) if slot not in self.late]
        for slot in first:
            self._build(slot, self.spec(slot))
        for slot in first:
            self._run(slot)
        return self

    def _build(self, slot: int, spec: ReplicaSpec) -> None:
        sink = ListSink()
        self.sinks.setdefault(slot, []).append(sink)
        self.replicas[slot] = Replica(spec, sink, faults=self.faults)

    def _run(self, slot: int) -> None:
        replica = self.replicas[slot]

        def main() -> None:
            try:
                self.results[slot] = replica.run()
            except BaseException as exc:  # the replica died: that is the test's business
                self.results[slot] = exc

        self.results.pop(slot, None)
        thread = threading.Thread(target=main, name=f"replica-{slot}", daemon=True)
        self._threads[slot] = thread
        thread.start()

    def wait_for(self, slot: int, timeout: float = 120.0) -> dict[str, Any] | BaseException:
        """Block until replica ``slot`` ends (finished, or died); returns its result."""
        self._threads[slot].join(timeout)
        if self._threads[slot].is_alive():
            raise TrainingError(f"replica {slot} still running after {timeout:.0f}s")
        return self.results[slot]

    def wait_event(self, slot: int, matches: Callable[[dict[str, Any]], bool],
                   timeout: float = 60.0) -> dict[str, Any]:
        """Block until replica ``slot`` emitted an event for which ``matches`` is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((e for e in self.events(slot) if matches(e)), None)
            if found is not None:
                return found
            time.sleep(0.02)
        raise TrainingError(f"replica {slot} emitted no such event in {timeout:.0f}s")

    def restart(self, slot: int) -> None:
        """A new replica in ``slot`` (no start barrier; a late slot's first start too): it
        heals from a peer."""
        self._build(slot, self.spec(slot, barrier=False))
        self._run(slot)

    def restart_lighthouse(self, down_s: float = 0.5) -> None:
        """Stop the Lighthouse and start a new one on the same port after ``down_s`` (a host
        restart, as the replicas see it: the new one numbers quorums from 1 again)."""
        port = lighthouse_port(self.lighthouse)
        self.lighthouse.shutdown()
        time.sleep(down_s)
        self.lighthouse = start_lighthouse(self.host, port)

    def wait(self, timeout: float = 240.0) -> dict[int, dict[str, Any]]:
        """Wait for every replica; returns their summaries. Raises TrainingError if one
        failed with something other than an injected failure that was restarted."""
        for slot in list(self._threads):
            self.wait_for(slot, timeout)
        failed = {s: r for s, r in self.results.items() if isinstance(r, BaseException)}
        if failed:
            slot, exc = next(iter(failed.items()))
            kind = "injected" if isinstance(exc, InjectedFailure) else "error"
            raise TrainingError(f"replica {slot} ended with an {kind}: {exc}") from exc
        return {s: r for s, r in self.results.items() if not isinstance(r, BaseException)}

    def events(self, slot: int) -> list[dict[str, Any]]:
        """Every event of ``slot`` as dicts, over all its lives (restarts), in order."""
        return [r for sink in self.sinks.get(slot, []) for r in sink.records()]

    def stop(self) -> None:
        for thread in self._threads.values():
            thread.join(30)
        if self.lighthouse is not None:
            self.lighthouse.shutdown()
            self.lighthouse = None

    def __enter__(self) -> ThreadCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
