"""One replica process: ``python -m potluck.trainer.replica SPEC.json``.

Per step: torchft quorum (synchronous; a recovering replica heals here) -> the balancer's
allocation for the quorum's members -> this replica's share of the global batch -> the
recipe's weighted gradients (+ emulated-speed padding) -> the sync strategy (combine, vote,
update) -> balancer update and events only if the step committed. A failed step is
discarded and redone with the same samples.

The loop wires three plug points and knows none of their implementations: the
:class:`~potluck.recipes.Recipe` (what to train), the
:class:`~potluck.trainer.sync.SyncStrategy` (how replicas combine their work) and the
:class:`~potluck.trainer.sinks.EventSink` (where events go).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from potluck.balancer import Balancer, Decision, Speed
from potluck.contracts.errors import FATAL_EXIT_CODE, NoPeerError, PotluckError
from potluck.contracts.events import (
    AlertEvent,
    AllocationEvent,
    DoneEvent,
    ErrorEvent,
    MembershipEvent,
    NoticeEvent,
    StepEvent,
    finite,
)
from potluck.contracts.jobspec import ReplicaSpec
from potluck.log import IdentityAdapter, get_logger, setup_logging
from potluck.trainer.checkpointing import Checkpointer
from potluck.trainer.core import (
    LocalLoss,
    build_training,
    data_fingerprint,
    gradient_step,
    local_gradients,
    params_digest,
    scale_gradients,
)
from potluck.trainer.emulation import Emulator, calibrate
from potluck.trainer.faults import Faults
from potluck.trainer.ft import make_manager, quorum_id, start_quorum
from potluck.trainer.loader import Prefetcher
from potluck.trainer.plan import MAX_PHASE_S
from potluck.trainer.planning import Planning
from potluck.trainer.sampler import step_indices
from potluck.trainer.sinks import EventSink, JsonlSink
from potluck.trainer.sync import AUTO, LocalWork, SyncResult, make_sync

ALONE_WAIT_S = 60.0
"""How long a replica behind the job's step waits for a peer to heal from (see min_step)."""


