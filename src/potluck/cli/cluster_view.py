"""Rich rendering of cluster state for the CLI: node and job tables, version diffs, ports."""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from rich.table import Table

from potluck.contracts import wire as s
from potluck.contracts.events import SyncPlan


def ago(t: float | None, now: float | None = None) -> str:
    if not t:
        return "-"
    delta = max(0.0, (now or time.time()) - t)
    if delta < 120:
        return f"{delta:.0f}s ago"
    if delta < 7200:
        return f"{delta / 60:.0f}m ago"
    return f"{delta / 3600:.1f}h ago"


def devices(hw: s.Hardware) -> str:
    gpus = ", ".join(f"{g.name} ({g.memory_mb / 1024:.0f} GiB)" for g in hw.gpus)
    return f"{gpus + ' + ' if gpus else ''}{hw.cpu_cores} CPU cores"


STATE_STYLE = {"alive": "green", "lost": "red", "left": "dim", "running": "cyan",
               "succeeded": "green", "failed": "red", "cancelled": "yellow", "queued": "dim"}


def nodes_table(nodes: list[s.NodeInfo]) -> Table:
    table = Table(title="nodes", title_justify="left")
    for col in ("name", "address", "devices", "memory", "measured speed", "state", "last heartbeat"):
        table.add_column(col)
    table.add_column("py/torch/torchft/potluck")
    for n in nodes:
        measured = f"{n.measured_samples_per_s:,.0f} samples/s" if n.measured_samples_per_s else "-"
        if n.speed != 1.0:
            measured += f" (emulated x{n.speed:g})"
        v = n.versions
        table.add_row(
            escape(n.name),
            escape(f"{n.address}" + (f" {n.interface}" if n.interface else "")),
            escape(devices(n.hardware)),
            f"{n.hardware.memory_mb / 1024:.1f} GiB",
            measured,
            f"[{STATE_STYLE.get(n.state, '')}]{n.state}[/]",
            ago(n.last_heartbeat),
            escape(f"{v.python}/{v.torch}/{v.torchft}/{v.potluck}"),
        )
    return table


def jobs_table(jobs: list[s.JobInfo]) -> Table:
    table = Table(title="jobs", title_justify="left")
    for col in ("id", "name", "state", "nodes", "step", "loss", "test acc", "samples/s", "created"):
        table.add_column(col)
    for j in jobs:
        summ = j.summary
        loss = summ.final_loss if summ and summ.final_loss is not None else j.progress.loss
        sps = summ.samples_per_s if summ and summ.samples_per_s is not None else j.progress.samples_per_s
        table.add_row(
            str(j.id),
            escape(j.name),
            f"[{STATE_STYLE.get(j.state, '')}]{j.state}[/]",
            escape(", ".join(sorted({r.node for r in j.replicas})) or "-"),
            str(summ.steps if summ else j.progress.step),
            f"{loss:.4f}" if loss is not None else "-",
            f"{summ.test_accuracy:.3f}" if summ and summ.test_accuracy is not None else "-",
            f"{sps:,.0f}" if sps else "-",
            ago(j.created_at),
        )
    return table


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _seconds(x: float) -> str:
    if x < 0.1:
        return f"{x * 1e3:.0f} ms"
    return f"{x:.1f} s" if x < 10 else f"{x:.0f} s"


def sync_text(sync: s.SyncStats) -> str:
    """One line: the plan and what it measured, e.g. ``diloco int8 (auto), 27 s phases,
    5.2 MB/phase, 2.3 s/phase, computing 84% (predicted 85%)``."""
    plan = sync.plan
    per = "phase" if plan is not None and plan.strategy == "diloco" else "step"
    parts = []
    if plan is not None:
        parts.append(f"{plan.strategy} {plan.wire}" + (" (auto)" if plan.chosen_by == "auto" else ""))
        if plan.phase_s:
            parts.append(f"{_seconds(plan.phase_s)} phases")
    if sync.sync_bytes is not None:
        parts.append(f"{_size(sync.sync_bytes)}/{per}")
    if sync.sync_s is not None:
        parts.append(f"{_seconds(sync.sync_s)}/{per}")
    if sync.compute_fraction is not None:
        parts.append(f"computing {sync.compute_fraction:.0%}" + (
            f" (predicted {plan.predicted_fraction:.0%})" if plan is not None else ""))
    return ", ".join(parts) or "-"


