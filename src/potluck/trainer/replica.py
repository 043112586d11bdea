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
from pathlib import Path
from typing import Any

import torch

from potluck.balancer import Balancer, Decision, Speed
from potluck.contracts.errors import PotluckError
from potluck.contracts.events import (
    AlertEvent,
    AllocationEvent,
    DoneEvent,
    MembershipEvent,
    StepEvent,
    finite,
)
from potluck.contracts.jobspec import ReplicaSpec
from potluck.log import IdentityAdapter, get_logger, setup_logging
from potluck.trainer.core import build_training, gradient_step, local_gradients, params_digest
from potluck.trainer.emulation import Emulator, calibrate
from potluck.trainer.faults import Faults
from potluck.trainer.ft import make_manager
from potluck.trainer.sampler import step_indices
from potluck.trainer.sinks import EventSink, JsonlSink
from potluck.trainer.sync import LocalWork, SyncResult, make_sync


class Replica:
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
        self.tr = build_training(job, spec.device, replica=spec.name, slot=spec.slot)
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
        self.step = 0
        self.members: list[int] = []
        self.log = IdentityAdapter(get_logger("replica"),
                                   lambda: f"{spec.name}/replica {spec.slot} step {self.step}")
        self.profile = self._own_profile()
        self.sync: Any = None
        self._alerts: set[str] = set()

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
        return {
            "model": self.tr.model.state_dict(),
            "optim": self.tr.optimizer.state_dict(),
            "balancer": self.balancer.state_dict(),
            "sync": self.sync.state_dict() if self.sync is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tr.model.load_state_dict(state["model"])
        self.tr.optimizer.load_state_dict(state["optim"])
        self.balancer.load_state_dict(state["balancer"])
        if self.sync is not None:
            self.sync.load_state_dict(state.get("sync", {}))
        self.log.info("recovered state from a peer")

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
        self.pg = pg
        self.sync = make_sync(spec.job, tr.model, tr.optimizer, manager, spec.device)
        self._wait_start_barrier()
        committed = discarded = 0
        started: float | None = None
        last_loss: float | None = None
        try:
            while manager.current_step() < tr.total_steps:
                t_quorum = time.perf_counter()
                manager.start_quorum()
                quorum_s = time.perf_counter() - t_quorum
                self.step = manager.current_step()
                if self.step >= tr.total_steps:
                    break
                started = started or time.time()
                members = sorted(pg.members) or [spec.slot]
                self._membership(members)
                self._decided(self.balancer.allocation_for(members, self.step), members)
                work = self._compute()
                result = self.sync.sync(work, members)
                if result.committed:
                    committed += 1
                    last_loss = result.loss
                self._stepped(work, result, members, quorum_s)
                if not result.committed:
                    discarded += 1
                    self.log.warning("step %d discarded (%s)", self.step, result.error)
        except BaseException:
            # Dying mid-step: drop out of the group now so peers fail fast, not at a timeout.
            pg.abort(errored=False)
            raise
        finally:
            manager.shutdown(wait=False)
        ended = time.time()
        return self._finish(committed, discarded, started or ended, ended, last_loss)

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
        self._indices = step_indices(step=self.step, seed=job.seed, train_size=tr.train_size,
                                     global_batch=job.global_batch,
                                     allocation=self.balancer.allocation, slot=spec.slot)
        tr.optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss_sum = local_gradients(tr, tr.batch(self._indices), share, spec.memory_cap) if share else 0.0
        self.emulator.pad(share, t0)
        return LocalWork(slot=spec.slot, samples=share, compute_s=time.perf_counter() - t0,
                         loss_sum=loss_sum, profile=self.profile)

    def _stepped(self, work: LocalWork, result: SyncResult, members: list[int],
                 quorum_s: float) -> None:
        event = StepEvent(
            **self._ident(), committed=result.committed, participants=len(members),
            local_batch=work.samples, compute_s=round(work.compute_s, 6),
            quorum_s=round(quorum_s, 6), allreduce_s=round(result.sync_s, 6),
            commit_s=round(result.commit_s, 6),
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
            profiles = {s: Speed(*p.profile) for s, p in result.peers.items() if p.profile[1] > 0}
            change = self.balancer.observe(self.step, measured, profiles)
            self.sink.emit(event)
            self._decided(change, members)
        else:
            self.sink.emit(event)

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
            samples_per_s=round(committed * spec.job.global_batch / max(ended - started, 1e-9), 2),
            allocation={str(k): v for k, v in self.balancer.allocation.items()},
            rebalances=self.balancer.rebalances, host=socket.gethostname(),
            params_sha256=params_digest(tr.model),
        )
        if spec.save_model:
            torch.save(tr.model.state_dict(), spec.save_model)
        self.sink.emit(done)
        self.sink.close()
        return done.model_dump()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    if len(argv) != 1:
        print("usage: python -m potluck.trainer.replica SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = ReplicaSpec.load(argv[0])
        Replica(spec).run()
    except PotluckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