class Replica(Planning):
    """One replica group's training loop. ``run()`` trains to the end and returns the summary."""

    def __init__(self, spec: ReplicaSpec, sink: EventSink | None = None, *,
                 faults: Faults | None = None) -> None:
        """``sink`` receives every event (default: the run folder's files); ``faults``
        injects failures by step (tests)."""
        self.spec = spec
        self.faults = faults
        job = spec.job
        emulating = spec.speed != 1.0 or job.emulation.sample_s > 0 or bool(spec.hooks.speed_changes)
        threads = spec.threads or (1 if emulating else 0)
        if threads:
            torch.set_num_threads(threads)
        self.tr = build_training(job, spec.device, replica=spec.name, slot=spec.slot,
                                 code_root=spec.code_dir)
        b = job.balancer
        self.balancer = Balancer(
            policy=b.policy, global_batch=job.global_batch, rebalance_interval=b.rebalance_interval,
            deadband=b.deadband, profiles={int(k): Speed(*v) for k, v in b.profiles.items()},
        )
        sample_s, overhead_s = job.emulation.sample_s, job.emulation.overhead_s
        if spec.speed != 1.0 and sample_s == 0:
            sample_s, overhead_s = calibrate(gradient_step(self.tr),
                                             min(job.global_batch, 256, self.tr.train_size))
        self.emulator = Emulator(spec.speed, sample_s, overhead_s)
        self.sink: EventSink = sink or JsonlSink(spec.run_dir, spec.name, spec.slot)
        self.loader = Prefetcher(self.tr.batch)
        self.checkpointer = None if spec.checkpoint_dir is None else Checkpointer(
            spec.checkpoint_dir, job.checkpoint, self.sink.emit, self._ident)
        self.step = 0
        self.members: list[int] = []
        self.log = IdentityAdapter(get_logger("replica"),
                                   lambda: f"{spec.name}/replica {spec.slot} step {self.step}")
        self.profile = self._own_profile()
        self.sync: Any = None
        self.manager: Any = None
        self._alerts: set[str] = set()
        self._identity: tuple[str, str] | None = None
        self._data_s = 0.0
        self._missed = False  # the others formed a quorum without this replica since its last group
        self._alone_since: float | None = None
        self.resumed_from: int | None = None
        self.timeouts: tuple[float, float] | None = None
        """``(collective_s, quorum_s)`` derived from the sync plan (None: the job's)."""
        self.planned: dict[str, Any] | None = None
        """`auto`: the plan in force, ``{"members", "mode", "wire", "phase_s"}`` (None: none
        yet). Part of the recovery state, so a newcomer holds the same plan as its peers."""

    def _own_profile(self) -> tuple[float, float]:
        """``(overhead_s, sample_s)`` to share with peers; (0, 0) when nobody needs it.

        Given by the launcher (spec or job profiles) or, for the proportional and hybrid
        policies, measured here with the profiler on this replica's (emulated) device.
        """
        spec, job = self.spec, self.spec.job
        if spec.profile_sample_s:
            return (spec.profile_overhead_s or 0.0, spec.profile_sample_s)
        if str(spec.slot) in job.balancer.profiles:
            a, c = job.balancer.profiles[str(spec.slot)]
            return (a, c)
        if job.balancer.policy not in ("proportional", "hybrid"):
            return (0.0, 0.0)
        if job.code.file is not None:  # a job file: time its own forward+backward
            sample_s, overhead_s = calibrate(gradient_step(self.tr),
                                             min(job.global_batch, 64, self.tr.train_size))
            if self.emulator.active:
                return (self.emulator.overhead_s / spec.speed, self.emulator.sample_s / spec.speed)
            return (overhead_s, sample_s)
        from potluck.profiler import profile_device

        per_node = max(2, job.global_batch // 8)
        prof = profile_device(model=job.model.name, dataset=job.data.name, device=spec.device,
                              batch_sizes=[max(1, per_node // 4), per_node], repeats=3, job=job,
                              emulator=self.emulator if self.emulator.active else None)
        self.log.info("profiled this device: %.3f ms + %.4f ms/sample",
                      prof.overhead_s * 1e3, prof.sample_s * 1e3)
        return (prof.overhead_s, prof.sample_s)

    # torchft recovery: what a healthy peer sends a recovering one
    def state_dict(self) -> dict[str, Any]:
        state = self._full_state()
        if self.sync is not None and self.sync.local_phase:
            # A local-update job (diloco) shares the weights and the outer optimizer; each
            # replica's inner optimizer is its own, so a newcomer starts a fresh one: the
            # transfer is 2 copies of the weights instead of 4 with AdamW inside (3 with SGD).
            state.pop("optim")
        return state

    def _full_state(self) -> dict[str, Any]:
        """Everything, inner optimizer included (checkpoints hold this plus torchft's counters)."""
        return {
            **self.tr.state_dict(),
            "balancer": self.balancer.state_dict(),
            "sync": self.sync.state_dict() if self.sync is not None else {},
            # a replica healing later (or resuming) waits as long as the plan's members do
            "timeouts": list(self.timeouts) if self.timeouts else None,
            # `auto`'s plan: a newcomer syncs as its peers do and sees the same member change
            "plan": {**self.planned, "members": list(self.planned["members"])} if self.planned else None,
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "a peer") -> None:
        self.tr.load_state_dict(state)
        self.balancer.load_state_dict(state["balancer"])
        if state.get("plan") and self.spec.job.sync.strategy == AUTO and self.manager is not None:
            self._install(state["plan"])  # before the strategy's own state: it may be new
        if self.sync is not None:
            self.sync.load_state_dict(state.get("sync", {}))
        if state.get("timeouts") and self.manager is not None:
            collective_s, quorum_s = (float(x) for x in state["timeouts"])
            self._set_timeouts(collective_s, quorum_s)
        self.log.info("recovered state from %s", source)

    def _resume(self, manager: Any) -> None:
        """Start from the checkpoint in ``spec.resume_from`` instead of step 0."""
        from potluck.trainer.state import read_state

        state, step = read_state(Path(self.spec.resume_from or "").read_bytes())
        self.load_state_dict(state, source=f"the checkpoint after step {step}")
        manager.load_state_dict({"step": step,
                                 "batches_committed": int(state.get("batches_committed", 0))})
        self.resumed_from = step

    def _checkpoint_state(self, manager: Any) -> dict[str, Any]:
        return {**self._full_state(), "batches_committed": manager.batches_committed()}

    def _wait_start_barrier(self) -> None:
        if self.spec.start_barrier <= 1:
            return
        ready = Path(self.spec.run_dir) / "ready"
        ready.mkdir(parents=True, exist_ok=True)
        (ready / str(self.spec.slot)).touch()
        deadline = time.monotonic() + 120
        while len(list(ready.iterdir())) < self.spec.start_barrier and time.monotonic() < deadline:
            time.sleep(0.05)

    def _ident(self) -> dict[str, Any]:
        return {"t": round(time.time(), 4), "replica": self.spec.name, "slot": self.spec.slot,
                "step": self.step}

    def run(self) -> dict[str, Any]:
        spec, tr = self.spec, self.tr
        manager, pg, _store = make_manager(
            name=spec.name, slot=spec.slot, lighthouse=spec.lighthouse,
            advertise_host=spec.advertise_host, timeout_s=spec.job.fault.step_timeout_s,
            load_state_dict=self.load_state_dict, state_dict=self.state_dict,
            group_rank=spec.group_rank, group_world_size=spec.group_world_size,
            secret=spec.secret, on_alert=self._alert,
        )
        self.pg, self.manager = pg, manager
        self.sync = make_sync(spec.job, tr.model, tr.optimizer, manager, spec.device, tr.update)
        if spec.resume_from:
            self._resume(manager)
        # Before the first step every member compares what it built (see check_identity).
        self._identity = (params_digest(tr.model), data_fingerprint(tr)) \
            if manager.current_step() == 0 else None
        self.sync.pg = pg
        self._notices()
        self._wait_start_barrier()
        self.committed = self.discarded = 0
        self.started: float | None = None
        self.last_loss: float | None = None
        try:
            joined = None
            if not self.sync.local_phase:
                joined = self._run_steps(manager, pg)
            if self.sync.local_phase:  # chosen by the job, or by `auto` (never back to steps)
                self._run_phases(manager, pg, joined)
        except BaseException:
            # Dying mid-step: drop out of the group now so peers fail fast, not at a timeout.
            pg.abort(errored=False)
            raise
        finally:
            manager.shutdown(wait=False)
            self.loader.close()
        ended = time.time()
        if self.checkpointer is not None and self.members and spec.slot == min(self.members):
            # the final state: `potluck train --resume` continues from it, `pull` fetches it
            # (the model first: the final checkpoint's event tells the agent both are there)
            done = manager.current_step()
            self.checkpointer.save_model(tr.model.state_dict(), step=str(done))
            self.checkpointer.save(done, self._checkpoint_state(manager), final=True)
        return self._finish(self.committed, self.discarded, self.started or ended, ended,
                            self.last_loss)

    def _run_steps(self, manager: Any, pg: Any) -> float | None:
        """One torchft step per global batch, until the job's steps are committed, or until
        `auto` puts a local-phase plan in force. Returns the seconds of a quorum already
        held whose phase sync is still to run (this replica healed into a local-phase plan
        there), else None."""
        tr = self.tr
        while manager.current_step() < tr.total_steps:
            quorum_s = self._quorum(manager)
            if self.sync.local_phase:  # healed with the plan of an `auto` job in phases
                return quorum_s
            self.step = manager.current_step()
            if self.step >= tr.total_steps:
                break
            members = sorted(pg.members) or [self.spec.slot]
            if self._behind_alone(members):
                continue
            self.started = self.started or time.time()
            self._membership(members)
            if self.step == 0 and self.spec.job.sync.strategy == AUTO and len(members) == 1:
                self.log.info("auto: one replica, nothing to sync yet: allreduce")
            trial = self._choose_plan(manager, members) if self._plan_due(members) else None
            if trial is not None and self.sync.local_phase:
                # into local phases: the probe's step commits without an update, phases follow
                if manager.should_commit():
                    self.committed += 1
                    self._plan_kept(trial)
                    return None
                self._plan_dropped(trial)
                self.discarded += 1
                self.log.warning("step %d discarded (%s)", self.step, manager.errored())
                continue
            self._decided(self.balancer.allocation_for(members, self.step), members)
            work = self._compute()
            if self.step == 0 and self.spec.job.sync.strategy != AUTO and len(members) > 1:
                self._plan_fixed(manager, members, work.compute_s)
            self._synced(manager, work, members, quorum_s, trial, "step")
        return None

    def _run_phases(self, manager: Any, pg: Any, joined: float | None = None) -> None:
        """One torchft step per inner phase (diloco), until ``steps x global_batch`` samples
        are committed. ``joined``: the seconds of the quorum this replica healed in from the
        step loop (it trained nothing in that phase: its first sync contributes nothing)."""
        job = self.spec.job
        budget = self.tr.total_steps * job.global_batch
        idle = False  # behind and alone: ask for quorums, train no phase, until a peer comes
        while self.sync.samples_done < budget:
            if idle or joined is not None:  # nothing trained for this sync
                work = LocalWork(slot=self.spec.slot, samples=0, compute_s=0.0, loss_sum=0.0)
            else:
                first = manager.current_step() == 0
                work = self.sync.phase(self._inner, self.spec.slot, self._identity if first else None)
            if joined is None:
                quorum_s = self._quorum(manager)  # after the phase: whoever died meanwhile is not in it
            else:
                quorum_s, joined = joined, None
            self.step = manager.current_step()
            members = sorted(pg.members) or [self.spec.slot]
            idle = self._behind_alone(members)
            if idle:
                self.sync.healed()  # its phase is stale: it contributes nothing when a peer comes
                continue
            self.started = self.started or time.time()
            self._membership(members)
            if self.step == 0 and self.spec.job.sync.strategy != AUTO and len(members) > 1:
                self._plan_fixed(manager, members, work.compute_s)
            trial = self._choose_plan(manager, members) if self._plan_due(members) else None
            self._synced(manager, work, members, quorum_s, trial, "phase")

    def _synced(self, manager: Any, work: LocalWork, members: list[int], quorum_s: float,
                trial: Any, unit: str) -> None:
        """Sync this step's or phase's ``work`` and account for it: the plan on trial kept or
        undone, the counters, the step event, a checkpoint when one is due."""
        result = self.sync.sync(work, members)
        if trial is not None:
            (self._plan_kept if result.committed else self._plan_dropped)(trial)
        if result.committed:
            self.committed += 1
            self.last_loss = result.loss
        self._stepped(work, result, members, quorum_s)
        if result.committed:
            self._maybe_checkpoint(manager, members)
        else:
            self.discarded += 1
            self.log.warning("%s %d discarded (%s)", unit, self.step, result.error)

    def _quorum(self, manager: Any) -> float:
        """Ask for the next quorum and return its seconds. The first request of a replica
        that joins a running job (no start barrier: a restart, a late node) is kept fresh
        from the start (:func:`~potluck.trainer.ft.start_quorum`); at the job's start, a
        heartbeating process that never asks (a stranger, one stuck) must not hold the first
        quorum beyond the join timeout. A quorum id that jumped means the others formed a
        quorum without this replica."""
        before = quorum_id(manager)
        t0 = time.perf_counter()
        newcomer = before < 0 and self.spec.start_barrier == 0  # no quorum in this process yet
        start_quorum(manager, newcomer=newcomer,
                     patience_s=self._phase_bound() if newcomer else 0.0)
        after = quorum_id(manager)
        if before >= 0 and after > before + 1:
            self._missed = True
        return time.perf_counter() - t0

    def _phase_bound(self) -> float:
        """How long the others may compute before they next ask for a quorum: a newcomer to a
        job in local phases waits for their phase to end (`auto` may be in phases too)."""
        sync = self.spec.job.sync
        return sync.phase_s if sync.strategy == "diloco" else MAX_PHASE_S if sync.strategy == AUTO else 0.0

    def _behind_alone(self, members: list[int]) -> bool:
        """True (after a short pause) while this replica is alone and behind the job: the job
        is further on than its step (``min_step``), or the others went on without it (it
        missed a quorum). It waits for a peer to heal from rather than train the job again
        alone, which would end with different weights (the others may be finishing); after
        :data:`ALONE_WAIT_S` it gives up with NoPeerError."""
        if len(members) > 1:
            self._missed = False
        behind = self.step < self.spec.min_step or self._missed
        if members != [self.spec.slot] or not behind:
            self._alone_since = None
            return False
        self._alone_since = self._alone_since or time.monotonic()
        if time.monotonic() - self._alone_since > ALONE_WAIT_S:
            where = (f"the job reached step {self.spec.min_step} but this replica is at step "
                     f"{self.step}" if self.step < self.spec.min_step else
                     f"the others went on without this replica after step {self.step}")
            raise NoPeerError(f"no peer to heal from: {where}, and it was alone for "
                              f"{ALONE_WAIT_S:.0f} s (the others finished or are gone)")
        time.sleep(0.5)
        return True

    def _inner(self, k: int) -> tuple[int, float, float]:
        """The k-th inner step of this phase: gradients of a batch of this replica's own
        samples (seeded by job, phase, slot and k) in ``.grad``."""
        job, tr = self.spec.job, self.tr
        if self.faults is not None:
            self.faults.check(self.spec.slot, self.step)
        size = job.sync.inner_batch or max(1, job.global_batch // max(1, len(self.members)))
        size = min(size, tr.train_size)
        rng = np.random.default_rng([job.seed, self.step, self.spec.slot, k])
        idx = rng.integers(0, tr.train_size, size)
        tr.optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        done = local_gradients(tr, tr.batch(idx), size, self.spec.memory_cap, total=size)
        if done.tokens:
            scale_gradients(tr.model, 1.0 / max(done.count, 1.0))
        self.emulator.pad(size, t0)
        return size, done.loss_sum, done.count

    def _maybe_checkpoint(self, manager: Any, members: list[int]) -> None:
        """The lowest member writes a checkpoint when one is due (in the background)."""
        ck = self.checkpointer
        done = manager.current_step()
        if ck is None or self.spec.slot != min(members) or done >= self.tr.total_steps \
                or not ck.due(done):
            return
        ck.save(done, self._checkpoint_state(manager))

    def _compute(self) -> LocalWork:
        """This replica's share of the step: weighted gradients into ``.grad``, padded to the
        emulated speed. Test hooks (failure injection, speed changes) act here."""
        spec, job, tr = self.spec, self.spec.job, self.tr
        hooks = spec.hooks
        if hooks.fail_at_step is not None and self.step >= hooks.fail_at_step:
            self.log.warning("failure injection: exiting at step %d", self.step)
            os._exit(17)
        if self.faults is not None:
            self.faults.check(spec.slot, self.step)
        for at_step, new_speed in hooks.speed_changes:
            if self.step >= at_step:
                self.emulator.speed = new_speed
        share = self.balancer.allocation.get(spec.slot, 0)
        allocation = dict(self.balancer.allocation)
        key = tuple(sorted(allocation.items()))
        self._indices = step_indices(step=self.step, seed=job.seed, train_size=tr.train_size,
                                     global_batch=job.global_batch, allocation=allocation,
                                     slot=spec.slot)
        batch = self.loader.get((self.step, key), self._indices) if share else None
        if share and self.step + 1 < tr.total_steps:  # the next step's share, while this computes
            self.loader.schedule((self.step + 1, key), step_indices(
                step=self.step + 1, seed=job.seed, train_size=tr.train_size,
                global_batch=job.global_batch, allocation=allocation, slot=spec.slot))
        tr.optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        done = local_gradients(tr, batch, share, spec.memory_cap) if share \
            else LocalLoss(0.0, 0.0, False)
        self.emulator.pad(share, t0)
        self._data_s = self.loader.wait_s if share else 0.0
        return LocalWork(slot=spec.slot, samples=share, compute_s=time.perf_counter() - t0,
                         loss_sum=done.loss_sum, profile=self.profile, loss_count=done.count,
                         tokens=done.tokens,
                         identity=self._identity if self.step == 0 else None)

    def _stepped(self, work: LocalWork, result: SyncResult, members: list[int],
                 quorum_s: float) -> None:
        event = StepEvent(
            **self._ident(), committed=result.committed, participants=len(members),
            local_batch=work.samples, compute_s=round(work.compute_s, 6),
            quorum_s=round(quorum_s, 6), allreduce_s=round(result.sync_s, 6),
            commit_s=round(result.commit_s, 6), data_s=round(self._data_s, 6),
            sync_bytes=result.sync_bytes or None,
            indices=self._indices.tolist() if self.spec.hooks.record_indices else None,
        )
        if result.committed:
            measured = {s: (p.samples, p.compute_s) for s, p in result.peers.items()}
            slowest = max((t for _, t in measured.values()), default=work.compute_s)
            wait_s = max(0.0, slowest - work.compute_s)
            wall = quorum_s + work.compute_s + result.sync_s + result.commit_s
            event.wait_s = round(wait_s, 6)
            event.comm_s = round(max(0.0, result.sync_s - wait_s), 6)
            event.loss = finite(round(result.loss, 6)) if result.loss is not None else None
            event.allocation = {str(k): v for k, v in self.balancer.allocation.items()}
            event.samples_per_s = round(self.spec.job.global_batch / max(wall, 1e-9), 3)
            event.compute_fraction = round(min(1.0, work.compute_s / wall), 4) if wall > 0 else None
            event.resumed_from, self.resumed_from = self.resumed_from, None
            if self.sync.local_phase:  # no allocation: each replica's samples in this phase
                event.allocation = {str(s): p.samples for s, p in result.peers.items()}
                event.samples_per_s = round(sum(p.samples for p in result.peers.values())
                                            / max(wall, 1e-9), 3)
                self.sink.emit(event)
                return
            profiles = {s: Speed(*p.profile) for s, p in result.peers.items() if p.profile[1] > 0}
            change = self.balancer.observe(self.step, measured, profiles)
            self.sink.emit(event)
            self._decided(change, members)
        else:
            self.sink.emit(event)

    def _notices(self) -> None:
        """Tell the user what makes this job inexact (it still trains)."""
        norms = sorted({type(m).__name__ for m in self.tr.model.modules()
                        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)})
        if norms:
            message = (f"the model has {', '.join(norms)} layers: their batch statistics come "
                       "from each machine's share, so training is not exactly what one machine "
                       "computes (use GroupNorm or LayerNorm for that)")
            self.log.warning("%s", message)
            self.sink.emit(NoticeEvent(**self._ident(), message=message))

    def _alert(self, message: str) -> None:
        """A refused stranger (called from torchft's quorum or the checkpoint server thread);
        each distinct message is reported once."""
        if message in self._alerts:
            return
        self._alerts.add(message)
        self.log.warning("alert: %s", message)
        try:
            self.sink.emit(AlertEvent(**self._ident(), message=message[:1000]))
        except (ValueError, OSError):  # the sink is closed: training already ended
            pass

    def _membership(self, members: list[int]) -> None:
        if members != self.members:
            joined = sorted(set(members) - set(self.members))
            left = sorted(set(self.members) - set(members))
            self.members = members
            self.sink.emit(MembershipEvent(**self._ident(), members=members, joined=joined, left=left))

    def _decided(self, decision: Decision | None, members: list[int]) -> None:
        if decision is None:
            return
        self.log.info("allocation %s (%s)", decision.allocation, decision.reason)
        self.sink.emit(AllocationEvent(
            **{**self._ident(), "step": decision.step},
            allocation={str(k): v for k, v in decision.allocation.items()},
            reason=decision.reason, predicted_step_s=decision.predicted_step_s, members=members,
        ))

    def _finish(self, committed: int, discarded: int, started: float, ended: float,
                last_loss: float | None) -> dict[str, Any]:
        spec, tr = self.spec, self.tr
        scores = tr.recipe.evaluate(tr.model.cpu(), tr.data, tr.ctx)
        done = DoneEvent(
            **self._ident(), speed=spec.speed, final_step=self.step,
            committed_steps_here=committed, discarded_steps=discarded,
            final_loss=finite(last_loss) if last_loss is not None else None,
            test_loss=finite(scores["test_loss"]) if "test_loss" in scores else None,
            test_accuracy=scores.get("test_accuracy"),
            emulation_overruns=self.emulator.overruns,
            wall_s=round(ended - started, 3), started_at=started, ended_at=ended,
            samples_per_s=round((self.sync.samples_done if self.sync.local_phase
                                 else committed * spec.job.global_batch) / max(ended - started, 1e-9), 2),
            allocation={str(k): v for k, v in self.balancer.allocation.items()},
            rebalances=self.balancer.rebalances, host=socket.gethostname(),
            params_sha256=params_digest(tr.model),
        )
        if spec.save_model:
            save_model(tr.model, spec.save_model)
        self.sink.emit(done)
        self.sink.close()
        return done.model_dump()


def save_model(model: torch.nn.Module, path: str) -> None:
    """The trained weights: safetensors for ``*.safetensors``, else ``torch.save``."""
    if path.endswith(".safetensors"):
        from potluck.system import write_atomic
        from potluck.trainer.state import model_bytes

        write_atomic(path, model_bytes(model.state_dict()))
    else:
        torch.save(model.state_dict(), path)


def report_error(spec: ReplicaSpec, exc: BaseException) -> None:
    """Tell the launcher why this replica stops for good (an ErrorEvent with the traceback)."""
    sink = JsonlSink(spec.run_dir, spec.name, spec.slot)
    try:
        sink.emit(ErrorEvent(t=round(time.time(), 4), replica=spec.name, slot=spec.slot, step=0,
                             message=str(exc)[:1000] or type(exc).__name__,
                             traceback="".join(traceback.format_exception(exc))[-20000:]))
    finally:
        sink.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    if len(argv) != 1:
        print("usage: python -m potluck.trainer.replica SPEC.json", file=sys.stderr)
        return 2
    spec = None
    try:
        spec = ReplicaSpec.load(argv[0])
        Replica(spec).run()
    except PotluckError as exc:
        if spec is not None and exc.exit_code == FATAL_EXIT_CODE:
            report_error(spec, exc)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