def timeouts_text(plan: SyncPlan) -> str:
    return (f"collective {_seconds(plan.collective_timeout_s)}, quorum "
            f"{_seconds(plan.quorum_timeout_s)} (from a predicted {_seconds(plan.predicted_sync_s)} sync)")


def sync_rows(sync: s.SyncStats | None) -> list[tuple[str, str]]:
    """The summary's sync rows: the plan and its measurements, the timeouts, the samples."""
    if sync is None:
        return [("sync", "-")]
    rows = [("sync", sync_text(sync))]
    if sync.plan is not None:
        rows.append(("sync timeouts", timeouts_text(sync.plan)))
    if sync.samples:
        rows.append(("samples per node", ", ".join(f"{name} {n:,}" for name, n in sorted(sync.samples.items()))))
    return rows


def summary_table(summary: s.JobSummary) -> Table:
    table = Table(title=f"job {summary.job_id}: {summary.state}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    rows: list[tuple[str, Any]] = [
        ("nodes", ", ".join(summary.nodes)),
        ("steps", summary.steps),
        ("samples/s", f"{summary.samples_per_s:,.0f}" if summary.samples_per_s else "-"),
        ("compute fraction", f"{summary.compute_fraction:.0%}" if summary.compute_fraction is not None else "-"),
        *sync_rows(summary.sync),
        ("final loss", f"{summary.final_loss:.4f}" if summary.final_loss is not None else "-"),
        ("test accuracy", f"{summary.test_accuracy:.3f}" if summary.test_accuracy is not None else "-"),
        ("results", summary.run_dir),
    ]
    if summary.model:
        rows.append(("trained model", f"on the host: `potluck pull {summary.job_id}`"))
    if summary.checkpoint_step is not None:
        rows.append(("last checkpoint", f"after step {summary.checkpoint_step} "
                     f"(`potluck train --resume {summary.job_id}` continues from it)"))
    if summary.restarts:
        rows.insert(2, ("restarted", f"{summary.restarts}x after every replica was lost "
                        f"({summary.steps_lost} committed steps trained again)"))
    for what, value in rows:
        table.add_row(what, escape(str(value)))
    return table


def versions_table(diffs: list[dict[str, str]]) -> Table:
    table = Table(title="versions differ from the host", title_justify="left")
    for col in ("component", "host", "this node", "fix"):
        table.add_column(col)
    for d in diffs:
        table.add_row(escape(d["component"]), escape(d["host"]), f"[red]{escape(d['node'])}[/]",
                      escape(d["fix"]))
    return table


def ports_rows(port: int, lighthouse_port: int, ephemeral: str) -> list[dict[str, str]]:
    return [
        {"port": str(port), "proto": "tcp", "where": "host", "what": "coordinator API (agents, CLI)"},
        {"port": str(lighthouse_port), "proto": "tcp", "where": "host", "what": "torchft Lighthouse (replicas)"},
        {"port": ephemeral, "proto": "tcp", "where": "every node",
         "what": "replicas: torchft manager, TCPStore, gloo/NCCL peers, checkpoint transfer"},
    ]


def ports_table(rows: list[dict[str, str]]) -> Table:
    table = Table(title="ports to allow between cluster members", title_justify="left")
    for col in ("port", "proto", "where", "what"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["port"], r["proto"], r["where"], r["what"])
    return table


def progress_text(job: s.JobInfo) -> str:
    p = job.progress
    parts = [f"job {job.id} {job.state}"]
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.samples_per_s:
        parts.append(f"{p.samples_per_s:,.0f} samples/s")
    if p.shares:
        parts.append(" ".join(f"{name} {share:.0%}" for name, share in sorted(p.shares.items())))
    return escape(" | ".join(parts))


def job_status_text(job: s.JobInfo) -> str:
    """A running job for ``potluck status``: its progress and, once measured, how it syncs."""
    sync = job.progress.sync
    return progress_text(job) + (escape(f"\n  sync: {sync_text(sync)}") if sync else "")
