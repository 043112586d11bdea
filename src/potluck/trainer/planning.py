"""How a replica chooses and changes its sync plan: ``auto``'s probe and choice, the plan
of a strategy the job fixed, and the torchft timeouts each plan implies.

:class:`Planning` is part of :class:`~potluck.trainer.replica.Replica` (a mixin: it reads the
replica's spec, manager, process group, strategy and sink); the cost model itself is
:mod:`potluck.trainer.plan`. docs/sync.md "How auto decides" describes the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from potluck.contracts.events import NoticeEvent, PlanEvent, SyncPlan
from potluck.contracts.jobspec import ReplicaSpec
from potluck.trainer.core import gradient_step
from potluck.trainer.emulation import calibrate
from potluck.trainer.ft import quorum_timeout_s, set_timeouts
from potluck.trainer.sync import AUTO, make_sync, sync_bytes


@dataclass(frozen=True)
class PlanTrial:
    """An `auto` plan put in force for one step or phase: reported if it commits, undone
    if it is discarded (the vote is the same on every member, so all keep or all undo)."""

    undo: tuple[Any, str, float, dict[str, Any] | None, tuple[float, float] | None]
    """The strategy, its wire and phase, the plan and the timeouts before."""
    event: PlanEvent
    message: str


def plan_name(mode: str, wire: str, phase_s: float) -> str:
    """``allreduce``, ``allreduce-bf16`` or ``diloco (int8, 27 s phases)``."""
    return mode + (f" ({wire}, {phase_s:.0f} s phases)" if mode == "diloco" else "")


class Planning:
    """The plan in force (``planned``), its timeouts, and the steps that change them."""

    spec: ReplicaSpec
    tr: Any
    sync: Any
    manager: Any
    pg: Any
    sink: Any
    log: Any
    emulator: Any
    step: int
    planned: dict[str, Any] | None
    """The plan in force: its members, mode, wire and phase (None: none chosen yet)."""
    timeouts: tuple[float, float] | None
    """``(collective_s, quorum_s)`` derived from the sync plan (None: the job's)."""

    def _ident(self) -> dict[str, Any]:
        raise NotImplementedError

    def _plan_due(self, members: list[int]) -> bool:
        """`auto`: this quorum's members are not those the plan in force was made for (or
        there is none yet), and at least two are here to sync. Every member of the quorum
        holds the same plan (a newcomer healed with it), so all of them decide alike."""
        return (self.spec.job.sync.strategy == AUTO and len(members) > 1
                and (self.planned is None or members != self.planned["members"]))

    def _choose_plan(self, manager: Any, members: list[int]) -> PlanTrial | None:
        """`auto`: measure the link and this job's step time with every member of this
        quorum, choose the plan (trainer/plan.py) and put it in force for this step or
        phase. Returns what to report if it commits and to undo if not; None when the probe
        failed (nothing changes: the step is discarded and the next quorum probes again).

        A job in local phases stays in them (a new wire and phase, the same outer
        optimizer); a switch into them starts from the shared weights of this quorum."""
        from potluck.trainer.plan import choose, probe_link, timeouts_for

        job = self.spec.job
        share = max(1, job.global_batch // len(members))
        step_s = self.emulator.target_s(share) if self.emulator.active else \
            calibrate(gradient_step(self.tr), min(share, self.tr.train_size))[0] * share
        link, step_s = probe_link(manager, self.spec.slot, job.fault.max_replicas, step_s)
        if manager.errored() is not None:
            self.log.warning("auto: the link probe failed (%s); the plan stays", manager.errored())
            return None
        numel = sum(p.numel() for p in self.tr.model.parameters())
        local = bool(self.sync.local_phase)
        plan = choose(n=len(members), values=numel, step_s=step_s, link=link,
                      target=job.sync.target_compute_fraction, exact=job.sync.exact,
                      local_only=local)
        timeouts = timeouts_for(plan.sync_s, job.fault.step_timeout_s)
        before = self.planned
        name = plan_name(plan.mode, plan.wire, plan.phase_s)
        if before is None:
            message = f"sync plan: {name}: {plan.reason}"
        else:
            was = plan_name(before["mode"], before["wire"], before["phase_s"])
            message = (f"sync plan changed: {was} -> {name} (members "
                       f"{','.join(map(str, before['members']))} -> {','.join(map(str, members))}): "
                       f"{plan.reason}")
        message += f"; timeouts: collective {timeouts.collective_s:g} s, quorum {timeouts.quorum_s:g} s"
        if not plan.exact:
            message += "; approximate: not exactly what one machine computes (--exact forbids it)"
        trial = PlanTrial(
            undo=(self.sync, getattr(self.sync, "wire", "fp32"), getattr(self.sync, "phase_s", 0.0),
                  before, self.timeouts),
            event=self._plan_event(plan, link, members, numel, "auto", timeouts), message=message)
        self._set_timeouts(timeouts.collective_s, timeouts.quorum_s)
        self._install({"members": list(members), "mode": plan.mode, "wire": plan.wire,
                       "phase_s": plan.phase_s})
        if self.sync.local_phase and not local:  # the samples of the steps committed so far
            self.sync.samples_done = self.step * job.global_batch
        return trial

    def _install(self, planned: dict[str, Any]) -> None:
        """Sync as ``planned`` says from now on: the same strategy object when only its wire
        or phase changes (a diloco one keeps its outer optimizer), else a new one."""
        mode, wire, phase_s = str(planned["mode"]), str(planned["wire"]), float(planned["phase_s"])
        if mode == "diloco" and self.sync.local_phase:
            self.sync.wire, self.sync.phase_s = wire, phase_s
        elif mode != self.sync.name:
            job = self.spec.job
            chosen = job.updated({"sync.strategy": mode, "sync.wire": wire,
                                  "sync.phase_s": phase_s or job.sync.phase_s})
            self.sync = make_sync(chosen, self.tr.model, self.tr.optimizer, self.manager,
                                  self.spec.device, self.tr.update)
            self.sync.pg = self.pg
        self.planned = {"members": [int(m) for m in planned["members"]], "mode": mode,
                        "wire": wire, "phase_s": phase_s}

    def _plan_kept(self, trial: PlanTrial) -> None:
        """The step or phase that tried the plan committed: it is the job's plan now."""
        self.log.info("%s", trial.message)
        self.sink.emit(trial.event)
        self.sink.emit(NoticeEvent(**self._ident(), message=trial.message[:1000]))

    def _plan_dropped(self, trial: PlanTrial) -> None:
        """The step or phase that tried the plan was discarded: back to the plan before it
        (every member does the same, so the next quorum probes again on all of them)."""
        sync, wire, phase_s, planned, timeouts = trial.undo
        self.sync = sync
        if sync.local_phase:
            sync.wire, sync.phase_s = wire, phase_s
        self.planned = planned
        if timeouts is None:
            step_timeout_s = self.spec.job.fault.step_timeout_s
            self._set_timeouts(step_timeout_s, quorum_timeout_s(step_timeout_s))
            self.timeouts = None
        else:
            self._set_timeouts(*timeouts)

    def _plan_fixed(self, manager: Any, members: list[int], step_s: float) -> None:
        """A strategy the job fixed: measure the link with every member at step 0 (as `auto`
        does) and derive the timeouts from the predicted sync. A probe that failed changes
        nothing: the step is discarded and step 0 probes again."""
        from potluck.trainer.plan import for_strategy, probe_link, timeouts_for

        job = self.spec.job
        link, slowest = probe_link(manager, self.spec.slot, job.fault.max_replicas, step_s)
        numel = sum(p.numel() for p in self.tr.model.parameters())
        plan = for_strategy(job.sync.strategy, wire=job.sync.wire, phase_s=job.sync.phase_s,
                            n=len(members), values=numel, step_s=slowest, link=link)
        if plan is None or manager.errored() is not None:
            return
        timeouts = timeouts_for(plan.sync_s, job.fault.step_timeout_s)
        self._set_timeouts(timeouts.collective_s, timeouts.quorum_s)
        self.sink.emit(self._plan_event(plan, link, members, numel, "job", timeouts))
        collective_s, quorum_s = timeouts.collective_s, timeouts.quorum_s
        message = (f"sync: {plan.mode}" + (f" ({plan.wire}, {plan.phase_s:g} s phases)"
                                           if plan.mode == "diloco" else "")
                   + f": {plan.reason}; predicted {plan.sync_s:.1f} s per sync; timeouts: "
                   f"collective {collective_s:g} s, quorum {quorum_s:g} s")
        self.log.info("%s", message)
        if collective_s > job.fault.step_timeout_s:  # the user should know why it waits longer
            self.sink.emit(NoticeEvent(**self._ident(), message=(
                message + f" (raised above fault.step_timeout_s {job.fault.step_timeout_s:g} s "
                "for the predicted sync)")[:1000]))

    def _plan_event(self, plan: Any, link: Any, members: list[int], values: int,
                    chosen_by: Literal["auto", "job"], timeouts: Any) -> PlanEvent:
        """The plan as an event (every member derives the same timeouts from the same plan)."""
        job = self.spec.job
        return PlanEvent(**self._ident(), plan=SyncPlan(
            strategy=plan.mode, wire=plan.wire, phase_s=plan.phase_s, chosen_by=chosen_by,
            members=len(members), values=values,
            sync_bytes=sync_bytes(values, plan.wire, job.fault.max_replicas),
            bandwidth_bps=min(link.bandwidth_bps, 1e15), rtt_s=link.rtt_s,
            predicted_sync_s=round(plan.sync_s, 6),
            predicted_fraction=round(plan.predicted_fraction, 4),
            collective_timeout_s=timeouts.collective_s, quorum_timeout_s=timeouts.quorum_s))

    def _set_timeouts(self, collective_s: float, quorum_s: float) -> None:
        set_timeouts(self.manager, self.pg, collective_s=collective_s, quorum_s=quorum_s)
        self.timeouts = (collective_s, quorum_s)
