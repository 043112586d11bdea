"""Per-replica speed estimates ``a_r + c_r * b`` from measured compute times.

Each observation ``(b, t)`` updates exponentially decayed sufficient statistics of a least
squares line (n, Σb, Σt, Σb², Σbt), so estimates follow a device that slows down within a
few rebalance intervals. When the recent batches barely vary, the intercept cannot be told
apart from the slope; then the last known overhead (or the prior) is kept and only the slope
is refitted. The relative residuals of new measurements against the fit give each slot's
noise (:meth:`SpeedEstimator.noise`), which the balancer uses so it does not chase noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from potluck.balancer.policy import Speed

NOISE_DECAY = 0.5
"""Weight of the past in the noise estimate: shorter memory than the fit, so the residuals of
a device that slowed down (large until the fit follows it) leave the estimate within steps."""


@dataclass
class _Stats:
    n: float = 0.0
    sb: float = 0.0
    st: float = 0.0
    sbb: float = 0.0
    sbt: float = 0.0
    overhead_s: float = 0.0
    nr: float = 0.0
    sr: float = 0.0
    srr: float = 0.0
    """Decayed count, sum and sum of squares of relative residuals (measured vs predicted)."""

    def add(self, b: float, t: float, decay: float) -> None:
        before = self.fit()
        if before is not None and before.time(b) > 0:
            rel = (t - before.time(b)) / before.time(b)
            self.nr = self.nr * NOISE_DECAY + 1.0
            self.sr = self.sr * NOISE_DECAY + rel
            self.srr = self.srr * NOISE_DECAY + rel * rel
        self.n = self.n * decay + 1.0
        self.sb = self.sb * decay + b
        self.st = self.st * decay + t
        self.sbb = self.sbb * decay + b * b
        self.sbt = self.sbt * decay + b * t

    def spread(self) -> float:
        """Spread of the relative residuals around their own mean: a device that slowed down
        leaves residuals that are large but alike while the fit catches up, not noise."""
        if self.nr <= 0:
            return 0.0
        mean = self.sr / self.nr
        return max(0.0, self.srr / self.nr - mean * mean) ** 0.5

    def fit(self) -> Speed | None:
        if self.n <= 0 or self.sb <= 0:
            return None
        mean_b, mean_t = self.sb / self.n, self.st / self.n
        var_b = self.sbb / self.n - mean_b * mean_b
        if var_b > (0.1 * mean_b) ** 2:
            slope = (self.sbt / self.n - mean_b * mean_t) / var_b
            intercept = mean_t - slope * mean_b
            if slope > 0 and 0 <= intercept < mean_t:
                self.overhead_s = intercept
                return Speed(intercept, slope)
        overhead = min(self.overhead_s, 0.9 * mean_t)
        return Speed(overhead, max((mean_t - overhead) / mean_b, 1e-9))


class SpeedEstimator:
    """Decayed least-squares speed fits per slot. ``decay`` weights the previous history."""

    def __init__(self, decay: float = 0.8) -> None:
        self.decay = decay
        self._stats: dict[int, _Stats] = {}

    def observe(self, slot: int, b: int, t: float) -> None:
        """Record that ``slot`` computed ``b`` samples in ``t`` seconds (b == 0 is ignored)."""
        if b <= 0 or t <= 0:
            return
        self._stats.setdefault(slot, _Stats()).add(float(b), float(t), self.decay)

    def prime(self, slot: int, prior: Speed) -> None:
        """Seed a slot's overhead from a profile before any measurement."""
        self._stats.setdefault(slot, _Stats()).overhead_s = prior.overhead_s

    def estimate(self, slot: int) -> Speed | None:
        stats = self._stats.get(slot)
        return stats.fit() if stats else None

    def noise(self, slot: int) -> float:
        """Relative spread of ``slot``'s measured times around its fit (0.2: +-20% a step).

        The spread around the residuals' own mean: a device that slowed down leaves residuals
        that are large but alike (a change the fit catches up with), not noise."""
        stats = self._stats.get(slot)
        return stats.spread() if stats else 0.0

    def known(self) -> set[int]:
        return {s for s, st in self._stats.items() if st.n > 0}

    def state_dict(self) -> dict:
        return {"decay": self.decay, "stats": {str(k): asdict(v) for k, v in self._stats.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self._stats = {int(k): _Stats(**v) for k, v in state["stats"].items()}
