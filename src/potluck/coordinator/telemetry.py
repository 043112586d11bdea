"""What the replicas report: typed events folded into job progress, node speeds and summaries.

Agents post their replicas' events (:mod:`potluck.contracts.events`, validated at the API);
each is stored once (SQLite and ``experiments/job-N/replicas/<node>.jsonl``) and folded into
the job's live :class:`~potluck.contracts.wire.JobProgress` and the node's measured
samples/s. Progress is kept in memory and flushed once a second.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from pydantic import BaseModel

from potluck.contracts import wire as s
from potluck.contracts.events import (
    AllocationEvent,
    DoneEvent,
    ErrorEvent,
    NoticeEvent,
    PlanEvent,
    StepEvent,
    event_json,
)
from potluck.coordinator.store import Store, dumps, loads

LOG_EVERY = 25
"""Committed steps between two progress lines in the job's event log."""

SPS_WINDOW = 15
"""Committed step records whose median is the live samples/s."""


def fold_sync(stats: s.SyncStats, event: StepEvent) -> None:
    """Add one replica's committed step (or diloco phase) to a job's sync figures: running
    means of its wall, compute and sync seconds, its bytes, its replica's samples."""
    wall = event.quorum_s + event.compute_s + event.allreduce_s + event.commit_s
    n = stats.steps

    def mean(old: float | None, new: float) -> float:
        return round(((old or 0.0) * n + new) / (n + 1), 6)

    stats.step_s = mean(stats.step_s, wall)
    stats.compute_s = mean(stats.compute_s, event.compute_s)
    stats.sync_s = mean(stats.sync_s, event.allreduce_s)
    stats.steps = n + 1
    stats.compute_fraction = round(min(1.0, stats.compute_s / stats.step_s), 4) \
        if stats.step_s > 0 else None
    if event.sync_bytes is not None:
        stats.sync_bytes = event.sync_bytes
    stats.samples[event.replica] = stats.samples.get(event.replica, 0) + event.local_batch


