"""Does the balancer chase noise? Rebalances and mean true step time under timing jitter.

The balancer alone (no processes): each step, every replica's compute time is its true time
``a + c * b`` times a log-normal jitter, sometimes times a 2-5x spike (a loaded 2-core box).
Compares the plain deadband with the noise-aware threshold (``Balancer.threshold``).
``efficiency`` is the best possible step time over the mean true step time of the run.
Run: ``.venv/bin/python benchmarks/rebalance_noise.py``; prints one JSON row per case.
"""

from __future__ import annotations

import json
import random
import statistics

from potluck.balancer.balancer import Balancer

OVERHEAD_S, SAMPLE_S, GLOBAL_BATCH, STEPS, SEEDS = 0.004, 1e-4, 512, 200, 8


def run(seed: int, speeds: tuple[float, ...], noise: float, spike_p: float, plain: bool) -> tuple[int, float]:
    rng = random.Random(seed)
    bal = Balancer(policy="dynamic", global_batch=GLOBAL_BATCH, rebalance_interval=5, deadband=0.05)
    if plain:
        bal.threshold = lambda members: bal.deadband  # type: ignore[method-assign]
    members = list(range(len(speeds)))
    bal.allocation_for(members, 0)
    true_times = []
    for step in range(STEPS):
        measured = {}
        for slot, b in bal.allocation.items():
            t = (OVERHEAD_S + SAMPLE_S * b / speeds[slot]) * rng.lognormvariate(0, noise)
            if rng.random() < spike_p:
                t *= rng.uniform(2, 5)
            measured[slot] = (b, t)
        true_times.append(max(OVERHEAD_S + SAMPLE_S * b / speeds[s] for s, b in bal.allocation.items()))
        bal.observe(step, measured)
    best = OVERHEAD_S + SAMPLE_S * GLOBAL_BATCH / sum(speeds)
    return bal.rebalances, best / statistics.mean(true_times)


def main() -> None:
    for speeds in ((1.0, 1.0, 1.0), (1.0, 0.5, 0.25)):
        for noise, spike_p in ((0.05, 0.0), (0.2, 0.0), (0.2, 0.05), (0.4, 0.1)):
            for plain in (True, False):
                runs = [run(seed, speeds, noise, spike_p, plain) for seed in range(SEEDS)]
                print(json.dumps({
                    "speeds": speeds, "jitter": noise, "spike_p": spike_p,
                    "threshold": "deadband only" if plain else "noise-aware",
                    "rebalances_per_200_steps": round(statistics.mean(r for r, _ in runs), 2),
                    "efficiency": round(statistics.mean(e for _, e in runs), 3),
                }))


if __name__ == "__main__":
    main()
