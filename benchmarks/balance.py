"""Throughput of the allocation policies against the measured ideal.

Goal (issue 2): ``dynamic`` with no speed hints reaches >= 0.95 of ideal on speeds
1,0.5,0.25 and >= 0.90 on other mixes and on 4-6 nodes; ``equal`` is reported beside it.
Run: ``.venv/bin/python benchmarks/balance.py [--quick]``; prints JSON rows.
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


def main() -> None:
    quick = "--quick" in sys.argv
    steps = 15 if quick else 40
    rows = []
    for speeds in MIXES[:2] if quick else MIXES:
        j = job(steps=steps, global_batch=512, emulated_sample_s=2e-3, rebalance_interval=5)
        ideal_sps = ideal(j, speeds)
        row = {"speeds": speeds, "ideal_samples_per_s": round(ideal_sps, 1)}
        for policy in ("dynamic", "equal"):
            r = run(j, speeds, policy, ideal_sps)
            row[policy] = {"samples_per_s": r["samples_per_s"], "efficiency": r["efficiency"],
                           "allocation": r["allocation"], "rebalances": r["rebalances"]}
        rows.append(row)
        print(f"{speeds}: dynamic {row['dynamic']['efficiency']:.3f}  equal {row['equal']['efficiency']:.3f}",
              file=sys.stderr)
    emit("balance", rows)


if __name__ == "__main__":
    main()
