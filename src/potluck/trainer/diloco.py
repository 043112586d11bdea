"""Local-update sync for slow links: DiLoCo with time-based inner phases.

Each replica trains alone for an inner phase of ``sync.phase_s`` seconds with its own
(inner) optimizer, counting the samples it processed. Then the replicas combine
pseudo-gradients, ``start - local``, weighted by those counts (a slow machine contributes
less, and nobody waits for it), and an outer optimizer (SGD, Nesterov momentum) moves the
shared weights. One torchft step is one phase::

    phase (local) -> delta = start - local, params <- start -> quorum (a newcomer heals here
    with the shared weights) -> SUM(n_r * delta_r) and the statistics -> commit vote ->
    outer step on start with grad = SUM / SUM(n_r)

The quorum comes *after* the phase, so a replica lost mid-phase is simply not in it: the
others' phase commits. A replica that healed in that quorum contributes nothing this phase.
Approximate by design (not the one-machine result); docs/sync.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.distributed import ReduceOp

from potluck.trainer.codec import allreduce_sum
from potluck.trainer.sync import COMPUTE_S as COMPUTE
from potluck.trainer.sync import (
    COUNT,
    LOSS_SUM,
    PRESENT,
    SAMPLES,
    STAT_WIDTH,
    LocalWork,
    PeerStats,
    SyncResult,
    SyncStrategy,
    check_identity,
    identity_code,
    register_sync,
    sync_bytes,
)

InnerStep = Callable[[int], tuple[int, float, float]]
"""``inner(k)``: gradients of the phase's k-th inner batch in ``.grad``; returns
``(samples, loss_sum, loss_count)``."""


def flat_params(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in params])


def load_flat(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p).to(p.device, p.dtype))
            offset += n


@register_sync("diloco")
class DiLoCo(SyncStrategy):
    name = "diloco"
    local_phase = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.spec.sync
        self.params = list(self.model.parameters())
        self.slots = self.spec.fault.max_replicas
        self.wire = cfg.wire
        self.phase_s = cfg.phase_s
        self.outer = torch.optim.SGD(self.params, lr=cfg.outer_lr, momentum=cfg.outer_momentum,
                                     nesterov=cfg.outer_momentum > 0)
        self.delta: torch.Tensor | None = None
        self.samples_done = 0
        """Samples of committed phases (the job's budget is ``steps x global_batch``)."""

    # the phase ------------------------------------------------------------------------------

    def phase(self, inner: InnerStep, slot: int, identity: tuple[str, str] | None) -> LocalWork:
        """Train locally until the phase's deadline; leave the model at the phase's start."""
        start = flat_params(self.params)
        t0 = time.perf_counter()
        deadline = t0 + self.phase_s
        samples = 0
        loss_sum = count = 0.0
        k = 0
        while k == 0 or time.perf_counter() < deadline:
            n, s, c = inner(k)
            self.update()  # the inner optimizer (and clipping, the scheduler)
            samples, loss_sum, count, k = samples + n, loss_sum + s, count + c, k + 1
        self.delta = (start - flat_params(self.params)) * samples
        load_flat(self.params, start)  # a peer healing in the next quorum gets the shared weights
        return LocalWork(slot=slot, samples=samples, compute_s=time.perf_counter() - t0,
                         loss_sum=loss_sum, loss_count=count, identity=identity)

    def healed(self) -> None:
        """This replica took the shared state from a peer: its phase does not count."""
        self.delta = None

    # the sync -------------------------------------------------------------------------------

    def sync(self, work: LocalWork, members: list[int]) -> SyncResult:
        numel = sum(p.numel() for p in self.params)
        delta = self.delta if self.delta is not None else torch.zeros(numel)
        samples = work.samples if self.delta is not None else 0
        stats = torch.zeros(self.slots * STAT_WIDTH)
        row = stats.view(self.slots, STAT_WIDTH)[work.slot]
        row[PRESENT], row[SAMPLES], row[COMPUTE] = 1.0, samples, work.compute_s
        row[LOSS_SUM], row[COUNT] = work.loss_sum, work.loss_count
        if work.identity:
            from potluck.trainer.sync import IDENT_D0, IDENT_D1, IDENT_P0, IDENT_P1

            (row[IDENT_P0], row[IDENT_P1]) = identity_code(work.identity[0])
            (row[IDENT_D0], row[IDENT_D1]) = identity_code(work.identity[1])
        t0 = time.perf_counter()
        self.manager.allreduce(stats, reduce_op=ReduceOp.SUM).wait()
        total = allreduce_sum(self.manager, self.pg, delta.clone(), self.wire)
        t1 = time.perf_counter()
        committed = self.manager.should_commit()
        self.delta = None
        result = SyncResult(committed=committed, sync_s=t1 - t0, commit_s=time.perf_counter() - t1,
                            sync_bytes=sync_bytes(numel, self.wire, self.slots))
        if not committed:
            result.error = str(self.manager.errored())
            return result
        table = stats.view(self.slots, STAT_WIDTH)
        check_identity(table, members)
        n = float(table[:, SAMPLES].sum())
        if n > 0:
            grad = total / n
            offset = 0
            for p in self.params:
                k = p.numel()
                p.grad = grad[offset : offset + k].view_as(p).to(p.device, p.dtype).clone()
                offset += k
            self.outer.step()
            self.samples_done += int(n)
        self.outer.zero_grad(set_to_none=True)
        result.peers = {s: PeerStats(int(round(float(table[s, SAMPLES]))), float(table[s, COMPUTE]), (0.0, 0.0))
                        for s in members if table[s, PRESENT] > 0.5}
        count = float(table[:, COUNT].sum())
        result.loss = float(table[:, LOSS_SUM].sum()) / count if count > 0 else None
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"outer": self.outer.state_dict(), "samples_done": self.samples_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "outer" in state:
            self.outer.load_state_dict(state["outer"])
            self.samples_done = int(state.get("samples_done", 0))
        self.healed()
