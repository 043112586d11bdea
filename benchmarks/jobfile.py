"""Job files: cost against the built-in path, heterogeneity, data prefetch, checkpoint stall.

Goals (the job-files issue):
- the job-file path costs under 2% throughput against the built-in path on the same model;
- a job-file char-GPT on speeds 1, 0.5, 0.25 reaches >= 0.93 of the measured ideal with
  ``dynamic`` (``equal`` reported beside it);
- with a data set whose ``__getitem__`` costs 1 ms, data waiting stays under 2% of step time;
- a checkpoint of a 10M-parameter model stalls training by under 1% of a 10-minute run.

Run: ``.venv/bin/python benchmarks/jobfile.py [overhead|gpt|data|checkpoint ...] [--steps=N]``;
prints JSON rows (all parts when none is named; ``--steps`` sets the gpt and data runs' length).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _harness import emit, ideal

from potluck.contracts.jobspec import CheckpointSection, JobSpec
from potluck.demo.runner import DemoConfig, run_policy
from potluck.recipes.jobfile import job_defaults

HERE = Path(__file__).parent
GPT = HERE.parent / "tests" / "jobs" / "chargpt.py"
GPT_BATCH = 256  # steps of ~0.3 s: the per-step quorum and commit (~10 ms) are amortised


def job_file(path: Path, **fields: Any) -> JobSpec:
    return JobSpec.parse({**job_defaults(path), "code": {"file": str(path)}, **fields})


def cluster(job: JobSpec, speeds: list[float], policy: str, ideal_sps: float = 0.0) -> tuple[dict, list]:
    """One local-cluster run; its summary and every replica's events."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / policy
        summary = run_policy(DemoConfig(job=job, speeds=speeds), policy, run_dir, None, ideal_sps)
        events = [json.loads(line) for p in (run_dir / "replicas").glob("*.jsonl")
                  for line in p.read_text().splitlines()]
    return summary, events


def overhead(repeats: int = 5) -> dict[str, Any]:
    """Built-in mlp/digits against the same model and data as a job file (a TensorDataset,
    and a per-sample ``__getitem__`` data set), two replicas with emulated 0.2 ms/sample
    compute, alternating runs, median samples/s."""
    import os

    common = {"global_batch": 512, "steps": 30, "policy": "equal", "emulation": {"sample_s": 2e-4}}
    builtin = JobSpec.parse({"model": "mlp", "dataset": "digits", **common})
    mine = job_file(HERE / "jobs" / "mlp_digits.py", **common)
    got: dict[str, list[float]] = {"builtin": [], "jobfile": [], "jobfile_per_sample": []}
    for _ in range(repeats):
        for name, job in (("builtin", builtin), ("jobfile", mine), ("jobfile_per_sample", mine)):
            os.environ["POTLUCK_BENCH_PER_SAMPLE"] = "1" if name == "jobfile_per_sample" else "0"
            got[name].append(cluster(job, [1.0, 1.0], "equal")[0]["samples_per_s"])
    med = {k: statistics.median(v) for k, v in got.items()}
    return {"part": "overhead", "samples_per_s": got, "median": med,
            "jobfile_over_builtin": round(med["jobfile"] / med["builtin"], 4),
            "per_sample_over_builtin": round(med["jobfile_per_sample"] / med["builtin"], 4)}


def gpt(steps: int = 60) -> dict[str, Any]:
    speeds = [1.0, 0.5, 0.25]
    job = job_file(GPT, global_batch=GPT_BATCH, steps=steps, emulation={"sample_s": 2e-3},
                   rebalance_interval=5)
    ideal_sps = ideal(job, speeds)
    row: dict[str, Any] = {"part": "gpt", "speeds": speeds, "global_batch": GPT_BATCH, "steps": steps,
                           "ideal_samples_per_s": round(ideal_sps, 1)}
    for policy in ("dynamic", "equal"):
        summary, _ = cluster(job, speeds, policy, ideal_sps)
        row[policy] = {"samples_per_s": summary["samples_per_s"], "efficiency": summary["efficiency"]}
    return row


def data(steps: int = 40) -> dict[str, Any]:
    """1 ms per sample fetched, 2 ms per sample computed (emulated): with prefetching the next
    share is ready before the step needs it."""
    job = job_file(HERE / "jobs" / "slow_data.py", global_batch=128, steps=steps, lr=0.05,
                   emulation={"sample_s": 2e-3}, policy="equal")
    _, events = cluster(job, [1.0, 1.0], "equal")
    steps_ = [e for e in events if e["type"] == "step" and e["committed"] and e["step"] > 0]
    data_s = sum(e.get("data_s", 0.0) for e in steps_)
    wall = sum(e["quorum_s"] + e.get("data_s", 0.0) + e["compute_s"] + e["allreduce_s"] + e["commit_s"]
               for e in steps_)
    return {"part": "data", "getitem_ms": 1.0, "samples_per_replica_step": 64,
            "data_wait_fraction": round(data_s / wall, 4), "mean_data_wait_ms": round(1e3 * data_s / len(steps_), 3),
            "steps": len(steps_)}


def checkpoint(repeats: int = 5) -> dict[str, Any]:
    """How long training waits for one checkpoint of a 10M-parameter model with AdamW state
    (the snapshot; the file is written on a thread), against a 10-minute run."""
    from potluck.trainer.checkpointing import Checkpointer

    torch.set_num_threads(1)
    model = torch.nn.Sequential(*[torch.nn.Linear(1000, 1000) for _ in range(10)])
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 1000)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        ck = Checkpointer(tmp, CheckpointSection(), lambda e: None,
                          lambda: {"t": 0.0, "replica": "r", "slot": 0, "step": 0})
        stalls, writes = [], []
        for i in range(repeats):
            before = ck.snapshot_s
            t0 = time.perf_counter()
            ck.save(i + 1, state)
            stalls.append(ck.snapshot_s - before)
            ck.join()
            writes.append(time.perf_counter() - t0)
        size = max(p.stat().st_size for p in Path(tmp).glob("step-*"))
    stall = statistics.median(stalls)
    return {"part": "checkpoint", "parameters": params, "file_mb": round(size / 1e6, 1),
            "stall_ms": round(stall * 1e3, 1), "write_s": round(statistics.median(writes), 3),
            "stall_fraction_of_10_min": round(stall / 600, 6)}


PARTS = {"overhead": overhead, "gpt": gpt, "data": data, "checkpoint": checkpoint}


def main() -> None:
    names = [a for a in sys.argv[1:] if a in PARTS] or list(PARTS)
    steps = [int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--steps=")]
    emit("jobfile", [PARTS[n](steps[0]) if steps and n in ("gpt", "data") else PARTS[n]()
                     for n in names])


if __name__ == "__main__":
    main()
