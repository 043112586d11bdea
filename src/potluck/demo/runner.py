"""The demo: calibrate, measure each emulated device alone, train on a local cluster, report.

``ideal_samples_per_s`` is measured, not assumed: each speed trains alone on full global
batches for a few steps and the throughputs are summed. ``efficiency`` is the cluster's
samples/s over that sum.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from potluck.contracts.errors import ConfigError, ExperimentDirError, TrainingError
from potluck.contracts.jobspec import JobSpec
from potluck.launcher import LocalCluster
from potluck.profiler import profile_device
from potluck.recipes import check_spec
from potluck.trainer.core import build_training, gradient_step, train_reference
from potluck.trainer.emulation import Emulator, calibrate
from potluck.trainer.sinks import JsonlTail, read_jsonl

DEFAULT_SPEEDS = (1.0, 0.5, 0.25)
# The emulated speed-1.0 device takes at least this long per sample, so that padding, not
# the real (contended) compute, sets each replica's pace on a 2-core machine.
MIN_EMULATED_SAMPLE_S = 1e-3
SOLO_STEPS = 3


@dataclass(kw_only=True)
class DemoConfig:
    """Everything ``potluck demo`` needs; ``validate`` checks it before anything is written."""

    job: JobSpec = field(default_factory=lambda: JobSpec(steps=60))
    speeds: list[float] = field(default_factory=lambda: list(DEFAULT_SPEEDS))
    """Emulated speed of each node (its length is the node count)."""
    compare: bool = False
    """Also run the equal policy and report both."""
    experiments_dir: Path = Path("experiments")
    name: str | None = None
    """Run name; default demo-<policy>-<time>."""
    save_model: str | None = None
    """Where to torch.save the final state_dict."""
    emulated_sample_ms: float | None = None
    """Per-sample time of the speed-1.0 emulated device; default: measured, at least 1 ms."""

    def validate(self) -> DemoConfig:
        check_spec(self.job)
        if not self.speeds:
            raise ConfigError("--speeds is empty: give one speed per node, e.g. --speeds 1,0.5,0.25")
        for s in self.speeds:
            if not (s > 0 and math.isfinite(s)):
                raise ConfigError(f"speed {s} is not allowed: every speed must be > 0 (1.0 = full speed)")
        if self.job.global_batch < len(self.speeds):
            raise ConfigError(
                f"--global-batch {self.job.global_batch} is smaller than the node count "
                f"{len(self.speeds)}: use at least one sample per node"
            )
        if len(self.speeds) > self.job.fault.max_replicas:
            raise ConfigError(f"at most {self.job.fault.max_replicas} nodes, got {len(self.speeds)}")
        if self.emulated_sample_ms is not None and not self.emulated_sample_ms > 0:
            raise ConfigError(f"--emulated-sample-ms must be > 0, got {self.emulated_sample_ms}")
        build_training(self.job)  # builds the model and data: a bad size fails here, not later
        if self.save_model:
            parent = Path(self.save_model).expanduser().resolve().parent
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                raise ConfigError(f"--save-model {self.save_model}: folder {parent} is not writable")
        return self


def parse_speeds(text: str | None, nodes: int | None) -> list[float]:
    """``"1,0.5,0.25"`` -> floats; with only ``nodes``, cycle the default speeds."""
    if text is None:
        count = 3 if nodes is None else nodes
        if count < 1:
            raise ConfigError(f"--nodes must be >= 1, got {count}")
        return [DEFAULT_SPEEDS[i % len(DEFAULT_SPEEDS)] for i in range(count)]
    try:
        speeds = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(f"--speeds {text!r} is not a comma list of numbers, e.g. 1,0.5,0.25") from exc
    if nodes is not None and nodes != len(speeds):
        raise ConfigError(f"--nodes {nodes} but --speeds lists {len(speeds)} speeds: give one speed per node")
    return speeds


def prepare_run_dir(root: Path, name: str) -> Path:
    """Create ``root/name``; raise ExperimentDirError (nothing left behind) if not writable."""
    root = root.expanduser()
    created_root = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        run_dir = root / name
        run_dir.mkdir(exist_ok=False)
        (run_dir / ".write-test").write_text("ok")
        (run_dir / ".write-test").unlink()
    except FileExistsError as exc:
        raise ExperimentDirError(f"run {root / name} exists already: pick another --name") from exc
    except OSError as exc:
        if created_root:
            shutil.rmtree(root, ignore_errors=True)
        raise ExperimentDirError(
            f"cannot write the experiments dir {root} ({exc.strerror}): "
            "pass --experiments-dir with a writable folder"
        ) from exc
    return run_dir


def emulated_sample_s(cfg: DemoConfig) -> float:
    if cfg.emulated_sample_ms is not None:
        return cfg.emulated_sample_ms / 1e3
    tr = build_training(cfg.job)
    sample_s, _ = calibrate(gradient_step(tr), min(cfg.job.global_batch, tr.train_size))
    cores = os.cpu_count() or 1
    return max(MIN_EMULATED_SAMPLE_S, 8 * sample_s * len(cfg.speeds) / cores)


def measure_solo(job: JobSpec, speed: float) -> float:
    """Samples/s of one emulated device of ``speed`` training alone on full global batches,
    measured as a replica runs: one torch thread (replicas of emulated devices use one) and
    from the first step on, after a warm-up step (the cluster's rate excludes start-up)."""
    emu = Emulator(speed, job.emulation.sample_s, job.emulation.overhead_s)
    solo = job.updated({"steps": SOLO_STEPS + 1})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, samples_per_s = train_reference(solo, SOLO_STEPS, emulator=emu, warmup=1)
    finally:
        torch.set_num_threads(threads)
    return samples_per_s


def profile_nodes(job: JobSpec, speeds: list[float]) -> dict[str, list[float]]:
    """Each node's ``[overhead_s, sample_s]`` measured by the profiler on its emulated device."""
    sizes = [max(1, job.global_batch // (8 * len(speeds))), max(2, job.global_batch // (2 * len(speeds)))]
    fitted: dict[float, list[float]] = {}
    for speed in sorted(set(speeds)):
        emulator = Emulator(speed, job.emulation.sample_s, job.emulation.overhead_s)
        prof = profile_device(model=job.model.name, dataset=job.data.name, device="cpu",
                              batch_sizes=sizes, repeats=5, emulator=emulator, job=job)
        fitted[speed] = [prof.overhead_s, prof.sample_s]
    return {str(i): fitted[s] for i, s in enumerate(speeds)}


class _Display:
    """Live view: one progress bar and a per-node table fed by the replicas' metrics files."""

    def __init__(self, cluster: LocalCluster, total: int, policy: str) -> None:
        self.cluster = cluster
        self.total = total
        self.rows: dict[int, dict[str, Any]] = {}
        self.loss = float("nan")
        self.done_steps = 0
        self.started: float | None = None  # the first step's start: startup is not training
        self.last_t = 0.0
        self.progress = Progress(
            TextColumn(f"[bold]{policy}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[sps]} samples/s"),
            TimeElapsedColumn(),
        )
        self.task = self.progress.add_task("train", total=total, loss="-", sps="-")
        paths = [cluster.run_dir / "replicas" / f"{cluster.name(s)}.jsonl" for s in range(len(cluster.speeds))]
        self.tail = JsonlTail(paths)

    def update(self) -> None:
        for rec in self.tail.poll():
            if rec.get("type") != "step" or not rec.get("committed"):
                continue
            self.done_steps = max(self.done_steps, rec["step"] + 1)
            self.loss = rec["loss"]
            step_s = rec["quorum_s"] + rec["compute_s"] + rec["allreduce_s"] + rec["commit_s"]
            if self.started is None:
                self.started = rec["t"] - step_s
            self.last_t = max(self.last_t, rec["t"])
            self.rows[rec["slot"]] = {"share": rec["local_batch"], "sps": rec["local_batch"] / max(step_s, 1e-9),
                                      "wait": rec["wait_s"]}
        sps = "-"
        if self.started is not None:
            elapsed = max(self.last_t - self.started, 1e-9)
            sps = f"{self.done_steps * self.cluster.job.global_batch / elapsed:.0f}"
        self.progress.update(self.task, completed=self.done_steps, loss=f"{self.loss:.3f}", sps=sps)

    def render(self) -> Group:
        table = Table(box=None, pad_edge=False)
        for col in ("node", "speed", "share", "samples/s", "waiting"):
            table.add_column(col, justify="right" if col != "node" else "left")
        for slot, speed in enumerate(self.cluster.speeds):
            row = self.rows.get(slot)
            if row is None:
                table.add_row(self.cluster.name(slot), f"{speed:g}", "-", "-", "-")
            else:
                table.add_row(self.cluster.name(slot), f"{speed:g}", str(row["share"]),
                              f"{row['sps']:.0f}", f"{row['wait'] * 1e3:.0f} ms")
        return Group(self.progress, table)


def run_policy(cfg: DemoConfig, policy: str, run_dir: Path, console: Console | None,
               ideal: float, *, save_model: str | None = None) -> dict[str, Any]:
    """Train ``cfg`` under ``policy`` on a local cluster; returns the summary dict."""
    job = cfg.job.updated({"balancer.policy": policy})
    if policy in ("proportional", "hybrid"):
        job = job.updated({"balancer.profiles": profile_nodes(job, cfg.speeds)})
    total = build_training(job).total_steps
    cluster = LocalCluster(job, cfg.speeds, run_dir, save_model=save_model)
    with cluster:
        if console is not None:
            display = _Display(cluster, total, policy)
            with Live(display.render(), console=console, refresh_per_second=4, transient=False) as live:
                while any(p.poll() is None for p in cluster.procs.values()):
                    display.update()
                    live.update(display.render())
                    time.sleep(0.25)
                display.update()
                live.update(display.render())
            console.print()
        codes = cluster.wait(timeout=max(600.0, total * 30.0))
    failed = {s: c for s, c in codes.items() if c != 0}
    if failed:
        slot = min(failed)
        raise TrainingError(
            f"replica {cluster.name(slot)} exited with code {failed[slot]}: "
            f"see {run_dir}/replicas/{cluster.name(slot)}.log"
        )
    return summarize(run_dir, job, cfg.speeds, ideal)


def summarize(run_dir: Path, job: JobSpec, speeds: list[float], ideal: float) -> dict[str, Any]:
    summaries = [read_jsonl(p)[-1] for p in sorted((run_dir / "replicas").glob("*.jsonl"))]
    summaries = [s for s in summaries if s.get("type") == "done"]
    if not summaries:
        raise TrainingError(f"no replica finished; see {run_dir}/replicas/*.log")
    first = min(summaries, key=lambda s: s["slot"])
    steps = max(s["final_step"] for s in summaries) + 1
    wall = max(s["ended_at"] for s in summaries) - min(s["started_at"] for s in summaries)
    sps = steps * job.global_batch / max(wall, 1e-9)
    decisions = read_jsonl(run_dir / "allocation.jsonl")
    return {
        "policy": job.balancer.policy,
        "nodes": len(speeds),
        "speeds": speeds,
        "steps": steps,
        "global_batch": job.global_batch,
        "samples_per_s": round(sps, 2),
        "ideal_samples_per_s": round(ideal, 2),
        "efficiency": round(sps / ideal, 4) if ideal > 0 else None,
        "final_loss": first.get("final_loss"),
        "test_accuracy": first.get("test_accuracy"),
        "allocation": first["allocation"],
        "rebalances": first["rebalances"],
        "allocation_changes": len(decisions),
        "wall_s": round(wall, 3),
        "run_dir": str(run_dir),
    }


def run_demo(cfg: DemoConfig, console: Console | None) -> dict[str, Any]:
    """The whole demo; ``console`` None means no live output (``--json``)."""
    cfg.validate()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.name or f"demo-{cfg.job.balancer.policy}-{stamp}"
    run_dir = prepare_run_dir(cfg.experiments_dir, name)
    sample_s = emulated_sample_s(cfg)
    cfg = replace(cfg, job=cfg.job.updated({"emulation.sample_s": sample_s}))
    if console is not None:
        console.print(f"[bold]potluck demo[/]: {len(cfg.speeds)} nodes, speeds {', '.join(f'{s:g}' for s in cfg.speeds)}, "
                      f"global batch {cfg.job.global_batch}, emulated speed-1.0 device {sample_s * 1e3:.2f} ms/sample")
    solo: dict[float, float] = {}
    if console is not None:
        with console.status("measuring each emulated device alone (for the ideal throughput)..."):
            for speed in sorted(set(cfg.speeds)):
                solo[speed] = measure_solo(cfg.job, speed)
    else:
        for speed in sorted(set(cfg.speeds)):
            solo[speed] = measure_solo(cfg.job, speed)
    ideal = sum(solo[s] for s in cfg.speeds)
    result = run_policy(cfg, cfg.job.balancer.policy, run_dir, console, ideal, save_model=cfg.save_model)
    result["solo_samples_per_s"] = {f"{s:g}": round(v, 2) for s, v in solo.items()}
    if cfg.compare and cfg.job.balancer.policy != "equal":
        base_dir = prepare_run_dir(cfg.experiments_dir, f"{name}-equal")
        result["baseline"] = run_policy(cfg, "equal", base_dir, console, ideal)
    return result
