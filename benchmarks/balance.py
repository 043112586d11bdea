"""Throughput of the allocation policies against the measured ideal.

Goal (issue 2): ``dynamic`` with no speed hints reaches >= 0.95 of ideal on speeds
1,0.5,0.25 and >= 0.90 on other mixes and on 4-6 nodes; ``equal`` is reported beside it.
Run: ``.venv/bin/python benchmarks/balance.py [--quick | --first]``; prints JSON rows.
"""

from __future__ import annotations

import sys

from _harness import emit, ideal, job, run

MIXES = [
    [1.0, 0.5, 0.25],
    [1.0, 1.0, 0.5],
    [1.0, 0.3],
    [1.0, 0.5, 0.5, 0.25],
    [1.0, 0.8, 0.6, 0.4, 0.3],
    [1.0, 0.9, 0.7, 0.5, 0.35, 0.2],
]


# Steps per policy: equal's efficiency is flat from the first step, dynamic's includes its
# one equal-split first step (nothing is measured before it), amortised over the run.
STEPS = {"dynamic": 60, "equal": 20}
GLOBAL_BATCH, SAMPLE_S = 1024, 2e-3


def main() -> None:
    quick = "--quick" in sys.argv
    first = "--first" in sys.argv  # only speeds 1, 0.5, 0.25, full length
    rows = []
    for speeds in MIXES[:2] if quick else MIXES[:1] if first else MIXES:
        base = job(global_batch=GLOBAL_BATCH, emulated_sample_s=SAMPLE_S, rebalance_interval=5)
        ideal_sps = ideal(base, speeds)
        row = {"speeds": speeds, "global_batch": GLOBAL_BATCH, "ideal_samples_per_s": round(ideal_sps, 1)}
        for policy in ("dynamic", "equal"):
            steps = 10 if quick else STEPS[policy]
            r = run(base.updated({"steps": steps}), speeds, policy, ideal_sps)
            row[policy] = {"steps": steps, "samples_per_s": r["samples_per_s"], "efficiency": r["efficiency"],
                           "allocation": r["allocation"], "rebalances": r["rebalances"]}
        rows.append(row)
        print(f"{speeds}: dynamic {row['dynamic']['efficiency']:.3f}  equal {row['equal']['efficiency']:.3f}",
              file=sys.stderr)
    emit("balance", rows)


if __name__ == "__main__":
    main()
