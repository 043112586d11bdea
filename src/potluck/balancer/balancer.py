"""The replicated allocation state machine.

Every replica holds a :class:`Balancer` and feeds it the same inputs in the same order: the
members of each step's quorum, and the per-replica measurements that arrive with each
committed step's all-reduce. So every replica computes the same allocation without another
message, and a replica that rejoins receives the state with the model (torchft recovery).

Policies:
- ``equal``: B split evenly (plain DDP, the baseline).
- ``proportional``: shares from each replica's profile taken at job start, fixed.
- ``dynamic``: shares from measured compute times, re-solved every ``rebalance_interval``
  committed steps, applied only if the predicted step time improves by more than ``deadband``.
- ``hybrid``: start from the profiles, then refine like ``dynamic``.
Any change of membership re-solves at once.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from potluck.balancer.estimator import SpeedEstimator
from potluck.balancer.policy import Speed, predicted_step_time, solve, split_equal


@dataclass(frozen=True)
class Decision:
    """An allocation change: from ``step`` on, ``allocation[slot]`` samples per step."""

    step: int
    allocation: dict[int, int]
    reason: str
    predicted_step_s: float | None = None

    def to_record(self) -> dict:
        rec = asdict(self)
        rec["allocation"] = {str(k): v for k, v in self.allocation.items()}
        return rec


class Balancer:
    def __init__(
        self,
        *,
        policy: str,
        global_batch: int,
        rebalance_interval: int = 5,
        deadband: float = 0.05,
        profiles: Mapping[int, Speed] | None = None,
        decay: float = 0.7,
    ) -> None:
        self.policy = policy
        self.global_batch = global_batch
        self.rebalance_interval = rebalance_interval
        self.deadband = deadband
        self.profiles: dict[int, Speed] = dict(profiles or {})
        self.estimator = SpeedEstimator(decay)
        for slot, prior in self.profiles.items():
            self.estimator.prime(slot, prior)
        self.allocation: dict[int, int] = {}
        self.rebalances = 0
        self._since_rebalance = 0

    # -- the two inputs ---------------------------------------------------------------------

    def allocation_for(self, members: Sequence[int], step: int) -> Decision | None:
        """Make the allocation cover exactly ``members``; returns the Decision if it changed.

        Call once per step after the quorum, before computing. The current allocation is
        ``self.allocation``.
        """
        if set(members) == set(self.allocation):
            return None
        before = sorted(self.allocation)
        shares, reason = self._fresh(sorted(members))
        change = "start" if not before else f"members changed {before} -> {sorted(members)}"
        self._since_rebalance = 0
        return self._apply(step, shares, f"{change}: {reason}")

    def observe(
        self,
        step: int,
        measured: Mapping[int, tuple[int, float]],
        profiles: Mapping[int, Speed] | None = None,
    ) -> Decision | None:
        """Feed a committed step's measurements ``{slot: (samples, compute_s)}``.

        Returns the Decision taking effect at ``step + 1`` when this observation triggers a
        rebalance (dynamic and hybrid only, every ``rebalance_interval`` committed steps).
        """
        new_profiles = False
        for slot, prior in (profiles or {}).items():
            if slot not in self.profiles:
                self.profiles[slot] = prior
                self.estimator.prime(slot, prior)
                new_profiles = True
        if new_profiles and self.policy in ("proportional", "hybrid"):
            # Profiles measured by the replicas themselves arrive with the first steps.
            for slot, (b, t) in measured.items():
                self.estimator.observe(slot, b, t)
            shares, reason = self._fresh(sorted(self.allocation))
            self._since_rebalance = 0
            if shares == self.allocation:
                return None
            return self._apply(step + 1, shares, f"profiles received: {reason}")
        newly_known = any(
            slot not in self.estimator.known() and b > 0 for slot, (b, _) in measured.items()
        )
        for slot, (b, t) in measured.items():
            self.estimator.observe(slot, b, t)
        if self.policy not in ("dynamic", "hybrid"):
            return None
        self._since_rebalance += 1
        # A member measured for the first time is solved for at once, not K steps later.
        if self._since_rebalance < self.rebalance_interval and not newly_known:
            return None
        self._since_rebalance = 0
        speeds = self._speeds(sorted(self.allocation))
        if speeds is None:
            return None
        proposal = solve(speeds, self.global_batch)
        now = predicted_step_time(self.allocation, speeds)
        new = predicted_step_time(proposal, speeds)
        if proposal == self.allocation or now - new <= self.threshold(speeds) * now:
            return None
        self.rebalances += 1
        return self._apply(
            step + 1, proposal, f"rebalance: predicted step {now * 1e3:.1f} ms -> {new * 1e3:.1f} ms"
        )

    def threshold(self, members: Mapping[int, Speed] | Sequence[int]) -> float:
        """The relative gain a rebalance must promise: ``deadband``, or more when timings are
        noisy. The estimates average about ``1 / (1 - decay)`` steps, so their relative error
        is ``noise / sqrt(that)``; a predicted gain under that error is noise, not a faster
        split (identical machines with 20% jitter: a 5% deadband alone rebalanced 30 times in
        200 steps, this 12 times; with 5% spikes 37 vs 6 and a 7% faster mean step:
        benchmarks/rebalance_noise.py)."""
        noise = max((self.estimator.noise(slot) for slot in members), default=0.0)
        averaged = max(1.0, 1.0 / max(1e-9, 1.0 - self.estimator.decay))
        return max(self.deadband, noise / averaged ** 0.5)

    # -- internals --------------------------------------------------------------------------

    def _speeds(self, members: list[int]) -> dict[int, Speed] | None:
        """Each member's cost model under the policy, or None when nothing is known yet."""
        if self.policy == "equal":
            return None
        known: dict[int, Speed] = {}
        for slot in members:
            measured = self.estimator.estimate(slot) if self.policy != "proportional" else None
            prior = self.profiles.get(slot) if self.policy != "dynamic" else None
            if measured is not None:
                known[slot] = measured
            elif prior is not None:
                known[slot] = prior
        if not known:
            return None
        # A member nothing is known about yet is assumed to be a typical one.
        typical = Speed(
            statistics.median(s.overhead_s for s in known.values()),
            statistics.median(s.sample_s for s in known.values()),
        )
        return {slot: known.get(slot, typical) for slot in members}

    def _fresh(self, members: list[int]) -> tuple[dict[int, int], str]:
        speeds = self._speeds(members)
        if speeds is None:
            why = "equal policy" if self.policy == "equal" else "no measurements yet, equal split"
            return split_equal(members, self.global_batch), why
        source = {"proportional": "profiles", "dynamic": "measured speeds"}.get(
            self.policy, "profiles and measured speeds"
        )
        return solve(speeds, self.global_batch), f"solved from {source}"

    def _apply(self, step: int, shares: dict[int, int], reason: str) -> Decision:
        self.allocation = dict(shares)
        speeds = self._speeds(sorted(shares))
        predicted = predicted_step_time(shares, speeds) if speeds else None
        return Decision(step=step, allocation=dict(shares), reason=reason, predicted_step_s=predicted)

    def state_dict(self) -> dict:
        return {
            "allocation": {str(k): v for k, v in self.allocation.items()},
            "profiles": {str(k): [v.overhead_s, v.sample_s] for k, v in self.profiles.items()},
            "estimator": self.estimator.state_dict(),
            "rebalances": self.rebalances,
            "since_rebalance": self._since_rebalance,
        }

    def load_state_dict(self, state: dict) -> None:
        self.allocation = {int(k): int(v) for k, v in state["allocation"].items()}
        self.profiles = {int(k): Speed(float(a), float(c)) for k, (a, c) in state["profiles"].items()}
        self.estimator.load_state_dict(state["estimator"])
        self.rebalances = int(state["rebalances"])
        self._since_rebalance = int(state["since_rebalance"])
