"""Allocation math: split a global batch ``B`` among replicas of different speeds.

A replica ``r`` computing ``b`` samples takes ``a_r + c_r * b`` seconds (fixed per-step
overhead plus per-sample time). Everybody waits for the slowest at the all-reduce, so the
best split minimises ``max_r (a_r + c_r * b_r)`` subject to ``sum b_r = B``, ``b_r >= 0``
integer. ``solve`` finds it exactly: water-filling for the continuous optimum, then a greedy
integer completion (optimal for a makespan of increasing per-replica costs).

Everything here is pure and deterministic: every replica computes the same answer from the
same inputs, which is what keeps the data assignment consistent without extra messages.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Speed:
    """A replica's cost model: ``overhead_s + sample_s * b`` seconds for ``b`` samples."""

    overhead_s: float
    sample_s: float

    def time(self, b: float) -> float:
        return self.overhead_s + self.sample_s * b if b > 0 else 0.0


def split_equal(members: Iterable[int], global_batch: int) -> dict[int, int]:
    """Split as evenly as possible; the remainder goes to the lowest slots (plain DDP)."""
    order = sorted(members)
    if not order:
        return {}
    base, extra = divmod(global_batch, len(order))
    return {slot: base + (1 if i < extra else 0) for i, slot in enumerate(order)}


def _water_level(speeds: Mapping[int, Speed], global_batch: int) -> tuple[float, set[int]]:
    """Continuous optimum: level ``T`` with ``sum (T - a_r) / c_r = B`` over active replicas."""
    active = set(speeds)
    while True:
        inv = sum(1.0 / speeds[r].sample_s for r in active)
        level = (global_batch + sum(speeds[r].overhead_s / speeds[r].sample_s for r in active)) / inv
        # A replica whose overhead alone exceeds the level cannot help: drop it, re-solve.
        too_slow = {r for r in active if speeds[r].overhead_s >= level}
        if not too_slow or len(too_slow) == len(active):
            return level, active
        active -= too_slow


def solve(speeds: Mapping[int, Speed], global_batch: int) -> dict[int, int]:
    """Integer shares minimising the predicted step time; every slot of ``speeds`` is a key.

    Exact: the continuous relaxation's level ``T_c`` is a lower bound of the optimum, so the
    floor of each replica's relaxed share is safe to hand out; the rest goes one sample at a
    time to whoever would finish it earliest, which is optimal for non-decreasing costs. A
    replica whose first sample would cost more than the optimum (share rounds to zero, or
    its fixed overhead is too large) gets 0: it is excluded from compute, still takes part
    in the all-reduce, and stalls nobody. Raises ``ValueError`` on an empty ``speeds`` or a
    non-positive ``sample_s``.
    """
    if not speeds:
        raise ValueError("cannot allocate a batch among zero replicas")
    for slot, sp in speeds.items():
        if not (sp.sample_s > 0 and math.isfinite(sp.sample_s)) or sp.overhead_s < 0:
            raise ValueError(f"replica {slot} has an invalid speed {sp}")
    level, active = _water_level(speeds, global_batch)
    shares = {r: 0 for r in speeds}
    for r in active:
        shares[r] = max(0, int(math.floor((level - speeds[r].overhead_s) / speeds[r].sample_s)))
    order = sorted(speeds)
    while sum(shares.values()) > global_batch:  # float slack only
        r = max((s for s in order if shares[s] > 0), key=lambda s: (speeds[s].time(shares[s]), -s))
        shares[r] -= 1
    heap = [(speeds[r].overhead_s + speeds[r].sample_s * (shares[r] + 1), r) for r in order]
    heapq.heapify(heap)
    for _ in range(global_batch - sum(shares.values())):
        _, r = heapq.heappop(heap)
        shares[r] += 1
        heapq.heappush(heap, (speeds[r].overhead_s + speeds[r].sample_s * (shares[r] + 1), r))
    return shares


def predicted_step_time(shares: Mapping[int, int], speeds: Mapping[int, Speed]) -> float:
    """The slowest replica's predicted compute time for ``shares`` (0 for empty)."""
    return max((speeds[r].time(b) for r, b in shares.items() if r in speeds), default=0.0)


def micro_batches(count: int, cap: int | None) -> list[int]:
    """Split ``count`` samples into micro-batches of at most ``cap`` (gradient accumulation)."""
    if count <= 0:
        return []
    if cap is None or count <= cap:
        return [count]
    full, rest = divmod(count, cap)
    return [cap] * full + ([rest] if rest else [])
