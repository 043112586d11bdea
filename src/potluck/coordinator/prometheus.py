"""The cluster in the Prometheus text exposition format (version 0.0.4), for ``GET /metrics``.

Built from plain data (:class:`NodeView`, :class:`JobView`, filled by the coordinator from
what it already keeps in memory), so the text is testable without a server. Conventions:
names ``potluck_*`` in base units (seconds, bytes, ratios 0-1, never percent), counters end
in ``_total``, labels only ``node``, ``job_id``, ``gpu`` and ``state`` (``job`` and
``instance`` are the labels Prometheus gives the scrape target itself). A value that is not
known is left out, never written as NaN; every family has ``# HELP`` and ``# TYPE`` even
when it has no sample yet. docs/metrics.md lists the families.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from potluck.contracts.wire import JobProgress, NodeTelemetry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABEL_NAMES = frozenset({"node", "job_id", "gpu", "state"})
NODE_STATES = ("alive", "lost", "left")

FAMILIES: dict[str, tuple[str, str]] = {
    "potluck_nodes": ("gauge", "Nodes of the cluster, by state."),
    "potluck_node_up": ("gauge", "1 if the node is alive (heartbeating, or its replica still "
                        "commits steps), else 0."),
    "potluck_node_heartbeat_age_seconds": ("gauge", "Seconds since the node's last heartbeat."),
    "potluck_node_compute_samples_per_second": (
        "gauge", "Measured compute speed of the node's replica (samples per second of forward "
        "and backward, smoothed)."),
    "potluck_node_cpu_utilization_ratio": ("gauge", "CPU use of the whole machine, all cores "
                                           "together (0-1)."),
    "potluck_node_memory_used_bytes": ("gauge", "RAM in use (total minus available)."),
    "potluck_node_memory_total_bytes": ("gauge", "RAM of the machine."),
    "potluck_gpu_utilization_ratio": ("gauge", "Fraction of time the GPU was busy (0-1)."),
    "potluck_gpu_memory_used_bytes": ("gauge", "GPU memory in use."),
    "potluck_gpu_memory_total_bytes": ("gauge", "GPU memory in all."),
    "potluck_gpu_temperature_celsius": ("gauge", "GPU temperature."),
    "potluck_gpu_power_watts": ("gauge", "GPU power draw."),
    "potluck_job_step": ("gauge", "Last committed step of the job (the data position; it goes "
                         "back only when training restarts)."),
    "potluck_job_samples_per_second": ("gauge", "Samples per second of the whole cluster on "
                                       "the job (median over recent committed steps)."),
    "potluck_job_loss": ("gauge", "Training loss of the last committed step, over the whole "
                         "global batch."),
    "potluck_job_committed_steps_total": ("counter", "Steps the job committed, steps trained "
                                          "again after a restart included."),
    "potluck_job_restarts_total": ("counter", "Times the job started over because every "
                                   "replica was lost at once."),
    "potluck_node_share_ratio": ("gauge", "The node's fraction of the global batch in the "
                                 "job's latest allocation (0-1)."),
    "potluck_node_samples_per_second": ("gauge", "The node's part of the job's samples per "
                                        "second (its share times the job's rate)."),
    "potluck_node_samples_total": ("counter", "Samples the node computed in the job's "
                                   "committed steps (since the host started)."),
}
"""Every family ``/metrics`` exposes: name -> (type, help)."""


@dataclass(frozen=True, kw_only=True)
class NodeView:
    """One node as ``/metrics`` shows it."""

    name: str
    state: str
    """alive, lost or left."""
    heartbeat_age_s: float
    compute_samples_per_s: float | None = None
    resources: NodeTelemetry | None = None
    """The latest heartbeat's figures; shown only while the node is alive (a lost node's last
    reading is history, not a measurement)."""


@dataclass(frozen=True, kw_only=True)
class JobView:
    """One queued or running job as ``/metrics`` shows it."""

    job_id: int
    progress: JobProgress
    node_samples: dict[str, int] = field(default_factory=dict)
    """Node name -> samples it computed in committed steps."""


def escape_label_value(value: str) -> str:
    r"""A label value as the format wants it: ``\`` -> ``\\``, ``"`` -> ``\"``, newline -> ``\n``."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str | None:
    """The sample value as text; None for a value that must be left out (NaN, infinite)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    return repr(value) if math.isfinite(value) else None


class Family:
    """One metric family's sample lines, in the order they were added."""

    __slots__ = ("name", "kind", "help", "lines")

    def __init__(self, name: str) -> None:
        self.name = name
        self.kind, self.help = FAMILIES[name]
        self.lines: list[str] = []

    def add(self, labels: str, value: float | None) -> None:
        """Add a sample; ``labels`` is rendered (``node="a",gpu="0"``, values escaped) or empty.
        An unknown (None) or non-finite value is left out."""
        if value is None:
            return
        text = format_value(value)
        if text is not None:
            self.lines.append(f"{self.name}{{{labels}}} {text}\n" if labels
                              else f"{self.name} {text}\n")


