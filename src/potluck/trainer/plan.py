"""Choosing how to sync from the measured link: a cost model and the ``auto`` mode.

The time one sync takes (a ring all-reduce; docs/sync.md derives it)::

    T_sync = 2 (N - 1) / N * bytes / (efficiency * bandwidth) + rounds * RTT + codec time

with ``bytes`` the values on the wire times their width (:data:`~potluck.trainer.codec.WIRE_BYTES`),
``bandwidth`` the slowest member's link in bytes/s and ``efficiency`` what gloo's ring
all-reduce reaches of the wire speed (0.85: 0.85-0.93 measured over 20 Mbit/s links, where
plain TCP reaches 0.95). An int8 all-gather sends ``N - 1`` whole contributions instead of a
ring's ``2 (N - 1) / N``, and between two members it reaches only :data:`PAIR_ALLGATHER` of
the all-reduce's efficiency. tests/cluster/test_slow_link.py measures every wire at 2 and 3
members over 20 Mbit/s links and holds the model to +-35% (measured: within 15%).

``auto`` takes the first mode whose predicted compute fraction reaches the target:

1. ``allreduce`` (exact): ``step / (step + T_sync(fp32))``;
2. ``allreduce-bf16`` (approximate): half the bytes;
3. ``diloco`` (approximate) with the wire of the shorter predicted sync (int8 up to 3
   members, bf16 from 4: an int8 all-gather grows with ``N - 1``, a bf16 ring does not): the
   inner phase ``H`` is the shortest that reaches the target,
   ``H = T_sync * target / (1 - target)``, at least ``MIN_PHASE_S``.

With ``exact`` only the first is allowed; it is chosen even when it misses the target, and
the plan says by how much. A strategy the job fixes gets the same prediction
(:func:`for_strategy`), so that in every mode the torchft timeouts follow the predicted sync
(:func:`timeouts_for`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from potluck.trainer.codec import WIRE_BYTES
from potluck.trainer.ft import quorum_timeout_s

EFFICIENCY = 0.85
PAIR_ALLGATHER = 0.74
"""gloo's all-gather between exactly two members, relative to :data:`EFFICIENCY` (0.63 of the
link). Both directions share one connection, and each half-buffer chunk waits for the peer's
receive-ready message, which queues behind the peer's own data in a deep uplink buffer:
measured 12.6 of 20 Mbit/s (0.75 and 3 MB), against 17-18.6 for the ring all-reduce of the same
bytes and 18.5 for an all-gather among three (separate connections to each side). Without
this factor the measured int8 sync at 2 members was 1.32-1.36x the model's (0.50 s against
0.37 s for 750,000 values)."""
ROUNDS = 4
"""Latency-bound rounds per sync (the quorum, the all-reduce's handshakes, the commit vote)."""
MIN_STEP_S = 0.1
"""Steps shorter than this count as this long: every mode pays the quorum and the commit vote
(6-13 ms per step on loopback, docs/benchmarks.md) and the probe's small all-reduce includes
gloo's own overhead (up to 8 ms on a loaded 2-core box, where 50 ms put a tiny model on
loopback at the 85% target's edge), so a tiny model on a fast link is not a reason to leave
the exact mode."""
MIN_PHASE_S = 2.0
MAX_PHASE_S = 600.0
CODEC_S_PER_VALUE = {"fp32": 0.0, "bf16": 1e-9, "int8": 6e-9}
"""CPU seconds per value to encode and decode (measured on this machine: docs/benchmarks.md)."""


@dataclass(frozen=True)
class Link:
    """The slowest member's link: what limits a collective."""

    bandwidth_bps: float
    """Bits per second."""
    rtt_s: float


def sync_seconds(n: int, values: int, wire: str, link: Link, *, efficiency: float = EFFICIENCY) -> float:
    """Predicted seconds of one sync of ``values`` numbers among ``n`` members."""
    if n <= 1:
        return CODEC_S_PER_VALUE[wire] * values
    bytes_ = values * WIRE_BYTES[wire]
    if wire == "int8":  # an all-gather: every other member's whole contribution arrives
        factor = float(n - 1)
        efficiency *= PAIR_ALLGATHER if n == 2 else 1.0
    else:  # a ring all-reduce: reduce-scatter, then all-gather of the reduced chunks
        factor = 2 * (n - 1) / n
    transfer = factor * bytes_ * 8 / (efficiency * link.bandwidth_bps)
    return transfer + ROUNDS * link.rtt_s + CODEC_S_PER_VALUE[wire] * values * n


@dataclass(frozen=True)
class Plan:
    mode: str
    """``allreduce``, ``allreduce-bf16`` or ``diloco``."""
    wire: str
    phase_s: float
    """Inner phase length (diloco), else 0."""
    predicted_fraction: float
    """Predicted fraction of wall time spent computing."""
    allreduce_fraction: float
    """What plain ``allreduce`` would compute, for the reason line."""
    sync_s: float
    reason: str

    @property
    def exact(self) -> bool:
        return self.mode == "allreduce"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


MIN_GAIN = 1.25
"""``auto`` gives up exactness only for a real gain: an approximate mode must be predicted at
least this many times as fast as allreduce (a loaded machine's probe can put a loopback link
just under the target: 85% computing is not worth an approximate result)."""


def _baseline(n: int, values: int, step_s: float, link: Link) -> tuple[str, float, float, float]:
    """What every plan's reason starts from: the link in words, the step time counted
    (at least ``MIN_STEP_S``), and exact allreduce's sync seconds and compute fraction."""
    where = f"slowest link {link.bandwidth_bps / 1e6:.0f} Mbit/s, RTT {link.rtt_s * 1e3:.0f} ms"
    step_s = max(step_s, MIN_STEP_S)
    t32 = sync_seconds(n, values, "fp32", link)
    return where, step_s, t32, step_s / (step_s + t32)


def choose(*, n: int, values: int, step_s: float, link: Link, target: float = 0.85,
           exact: bool = False, phase_s: float | None = None, local_only: bool = False) -> Plan:
    """The plan for ``n`` members syncing ``values`` numbers after steps of ``step_s``.

    ``local_only``: the job already trains in local phases (diloco) and stays in them, so
    only diloco's wire and phase are chosen (a step-wise job's step counter counts global
    batches, a diloco job's counts phases: the replica does not switch back)."""
    where, step_s, t32, f32 = _baseline(n, values, step_s, link)
    t16 = sync_seconds(n, values, "bf16", link)
    f16 = step_s / (step_s + t16)
    # diloco's wire: int8 all-gathers (N - 1 bytes a value), bf16 rings (4 (N - 1) / N): int8
    # wins up to 3 members, bf16 from 4 (equal bytes at 4; int8's codec time tips it)
    t_local, wire = min(((sync_seconds(n, values, w, link), w) for w in ("int8", "bf16")),
                        key=lambda tw: tw[0])
    h = phase_s or min(MAX_PHASE_S, max(MIN_PHASE_S, t_local * target / (1 - target)))
    f_local = h / (h + t_local)
    best = f16 if f16 >= target else f_local
    local = Plan("diloco", wire, round(h, 2), f_local, f32, t_local,
                 f"{where}; allreduce would compute {f32:.0%} of the time; diloco-{wire} with "
                 f"{h:.0f} s phases: predicted {f_local:.0%}")
    if local_only and not exact:
        return replace(local, reason=local.reason + " (a job in local phases stays in them)")
    if f32 >= target or exact or best < MIN_GAIN * f32:
        why = (f"{where}; allreduce computes {f32:.0%} of the time" + (
            "" if f32 >= target else f" (below the {target:.0%} target, but --exact)" if exact
            else f" (below the {target:.0%} target, but no approximate mode is predicted "
                 f"{MIN_GAIN:g}x as fast)"))
        return Plan("allreduce", "fp32", 0.0, f32, f32, t32, why)
    if f16 >= target:
        return Plan("allreduce-bf16", "bf16", 0.0, f16, f32, t16,
                    f"{where}; allreduce would compute {f32:.0%} of the time; bf16 gradients: {f16:.0%}")
    return local


STRATEGY_WIRES = {"allreduce": "fp32", "allreduce-bf16": "bf16"}
"""The wire format of each step-wise strategy (diloco's is ``sync.wire``)."""


def for_strategy(strategy: str, *, wire: str, phase_s: float, n: int, values: int,
                 step_s: float, link: Link) -> Plan | None:
    """The prediction for a strategy the job fixed (``allreduce``, ``allreduce-bf16`` or
    ``diloco`` with ``wire`` and ``phase_s``): its sync seconds and compute fraction. None for
    a strategy the cost model does not know (a registered plug-in)."""
    where, step_s, t32, f32 = _baseline(n, values, step_s, link)
    if strategy in STRATEGY_WIRES:
        wire = STRATEGY_WIRES[strategy]
        t = sync_seconds(n, values, wire, link)
        f = step_s / (step_s + t)
        return Plan(strategy, wire, 0.0, f, f32, t, f"{where}; the job's {strategy} computes {f:.0%} of the time")
    if strategy == "diloco":
        t = sync_seconds(n, values, wire, link)
        f = phase_s / (phase_s + t)
        return Plan(strategy, wire, phase_s, f, f32, t,
                    f"{where}; the job's diloco-{wire} with {phase_s:g} s phases computes {f:.0%} of the time")
    return None


TIMEOUT_MARGIN = 3.0
TIMEOUT_FLOOR_S = 5.0
"""The collective timeout is at least ``TIMEOUT_MARGIN x`` the predicted sync plus this: the
cost model is within 15% over real links (docs/sync.md), a loaded machine or a link shared
with other traffic may take twice as long without being broken, and a short sync still gets
seconds for a scheduling hiccup (on a fast link this stays under the job's step timeout, so a
user's short ``fault.step_timeout_s`` keeps detecting failures fast). A dead peer is still
found within that bound (a process that died closes its connections and fails the collective
at once; a machine that vanished takes the whole timeout)."""


@dataclass(frozen=True)
class Timeouts:
    """torchft's timeouts for one job: every member derives the same from the same plan."""

    collective_s: float
    """Every collective, the commit vote and a recovery transfer (the Manager's timeout and
    the process group's)."""
    quorum_s: float
    """A quorum request (:func:`~potluck.trainer.ft.quorum_timeout_s` of the collective's)."""


def timeouts_for(sync_s: float, step_timeout_s: float) -> Timeouts:
    """The timeouts for a plan predicting syncs of ``sync_s`` seconds: the job's
    ``fault.step_timeout_s`` is the floor, raised to ``TIMEOUT_MARGIN x sync_s +
    TIMEOUT_FLOOR_S`` (whole seconds) when the sync may take longer."""
    collective = max(step_timeout_s, float(math.ceil(TIMEOUT_MARGIN * sync_s + TIMEOUT_FLOOR_S)))
    return Timeouts(collective, quorum_timeout_s(collective))


PROBE_VALUES = (256, 1 << 18)
"""Float32 values of the two probe all-reduces (1 KiB and 1 MiB): the difference of their
times is the bandwidth, the small one's time the latency."""


def probe_link(manager: object, slot: int, slots: int, step_s: float, repeats: int = 2) -> tuple[Link, float]:
    """Measure the group's slowest link with two all-reduces inside the current quorum, and
    agree on it: every member adds its own ``(small_s, big_s, step_s)`` to a per-slot table
    and all take the maxima, so every member computes the same plan. Returns the link and
    the slowest member's step time."""
    import time

    import torch
    from torch.distributed import ReduceOp

    times = []
    for n in PROBE_VALUES:
        best = float("inf")
        for _ in range(repeats):
            buf = torch.zeros(n)
            t0 = time.perf_counter()
            manager.allreduce(buf, reduce_op=ReduceOp.SUM).wait()  # type: ignore[attr-defined]
            best = min(best, time.perf_counter() - t0)
        times.append(best)
    table = torch.zeros(slots, 4)
    table[slot] = torch.tensor([1.0, times[0], times[1], step_s])
    manager.allreduce(table, reduce_op=ReduceOp.SUM).wait()  # type: ignore[attr-defined]
    members = table[table[:, 0] > 0.5]
    n = max(2, len(members))
    small, big, slowest = (float(members[:, i].max()) for i in (1, 2, 3))
    moved = 2 * (n - 1) / n * (PROBE_VALUES[1] - PROBE_VALUES[0]) * 4 * 8  # bits per member
    # On a fast link both probes take about gloo's fixed cost and their difference is timing
    # noise (it printed 9859313 Mbit/s for a veth): trust it down to a tenth of the big probe.
    bandwidth = moved / max(big - small, big / 10, 1e-6) / EFFICIENCY
    return Link(bandwidth_bps=bandwidth, rtt_s=max(small, 1e-5) / ROUNDS), slowest
