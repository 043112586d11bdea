"""Slow links: time to a target loss with ``auto`` against exact ``allreduce`` over 20 Mbit/s,
and what ``auto`` costs where the link is fast.

Goals (the slow-link issue): over 20 Mbit/s links, ``auto`` reaches the target loss far sooner
than ``allreduce``, computing most of the time; on an unlimited link ``auto`` keeps
``allreduce`` and is within 3% of its throughput.

Three replicas (speeds 1, 1, 0.5; 6 ms per sample at speed 1, emulated) each in its own network
namespace (potluck.launcher.netns), egress limited by tc tbf; a 5.2M-parameter MLP on the
digits (benchmarks/jobs/wide_mlp.py), global batch 192, SGD lr 0.05 momentum 0.9.

- The loss is the training loss the step events report, sample-weighted over the latest
  committed steps holding at least 5 global batches (allreduce: the last 5 steps; diloco: the
  last phase, the mean over its inner steps). Time runs from the first quorum (startup
  excluded, ``auto``'s link probe included).
- ``allreduce`` over 20 Mbit/s would need many minutes to reach the target, so it runs a few
  steps and is extrapolated: it is exact, so it needs the same number of steps as on the
  unlimited link (measured there), each taking its measured 20 Mbit/s step time.
- The model's limit: what plan.sync_seconds predicts for one sync, and the bare floor (every
  bit at the full 20 Mbit/s, no protocol overhead).

Run as root: ``PYTHONPATH=src .venv/bin/python benchmarks/slow_link.py [fast] [slow]``; prints
JSON (both parts when none is named).
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import emit

from potluck.contracts.jobspec import JobSpec
from potluck.launcher.netns import Namespaces, NetnsCluster, unavailable
from potluck.recipes.models import MLP
from potluck.trainer.plan import Link, sync_seconds

HERE = Path(__file__).parent
SPEEDS = [1.0, 1.0, 0.5]
RATE_MBIT = 20.0
B = 192
SAMPLE_S = 0.006
TARGET = 0.1
WINDOW = 5
"""Global batches the smoothed loss covers."""
SLOW_ALLREDUCE_STEPS = 4


def job(strategy: str, steps: int = 400) -> JobSpec:
    return JobSpec.parse({
        "code": {"file": str(HERE / "jobs" / "wide_mlp.py")}, "global_batch": B, "steps": steps,
        "lr": 0.05, "momentum": 0.9, "emulation": {"sample_s": SAMPLE_S},
        "sync": {"strategy": strategy}, "fault": {"step_timeout_s": 90},
    })


def committed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "step" and e["committed"]]


def samples(step: dict[str, Any]) -> int:
    return sum(step["allocation"].values())


def smoothed_loss(steps: list[dict[str, Any]]) -> float | None:
    """Sample-weighted loss over the latest steps holding at least WINDOW global batches."""
    total = weight = 0.0
    for step in reversed(steps):
        if step.get("loss") is None:
            continue
        total += step["loss"] * samples(step)
        weight += samples(step)
        if weight >= WINDOW * B:
            return total / weight
    return None


def reached(events: list[dict[str, Any]]) -> int | None:
    """Index of the first committed step at which the smoothed loss is at the target."""
    steps = committed(events)
    for i in range(len(steps)):
        loss = smoothed_loss(steps[: i + 1])
        if loss is not None and loss <= TARGET:
            return i
    return None


def run(net: Namespaces, strategy: str, rate: float | None, *, steps: int = 400,
        stop: str = "end", max_s: float = 300) -> dict[int, list[dict[str, Any]]]:
    """Train the job of ``steps`` steps over links of ``rate`` Mbit/s (None: unlimited) until
    ``stop``: ``end`` (the job ends: its test loss is in the done events), ``target`` (the
    target loss) or a number of committed steps; at most ``max_s``. Every replica's events."""
    net.limit(rate)
    with tempfile.TemporaryDirectory() as tmp, \
            NetnsCluster(job(strategy, steps), SPEEDS, Path(tmp), net) as cluster:
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            for slot, proc in cluster.procs.items():
                if proc.poll() not in (None, 0):
                    log = Path(tmp) / "replicas" / f"{cluster.name(slot)}.log"
                    raise SystemExit(f"replica {slot} failed:\n{log.read_text()[-3000:]}")
            events = cluster.records(0)
            if stop == "target" and reached(events) is not None:
                break
            if stop.isdigit() and len(committed(events)) >= int(stop):
                break
            if all(p.poll() is not None for p in cluster.procs.values()):
                break
            time.sleep(0.5)
        else:
            print(f"{strategy} at {rate} Mbit/s: stopped after {max_s:.0f} s", file=sys.stderr)
        return {s: cluster.records(s) for s in range(len(SPEEDS))}