class Telemetry:
    def __init__(self, store: Store, experiments: Path) -> None:
        self.store = store
        self.experiments = experiments
        self.measured: dict[int, float] = {}
        """Node id -> smoothed samples/s of its replica's compute."""
        self.progress: dict[int, s.JobProgress] = {
            row["id"]: s.JobProgress(**(loads(row["progress"]) or {}))
            for row in store.jobs_in("queued", "running")
        }
        self.steps_seen = 0
        """Committed step events that reached a job's newest step (a change counter: the
        dashboard streams a fresh snapshot when it moves)."""
        self.first_done_at: dict[int, float] = {}
        """Job id -> when its first replica reported done."""
        self._dirty: set[int] = set()
        self._slot_names: dict[str, str] = {}
        self._restarted_nodes: dict[int, set[int]] = {}
        """Job id -> nodes whose replica went back to an early step in the latest restart."""
        self.slot_seen: dict[int, float] = {}
        """Slot -> when (host clock) a committed step whose quorum held it was last reported,
        by any replica: a node's replica trains even while its own agent is silent."""
        self._node_step: dict[tuple[int, int], int] = {}
        """(job id, node id) -> the node's last committed step."""
        self.node_samples: dict[int, dict[int, int]] = {}
        """Job id -> node id -> samples the node computed in committed steps since this host
        started (memory only: a counter for ``/metrics``)."""
        self._logged_alloc: dict[int, int] = {}
        self._logged_step: dict[int, int] = {}
        self._notices: dict[int, set[str]] = {}
        self._recent_sps: dict[int, deque[float]] = {}
        """Job id -> per-step samples/s of the last committed steps (the live figure is their
        median: one step that ends just after a heal or a quorum change reads 20x too fast)."""

    def run_dir(self, job_id: int) -> Path:
        return self.experiments / f"job-{job_id}"

    def ingest(self, node: Any, job_id: int, events: list[BaseModel]) -> int:
        """Store a batch of one node's events and fold them in; returns how many were stored."""
        progress = self.progress.setdefault(job_id, s.JobProgress())
        rows = []
        done = None
        for event in events:
            line = event_json(event)
            rows.append((str(getattr(event, "type", "unknown")), getattr(event, "step", None), line))
            self._fold(progress, job_id, node["id"], event)
            self._log(job_id, progress, event)
            if isinstance(event, DoneEvent):
                done = line
                self.first_done_at.setdefault(job_id, time.time())
        self._dirty.add(job_id)
        self.store.add_metrics(job_id, node["id"], rows, done)
        path = self.run_dir(job_id) / "replicas" / f"{node['name']}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.writelines(line + "\n" for _, _, line in rows)
        return len(rows)

    def _fold(self, progress: s.JobProgress, job_id: int, node_id: int, event: BaseModel) -> None:
        if isinstance(event, PlanEvent):
            progress.sync = progress.sync or s.SyncStats()
            progress.sync.plan = event.plan
        if isinstance(event, StepEvent) and event.committed:
            progress.sync = progress.sync or s.SyncStats()
            fold_sync(progress.sync, event)
            self._check_restart(progress, job_id, node_id, event)
            samples = self.node_samples.setdefault(job_id, {})
            samples[node_id] = samples.get(node_id, 0) + event.local_batch
            now = time.time()
            for slot in event.allocation or {}:
                self.slot_seen[int(slot)] = now
            if event.step >= progress.step:
                self.steps_seen += 1
                progress.step = event.step
                progress.loss = event.loss if event.loss is not None else progress.loss
                if event.samples_per_s:
                    recent = self._recent_sps.setdefault(job_id, deque(maxlen=SPS_WINDOW))
                    recent.append(event.samples_per_s)
                    progress.samples_per_s = round(median(recent), 3)
                progress.participants = event.participants
            if event.compute_s > 0:
                rate = event.local_batch / event.compute_s
                old = self.measured.get(node_id)
                self.measured[node_id] = rate if old is None else 0.8 * old + 0.2 * rate
        # Allocation events and committed steps both carry the allocation in force.
        alloc = None
        if isinstance(event, AllocationEvent):
            alloc = event.allocation
        elif isinstance(event, StepEvent) and event.committed:
            alloc = event.allocation
        if alloc:
            total = sum(alloc.values()) or 1
            if any(slot not in self._slot_names for slot in alloc):
                self._slot_names = {str(r["slot"]): r["name"] for r in self.store.nodes()}
            progress.shares = {self._slot_names.get(slot, f"slot {slot}"): round(b / total, 4)
                               for slot, b in alloc.items()}

    def training_slots(self, since: float) -> set[int]:
        """Slots in a committed step reported after ``since``."""
        return {slot for slot, t in self.slot_seen.items() if t >= since}

    def _check_restart(self, progress: s.JobProgress, job_id: int, node_id: int, event: StepEvent) -> None:
        """A replica's committed steps only go forward (a rejoining replica heals from a peer
        and jumps ahead). One that goes back started over without a peer to heal from: every
        replica was lost at once. So did one that went on from the checkpoint it loaded (no
        peer to heal from), even when the host never saw a step past the checkpoint. Never
        hide it: count it, log it, reset the progress."""
        last = self._node_step.get((job_id, node_id))
        self._node_step[(job_id, node_id)] = event.step
        if last is None:
            return  # this replica's first step in the job (a fresh or a `--resume` job)
        # resumed_from counts the checkpoint's committed steps: the first step trained after
        # loading it has that index (a replica that healed from a peer instead is further on)
        went_on_from_checkpoint = event.resumed_from is not None and event.step == event.resumed_from
        if event.step >= last and not went_on_from_checkpoint:
            return
        # The other replicas of the same restart go back too: count it once.
        same = self._restarted_nodes.setdefault(job_id, set())
        if same and node_id not in same:
            same.add(node_id)
            return
        same.clear()
        same.add(node_id)
        lost = max(0, progress.step + 1 - event.step)
        progress.restarts += 1
        progress.steps_lost += lost
        source = "the last checkpoint" if event.step > 0 else "scratch: no checkpoint yet"
        self.store.event("job", f"training restarted from step {event.step}: every replica was lost "
                         f"after step {progress.step}; resumed from {source} ({lost} committed "
                         "steps are trained again)", job_id=job_id)
        progress.step = event.step

    def _log(self, job_id: int, progress: s.JobProgress, event: BaseModel) -> None:
        """Job events for `potluck logs`: each allocation decision with its reason (once,
        though every replica reports it), the loss every ``LOG_EVERY`` committed steps, and a
        replica's fatal error with its traceback."""
        if isinstance(event, NoticeEvent):
            seen = self._notices.setdefault(job_id, set())
            if event.message not in seen:
                seen.add(event.message)
                self.store.event("notice", event.message, job_id=job_id)
        elif isinstance(event, ErrorEvent):
            self.store.event("error", f"{event.replica}: {event.message}\n{event.traceback}".rstrip(),
                             job_id=job_id)
        elif isinstance(event, AllocationEvent) and event.step > self._logged_alloc.get(job_id, -1):
            self._logged_alloc[job_id] = event.step
            shares = " / ".join(f"{self._slot_names.get(slot, 'slot ' + slot)} {b}"
                                for slot, b in sorted(event.allocation.items(), key=lambda kv: int(kv[0])))
            self.store.event("allocation", f"step {event.step}: {shares} ({event.reason})", job_id=job_id)
        elif (isinstance(event, StepEvent) and event.committed and event.step == progress.step
              and event.step >= self._logged_step.get(job_id, 0) + LOG_EVERY):
            self._logged_step[job_id] = event.step
            loss = f"loss {progress.loss:.4f}, " if progress.loss is not None else ""
            self.store.event("progress", f"step {event.step}: {loss}{progress.samples_per_s or 0:,.0f} "
                             f"samples/s, {event.participants} participant(s)", job_id=job_id)

    def flush(self) -> None:
        self.store.save_progress({j: dumps(self.progress[j].model_dump())
                                  for j in self._dirty if j in self.progress})
        self._dirty.clear()

    def progress_of(self, job_id: int, row: Any) -> s.JobProgress:
        return self.progress.get(job_id) or s.JobProgress(**(loads(row["progress"]) or {}))

    def forget(self, job_id: int) -> s.JobProgress | None:
        """The job ended: drop its live state, return its last progress."""
        self.first_done_at.pop(job_id, None)
        self._recent_sps.pop(job_id, None)
        self._logged_alloc.pop(job_id, None)
        self._restarted_nodes.pop(job_id, None)
        for key in [k for k in self._node_step if k[0] == job_id]:
            del self._node_step[key]
        self._logged_step.pop(job_id, None)
        self._notices.pop(job_id, None)
        self.node_samples.pop(job_id, None)
        return self.progress.pop(job_id, None)

    def summarize(self, job_id: int, state: str) -> s.JobSummary:
        """Final numbers of a job from its stored events.

        ``compute_fraction`` is the fraction of replica step time spent computing (the rest
        is communication and waiting for slower peers), averaged over committed steps.
        ``sync`` is the job's sync plan (its plan event) and the means of its committed steps
        (:func:`fold_sync`).
        """
        replicas = self.store.replicas(job_id)
        done = [DoneEvent.model_validate_json(r["done"]) for r in replicas if r["done"]]
        committed = [e for e in (StepEvent.model_validate_json(t)
                                 for t in self.store.metric_records(job_id, "step")) if e.committed]
        fractions = [e.compute_s / total for e in committed
                     if e.comm_s is not None and e.wait_s is not None
                     and (total := e.compute_s + e.comm_s + e.wait_s) > 0]

        def mean(values: Sequence[float | None]) -> float | None:
            good = [v for v in values if v is not None]
            return sum(good) / len(good) if good else None

        sps = mean([d.samples_per_s for d in done])
        if sps is None:
            sps = mean([e.samples_per_s for e in committed[-20:]])
        last = max([e.step for e in committed] + [d.final_step for d in done], default=-1)
        plans = [PlanEvent.model_validate_json(t) for t in self.store.metric_records(job_id, "plan")]
        sync = s.SyncStats(plan=plans[-1].plan) if plans else None
        for e in committed:
            sync = sync or s.SyncStats()
            fold_sync(sync, e)
        return s.JobSummary(
            job_id=job_id,
            state=state,  # type: ignore[arg-type]
            nodes=sorted({r["node"] for r in replicas}),
            steps=last + 1,
            samples_per_s=sps,
            compute_fraction=mean(fractions),
            final_loss=mean([d.final_loss for d in done]),
            test_accuracy=mean([d.test_accuracy for d in done]),
            run_dir=str(self.run_dir(job_id)),
            restarts=progress.restarts if (progress := self.progress.get(job_id)) else 0,
            steps_lost=progress.steps_lost if progress else 0,
            sync=sync,
        )

    def write_summary(self, summary: s.JobSummary) -> None:
        run_dir = self.run_dir(summary.job_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps(summary.model_dump(), indent=2) + "\n")
