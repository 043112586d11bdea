"""Shared helpers for the benchmarks: run a local cluster quietly and summarise it."""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from potluck.demo.runner import DemoConfig, measure_solo, run_policy
from potluck.trainer.spec import JobConfig


def machine() -> str:
    import os

    return f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def ideal(job: JobConfig, speeds: list[float]) -> float:
    """Sum of each speed's measured solo throughput (each speed measured once)."""
    solo = {s: measure_solo(job, s) for s in sorted(set(speeds))}
    return sum(solo[s] for s in speeds)


def run(job: JobConfig, speeds: list[float], policy: str, ideal_sps: float) -> dict[str, Any]:
    cfg = DemoConfig(job=job, speeds=speeds)
    with tempfile.TemporaryDirectory() as tmp:
        return run_policy(cfg, policy, Path(tmp) / policy, None, ideal_sps)


def emit(name: str, rows: list[dict[str, Any]]) -> None:
    out = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "rows": rows}
    print(json.dumps(out, indent=1))


def job(**kw: Any) -> JobConfig:
    return replace(JobConfig(), **kw).validate()
