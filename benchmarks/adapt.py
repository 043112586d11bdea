"""How fast ``dynamic`` follows a device that slows down mid-run.

Goal (issue 2): after one replica's speed halves mid-run, ``dynamic`` is back within 5% of
the new ideal within 3 rebalance intervals. node0 (speed 1.0) drops to 0.5 at step 20;
per-step throughput is read from the replicas' metrics (interval between commits) and the
new ideal is the sum of measured solo throughputs at the new speeds.
Run: ``.venv/bin/python benchmarks/adapt.py``; prints JSON.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from _harness import emit, ideal, job

from potluck.launcher import LocalCluster

SPEEDS, AFTER, CHANGE_AT, K, STEPS, B = [1.0, 0.5, 0.25], [0.5, 0.5, 0.25], 20, 5, 45, 512


def main() -> None:
    j = job(steps=STEPS, global_batch=B, emulated_sample_s=2e-3, rebalance_interval=K)
    new_ideal = ideal(j, AFTER)
    old_ideal = ideal(j, SPEEDS)
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
        j, SPEEDS, Path(tmp), speed_changes={0: [[CHANGE_AT, 0.5]]}
    ) as cluster:
        assert cluster.wait(900) == {0: 0, 1: 0, 2: 0}
        steps = [r for r in cluster.records(0) if r["type"] == "step" and r["committed"]]
        decisions = [r for r in cluster.records(0) if r["type"] == "allocation"]
    per_step = {b["step"]: B / (b["t"] - a["t"]) for a, b in zip(steps, steps[1:])}
    recovered = next(
        s for s in sorted(per_step)
        if s >= CHANGE_AT and all(per_step[t] >= 0.95 * new_ideal for t in per_step if t >= s)
    )
    before = statistics.median(v for s, v in per_step.items() if 10 <= s < CHANGE_AT)
    after = statistics.median(v for s, v in per_step.items() if s >= recovered)
    row = {
        "speeds": SPEEDS, "after_change": AFTER, "change_at_step": CHANGE_AT, "rebalance_interval": K,
        "old_ideal": round(old_ideal, 1), "new_ideal": round(new_ideal, 1),
        "before_samples_per_s": round(before, 1), "after_samples_per_s": round(after, 1),
        "after_efficiency": round(after / new_ideal, 4),
        "steps_to_recover": recovered - CHANGE_AT,
        "intervals_to_recover": round((recovered - CHANGE_AT) / K, 2),
        "decisions": [{"step": d["step"], "allocation": d["allocation"], "reason": d["reason"]}
                      for d in decisions],
    }
    print(f"recovered within {row['steps_to_recover']} steps ({row['intervals_to_recover']} intervals), "
          f"efficiency after {row['after_efficiency']:.3f}", file=sys.stderr)
    emit("adapt", [row])


if __name__ == "__main__":
    main()