def summary(records: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Time and steps to the target, throughput, compute fraction, the plan's notice."""
    events = records[0]
    start = min(e["t"] for e in events if e["type"] == "membership")
    steps = committed(events)
    hit = reached(events)
    end = steps[hit]["t"] if hit is not None else steps[-1]["t"]
    upto = steps[: (hit if hit is not None else len(steps) - 1) + 1]
    fractions = []
    for slot_events in records.values():
        mine = committed(slot_events)[: len(upto)]
        wall = sum(e["quorum_s"] + e["compute_s"] + e["allreduce_s"] + e["commit_s"] for e in mine)
        fractions.append(sum(e["compute_s"] for e in mine) / wall if wall else 0.0)
    plan = next((e["message"] for e in events if e["type"] == "notice"
                 and e["message"].startswith("sync plan:")), None)
    walls = [e["quorum_s"] + e["compute_s"] + e["allreduce_s"] + e["commit_s"] for e in steps[1:]]
    done = next((e for e in events if e["type"] == "done"), {})
    return {
        "reached_target": hit is not None,
        "seconds_to_target": round(end - start, 1) if hit is not None else None,
        "steps_to_target": hit + 1 if hit is not None else None,
        "smoothed_loss": round(smoothed_loss(upto) or float("nan"), 4),
        "samples": sum(samples(e) for e in upto),
        "samples_per_s": round(sum(samples(e) for e in upto) / max(end - start, 1e-9), 1),
        "compute_fraction": round(statistics.mean(fractions), 3),
        "compute_fraction_per_replica": [round(f, 3) for f in fractions],
        "median_step_s": round(statistics.median(walls), 3) if walls else None,
        "median_compute_s": round(statistics.median(e["compute_s"] for e in steps), 3),
        "plan": plan,
        "test_loss_at_end": round(done["test_loss"], 4) if done.get("test_loss") is not None else None,
        "test_accuracy_at_end": done.get("test_accuracy"),
        "committed_steps": len(steps),
    }


def model_limits(values: int, compute_s: float, steps: int) -> dict[str, Any]:
    n = len(SPEEDS)
    link = Link(RATE_MBIT * 1e6, 0.003)
    t32 = sync_seconds(n, values, "fp32", link)
    floor = 2 * (n - 1) / n * values * 4 * 8 / (RATE_MBIT * 1e6)
    return {
        "values": values,
        "model_sync_s": {w: round(sync_seconds(n, values, w, link), 2) for w in ("fp32", "bf16", "int8")},
        "floor_allreduce_s": round(floor, 2),
        "model_allreduce_compute_fraction": round(compute_s / (compute_s + t32), 3),
        "model_allreduce_seconds_to_target": round(steps * (compute_s + t32), 0),
        "floor_allreduce_seconds_to_target": round(steps * (compute_s + floor), 0),
    }


def fast(net: Namespaces) -> dict[str, Any]:
    """Unlimited links: allreduce to the target (which gives the steps it takes), then
    auto, allreduce, auto on jobs of exactly that many steps (alternating against drift in
    the machine's load); throughput is samples over the time from the first quorum."""
    first = summary(run(net, "allreduce", None, stop="target"))
    steps = first["steps_to_target"]
    runs = {"allreduce": [first], "auto": []}
    for strategy in ("auto", "allreduce", "auto"):
        runs[strategy].append(summary(run(net, strategy, None, steps=steps)))
    rate = {k: statistics.mean(r["samples_per_s"] for r in v) for k, v in runs.items()}
    return {"part": "unlimited link", "steps_to_target": steps, "runs": runs,
            "samples_per_s": {k: round(v, 1) for k, v in rate.items()},
            "auto_throughput_ratio": round(rate["auto"] / rate["allreduce"], 4)}


def slow(net: Namespaces, steps_to_target: int) -> dict[str, Any]:
    """20 Mbit/s links: auto on a job of as many samples as allreduce needed for the target
    (it ends at the phase that completes them), then a few allreduce steps."""
    auto = summary(run(net, "auto", RATE_MBIT, steps=steps_to_target, max_s=480))
    exact = summary(run(net, "allreduce", RATE_MBIT, stop=str(SLOW_ALLREDUCE_STEPS + 1), max_s=240))
    exact["extrapolated_seconds_to_target"] = round(steps_to_target * exact["median_step_s"], 0)
    exact["extrapolated_from"] = (f"{SLOW_ALLREDUCE_STEPS} steps at 20 Mbit/s x {steps_to_target} "
                                  "steps to the target (measured on the unlimited link)")
    values = sum(p.numel() for p in MLP(64, 10, hidden=2240).parameters())  # jobs/wide_mlp.py
    limits = model_limits(values, exact["median_compute_s"], steps_to_target)
    phase = re.search(r"\(int8, (\d+) s phases\)", auto["plan"] or "")
    return {"part": f"{RATE_MBIT:g} Mbit/s links", "auto": auto, "allreduce": exact, "model": limits,
            "auto_phase_s": int(phase.group(1)) if phase else None,
            "speedup_to_target": round(exact["extrapolated_seconds_to_target"] / auto["seconds_to_target"], 1)
            if auto["seconds_to_target"] else None}


def main() -> None:
    reason = unavailable()
    if reason:
        raise SystemExit(reason)
    parts = sys.argv[1:] or ["fast", "slow"]
    rows = []
    with Namespaces(len(SPEEDS)) as net:
        row = fast(net)  # the slow part needs its steps to the target
        if "fast" in parts:
            rows.append(row)
        print(f"unlimited: auto/allreduce throughput {row['auto_throughput_ratio']}", file=sys.stderr)
        if "slow" in parts:
            slow_row = slow(net, row["steps_to_target"])
            rows.append(slow_row)
            print(f"20 Mbit/s: auto {slow_row['auto']['seconds_to_target']} s, allreduce ~"
                  f"{slow_row['allreduce']['extrapolated_seconds_to_target']} s", file=sys.stderr)
    emit("slow_link", rows)


if __name__ == "__main__":
    main()
