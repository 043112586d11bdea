"""Shared helpers for the benchmarks: run a local cluster quietly and summarise it."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from potluck.contracts.jobspec import JobSpec
from potluck.demo.runner import DemoConfig, measure_solo, run_policy


def machine() -> str:
    import os

    return f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def ideal(job: JobSpec, speeds: list[float]) -> float:
    """Sum of each speed's measured solo throughput (each speed measured once)."""
    solo = {s: measure_solo(job, s) for s in sorted(set(speeds))}
    return sum(solo[s] for s in speeds)


def run(job: JobSpec, speeds: list[float], policy: str, ideal_sps: float) -> dict[str, Any]:
    cfg = DemoConfig(job=job, speeds=speeds)
    with tempfile.TemporaryDirectory() as tmp:
        return run_policy(cfg, policy, Path(tmp) / policy, None, ideal_sps)


def emit(name: str, rows: list[dict[str, Any]]) -> None:
    out = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "rows": rows}
    print(json.dumps(out, indent=1))


def job(*, emulated_sample_s: float = 0.0, **flat: Any) -> JobSpec:
    """A job from flat option names (``steps=40``) plus the emulated per-sample time."""
    return JobSpec().with_options(flat).updated({"emulation.sample_s": emulated_sample_s})
