"""One replica process: ``python -m potluck.trainer.replica SPEC.json``.

Per step: torchft quorum (synchronous; a recovering replica heals here) -> the balancer's
allocation for the quorum's members -> this replica's share of the global batch -> weighted
gradients (+ emulated-speed padding) -> one all-reduce carrying the gradients and every
replica's measurements -> torchft commit vote -> optimizer step and balancer update only if
the step committed. A failed step is discarded and redone with the same samples.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed import ReduceOp

from potluck.balancer import Balancer, Speed
from potluck.errors import PotluckError
from potluck.log import IdentityAdapter, get_logger, setup_logging
from potluck.trainer.core import (
    build_training,
    evaluate,
    flat_grads,
    local_gradients,
    num_params,
    params_digest,
    set_grads,
)
from potluck.trainer.emulation import Emulator, calibrate
from potluck.trainer.ft import make_manager
from potluck.trainer.metrics import MetricsWriter
from potluck.trainer.sampler import step_indices
from potluck.trainer.spec import ReplicaSpec

# Per-slot fields appended to each step's gradient all-reduce. Only the owner writes its
# slot, so the sum is an exact copy of every replica's numbers on every replica.
PRESENT, SAMPLES, COMPUTE_S, LOSS_SUM, PROFILE_A, PROFILE_C = range(6)
STAT_WIDTH = 6


class Replica:
    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        job = spec.job
        emulating = spec.speed != 1.0 or job.emulated_sample_s > 0 or bool(spec.speed_changes)
        threads = spec.threads or (1 if emulating else 0)
        if threads:
            torch.set_num_threads(threads)
        self.tr = build_training(job, spec.device)
        profiles = {int(k): Speed(v[0], v[1]) for k, v in job.profiles.items()}
        self.balancer = Balancer(
            policy=job.policy,
            global_batch=job.global_batch,
            rebalance_interval=job.rebalance_interval,
            deadband=job.deadband,
            profiles=profiles,
        )
        sample_s, overhead_s = job.emulated_sample_s, job.emulated_overhead_s
        if spec.speed != 1.0 and sample_s == 0:
            sample_s, overhead_s = calibrate(self.tr.model, self.tr.data.train_x,
                                             self.tr.data.train_y, min(job.global_batch, 256))
        self.emulator = Emulator(spec.speed, sample_s, overhead_s)
        self.metrics = MetricsWriter(spec.run_dir, spec.name, spec.slot)
        self.step = 0
        self.log = IdentityAdapter(get_logger("replica"),
                                   lambda: f"{spec.name}/replica {spec.slot} step {self.step}")
        self.profile = self._own_profile()

    def _own_profile(self) -> tuple[float, float]:
        """``(overhead_s, sample_s)`` to share with peers; (0, 0) when nobody needs it.

        Given by the launcher (spec or job profiles) or, for the proportional and hybrid
        policies, measured here with the profiler on this replica's (emulated) device.
        """
        spec, job = self.spec, self.spec.job
        if spec.profile_sample_s:
            return (spec.profile_overhead_s or 0.0, spec.profile_sample_s)
        if str(spec.slot) in job.profiles:
            a, c = job.profiles[str(spec.slot)]
            return (a, c)
        if job.policy not in ("proportional", "hybrid"):
            return (0.0, 0.0)
        from potluck.profiler import profile_device

        per_node = max(2, job.global_batch // 8)
        prof = profile_device(model=job.model, dataset=job.dataset, device=spec.device,
                              batch_sizes=[max(1, per_node // 4), per_node], repeats=3,
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tr.model.load_state_dict(state["model"])
        self.tr.optimizer.load_state_dict(state["optim"])
        self.balancer.load_state_dict(state["balancer"])
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

    def run(self) -> dict[str, Any]:
        spec, job, tr = self.spec, self.spec.job, self.tr
        manager, pg, _store = make_manager(
            name=spec.name, slot=spec.slot, lighthouse=spec.lighthouse,
            advertise_host=spec.advertise_host, timeout_s=job.step_timeout_s,
            load_state_dict=self.load_state_dict, state_dict=self.state_dict,
        )
        self._wait_start_barrier()
        n_params = num_params(tr.model)
        train_size = len(tr.data.train_y)
        own_profile = self.profile
        committed_steps = discarded = 0
        started = None
        last_loss = float("nan")
        try:
            while manager.current_step() < tr.total_steps:
                t_quorum = time.perf_counter()
                manager.start_quorum()
                quorum_s = time.perf_counter() - t_quorum
                self.step = step = manager.current_step()
                if step >= tr.total_steps:
                    break
                if started is None:
                    started = time.time()
                members = sorted(pg.members) or [spec.slot]
                decision = self.balancer.allocation_for(members, step)
                if decision is not None:
                    self._log_decision(decision.to_record(), members)
                if spec.fail_at_step is not None and step >= spec.fail_at_step:
                    self.log.warning("failure injection: exiting at step %d", step)
                    os._exit(17)
                for at_step, new_speed in spec.speed_changes:
                    if step >= at_step:
                        self.emulator.speed = new_speed
                share = self.balancer.allocation.get(spec.slot, 0)
                idx = step_indices(step=step, seed=job.seed, train_size=train_size,
                                   global_batch=job.global_batch,
                                   allocation=self.balancer.allocation, slot=spec.slot)
                tr.optimizer.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                loss_sum = 0.0
                if share:
                    index = torch.from_numpy(idx)
                    x = tr.data.train_x[index].to(spec.device)
                    y = tr.data.train_y[index].to(spec.device)
                    loss_sum = local_gradients(tr.model, x, y, job.global_batch, spec.memory_cap)
                self.emulator.pad(share, t0)
                compute_s = time.perf_counter() - t0

                buf = flat_grads(tr.model, extra=job.max_replicas * STAT_WIDTH)
                mine = n_params + spec.slot * STAT_WIDTH
                buf[mine : mine + STAT_WIDTH] = torch.tensor(
                    [1.0, share, compute_s, loss_sum, own_profile[0], own_profile[1]])
                t1 = time.perf_counter()
                manager.allreduce(buf, reduce_op=ReduceOp.SUM).wait()
                allreduce_s = time.perf_counter() - t1
                t2 = time.perf_counter()
                committed = manager.should_commit()
                commit_s = time.perf_counter() - t2

                record: dict[str, Any] = {
                    "type": "step", "step": step, "committed": committed,
                    "participants": len(members), "local_batch": share,
                    "compute_s": round(compute_s, 6), "quorum_s": round(quorum_s, 6),
                    "allreduce_s": round(allreduce_s, 6), "commit_s": round(commit_s, 6),
                }
                if spec.record_indices:
                    record["indices"] = idx.tolist()
                if committed:
                    stats = buf[n_params:].view(job.max_replicas, STAT_WIDTH)
                    set_grads(tr.model, buf[:n_params].to(spec.device))
                    tr.optimizer.step()
                    committed_steps += 1
                    measured = {s: (int(round(float(stats[s, SAMPLES]))), float(stats[s, COMPUTE_S]))
                                for s in members if stats[s, PRESENT] > 0.5}
                    slowest = max((t for _, t in measured.values()), default=compute_s)
                    wait_s = max(0.0, slowest - compute_s)
                    last_loss = float(stats[:, LOSS_SUM].sum()) / job.global_batch
                    profiles = {s: Speed(float(stats[s, PROFILE_A]), float(stats[s, PROFILE_C]))
                                for s in members if stats[s, PROFILE_C] > 0}
                    record.update(
                        wait_s=round(wait_s, 6),
                        comm_s=round(max(0.0, allreduce_s - wait_s), 6),
                        loss=round(last_loss, 6),
                        allocation={str(k): v for k, v in self.balancer.allocation.items()},
                        samples_per_s=round(job.global_batch / max(
                            quorum_s + compute_s + allreduce_s + commit_s, 1e-9), 3),
                    )
                    change = self.balancer.observe(step, measured, profiles)
                    self.metrics.write(record)
                    if change is not None:
                        self._log_decision(change.to_record(), members)
                else:
                    discarded += 1
                    self.metrics.write(record)
                    self.log.warning("step %d discarded (%s)", step, manager.errored())
        finally:
            manager.shutdown(wait=False)
        ended = time.time()
        return self._finish(committed_steps, discarded, started or ended, ended, last_loss)

    def _log_decision(self, record: dict[str, Any], members: list[int]) -> None:
        self.log.info("allocation %s (%s)", record["allocation"], record["reason"])
        if self.spec.slot == min(members):
            self.metrics.decision(record)
        else:
            self.metrics.write({"type": "allocation", **record})

    def _finish(self, committed: int, discarded: int, started: float, ended: float,
                last_loss: float) -> dict[str, Any]:
        spec, tr = self.spec, self.tr
        test_loss, test_acc = evaluate(tr.model.cpu(), tr.data.test_x, tr.data.test_y)
        summary = {
            "replica": spec.name, "slot": spec.slot, "speed": spec.speed,
            "final_step": self.step, "committed_steps_here": committed,
            "discarded_steps": discarded, "final_loss": last_loss,
            "test_loss": test_loss, "test_accuracy": test_acc,
            "emulation_overruns": self.emulator.overruns,
            "wall_s": round(ended - started, 3), "started_at": started, "ended_at": ended,
            "samples_per_s": round(committed * spec.job.global_batch / max(ended - started, 1e-9), 2),
            "allocation": {str(k): v for k, v in self.balancer.allocation.items()},
            "rebalances": self.balancer.rebalances, "host": socket.gethostname(),
            "params_sha256": params_digest(tr.model),
        }
        if spec.save_model:
            torch.save(tr.model.state_dict(), spec.save_model)
        self.metrics.write({"type": "done", "step": self.step, **summary})
        self.metrics.summary(summary)
        self.metrics.close()
        return summary


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