def render(families: Iterable[Family]) -> str:
    """The exposition text: per family ``# HELP``, ``# TYPE``, then its samples."""
    parts = []
    for family in families:
        parts.append(f"# HELP {family.name} {_escape_help(family.help)}\n"
                     f"# TYPE {family.name} {family.kind}\n")
        parts.extend(family.lines)
    return "".join(parts)


def _ratio(percent: float | None) -> float | None:
    return percent / 100 if percent is not None else None


def committed_steps(progress: JobProgress) -> int:
    """Steps a job committed so far, restarts included: the step counter moves by one per
    commit and a restart sets it back by ``steps_lost - 1`` (the restart's own step is a
    commit too), so the sum only grows. Zero before the first commit (no participants yet)."""
    if progress.participants is None:
        return 0
    return progress.step + 1 + progress.steps_lost


def cluster_families(nodes: Iterable[NodeView], jobs: Iterable[JobView]) -> list[Family]:
    """Every family of :data:`FAMILIES`, filled from the nodes and jobs given."""
    f = {name: Family(name) for name in FAMILIES}
    states = dict.fromkeys(NODE_STATES, 0)
    for node in nodes:
        states[node.state] = states.get(node.state, 0) + 1
        n = f'node="{escape_label_value(node.name)}"'
        alive = node.state == "alive"
        f["potluck_node_up"].add(n, 1 if alive else 0)
        f["potluck_node_heartbeat_age_seconds"].add(n, max(0.0, node.heartbeat_age_s))
        if not alive:
            continue
        f["potluck_node_compute_samples_per_second"].add(n, node.compute_samples_per_s)
        res = node.resources
        if res is None:
            continue
        f["potluck_node_cpu_utilization_ratio"].add(n, _ratio(res.cpu_percent))
        f["potluck_node_memory_used_bytes"].add(n, res.memory_used_bytes)
        f["potluck_node_memory_total_bytes"].add(n, res.memory_total_bytes)
        for gpu in res.gpus:
            g = f'{n},gpu="{gpu.index}"'
            f["potluck_gpu_utilization_ratio"].add(g, _ratio(gpu.utilization_percent))
            f["potluck_gpu_memory_used_bytes"].add(g, gpu.memory_used_bytes)
            f["potluck_gpu_memory_total_bytes"].add(g, gpu.memory_total_bytes)
            f["potluck_gpu_temperature_celsius"].add(g, gpu.temperature_c)
            f["potluck_gpu_power_watts"].add(g, gpu.power_w)
    for state, count in states.items():
        f["potluck_nodes"].add(f'state="{escape_label_value(state)}"', count)
    for job in jobs:
        p = job.progress
        j = f'job_id="{job.job_id}"'
        f["potluck_job_step"].add(j, p.step if p.participants is not None else None)
        f["potluck_job_samples_per_second"].add(j, p.samples_per_s)
        f["potluck_job_loss"].add(j, p.loss)
        f["potluck_job_committed_steps_total"].add(j, committed_steps(p))
        f["potluck_job_restarts_total"].add(j, p.restarts)
        for name, share in p.shares.items():
            nj = f'node="{escape_label_value(name)}",{j}'
            f["potluck_node_share_ratio"].add(nj, share)
            if p.samples_per_s is not None:
                f["potluck_node_samples_per_second"].add(nj, share * p.samples_per_s)
        for name, samples in job.node_samples.items():
            f["potluck_node_samples_total"].add(f'node="{escape_label_value(name)}",{j}', samples)
    return list(f.values())
