"""What the web dashboard reads: one snapshot of the cluster, a job's detail, a log line.

The host builds these (``potluck.dashboard``) and serves them as JSON to the page
(``GET /api/v1/dashboard``, ``.../jobs/{id}``) and in its server-sent events
(``.../stream``); ``potluck report`` embeds a :class:`JobDetail` in its HTML file. Strict like
every message (:class:`~potluck.contracts.wire.Strict`). Series are columnar (one list per
quantity, aligned on ``t``) and bounded (``MAX_POINTS``), so a snapshot stays small however
long a job runs. docs/dashboard.md shows where each field appears.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from potluck.contracts.wire import (
    Gpu,
    JobState,
    JobSummary,
    LinkFact,
    NodeState,
    NodeTelemetry,
    Strict,
    Versions,
)

MAX_POINTS = 240
"""Most points of a time series: older buckets are merged two by two past this."""

MarkerKind = Literal["join", "leave", "lost", "back", "rebalance", "start", "restart", "end"]
NetworkKind = Literal["LAN", "VPN", "loopback", "link-local", "public"]


class NodeRow(Strict):
    """One machine as the Cluster view shows it."""

    id: int
    name: str
    slot: int
    state: NodeState
    address: str
    interface: str | None
    network: NetworkKind | None
    """What kind of network ``address`` is on (None: the address could not be read)."""
    os: str | None
    cpu_cores: int
    memory_mb: int
    gpus: list[Gpu]
    speed: float
    """Emulated speed factor (1: the machine's real speed)."""
    versions: Versions
    version_mismatch: list[str]
    """Components whose version differs from the host's (empty: all the same)."""
    heartbeat_age_s: float
    late: bool
    """The last heartbeat is older than the host's node timeout."""
    measured_samples_per_s: float | None
    """Measured compute speed of its replica (forward + backward, smoothed)."""
    share: float | None
    """Fraction of the global batch in the running job's latest allocation."""
    samples: int | None
    """Samples it computed in the running job's committed steps."""
    samples_fraction: float | None
    """Its fraction of every sample the running job computed so far."""
    telemetry: NodeTelemetry | None
    """The latest heartbeat's CPU, RAM and GPU figures (alive nodes only)."""


class Series(Strict):
    """A job's numbers over time, in buckets of equal duration that hold a committed step
    (columnar, aligned on ``t``)."""

    t: list[float] = Field(default_factory=list)
    """Bucket time (unix seconds, the replicas' clocks)."""
    step: list[int] = Field(default_factory=list)
    """Last committed step in the bucket."""
    samples_per_s: list[float | None] = Field(default_factory=list)
    """The cluster's samples/s."""
    loss: list[float | None] = Field(default_factory=list)
    node_samples_per_s: dict[str, list[float | None]] = Field(default_factory=dict)
    """Node name -> its part of the cluster's samples/s (share x rate)."""
    node_share: dict[str, list[float | None]] = Field(default_factory=dict)
    """Node name -> its fraction of the global batch."""


class StepTimes(Strict):
    """Where a node's step time went, mean seconds over its recent committed steps."""

    node: str
    steps: int
    """Committed steps the means are over."""
    compute_s: float
    comm_s: float
    """All-reduce time that is communication proper."""
    wait_s: float
    """Time spent waiting for the slowest member to finish computing."""
    other_s: float
    """Quorum, commit vote and waiting for data."""


class Marker(Strict):
    """Something that happened to a job, drawn on its charts."""

    id: int
    """The log line's id."""
    t: float
    kind: MarkerKind
    label: str


class LogLine(Strict):
    """One line of the cluster's event log."""

    id: int
    t: float
    kind: str
    message: str
    node: str | None = None
    job_id: int | None = None


class JobDetail(Strict):
    """A job with its live figures, charts and events (the Job view, a History entry)."""

    id: int
    name: str
    state: JobState
    model: str
    """``model/data`` of the job."""
    global_batch: int
    policy: str
    sync: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    message: str | None
    step: int | None
    """Last committed step (None before the first)."""
    total_steps: int | None
    """Steps the job trains (None when it is given in epochs)."""
    eta_s: float | None
    loss: float | None
    samples_per_s: float | None
    participants: int | None
    efficiency: float | None
    """Cluster samples/s over the sum of the members' measured compute speeds (running jobs)."""
    compute_fraction: float | None
    """Fraction of replica step time spent computing (the rest: communication, waiting)."""
    restarts: int = 0
    shares: dict[str, float] = Field(default_factory=dict)
    node_samples: dict[str, int] = Field(default_factory=dict)
    """Samples each node computed in committed steps."""
    series: Series = Field(default_factory=Series)
    stragglers: list[StepTimes] = Field(default_factory=list)
    markers: list[Marker] = Field(default_factory=list)
    events: list[LogLine] = Field(default_factory=list)
    """The job's latest log lines, oldest first."""
    summary: JobSummary | None = None


class JobBrief(Strict):
    """A job in the History list."""

    id: int
    name: str
    state: JobState
    model: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    message: str | None
    step: int | None
    summary: JobSummary | None


class HostView(Strict):
    advertise: str
    port: int
    versions: Versions
    node_timeout_s: float


class Snapshot(Strict):
    """Everything the dashboard shows, at ``time`` (the host's clock)."""

    time: float
    host: HostView
    storage_problem: str | None
    """Why the host's database cannot be written now (None: it can)."""
    nodes: list[NodeRow]
    """Every node ever registered, in slot order."""
    job: JobDetail | None
    """The running job, else the newest job (None: no job yet)."""
    queued: list[JobBrief]
    history: list[JobBrief]
    """Finished jobs, newest first."""
    links: list[LinkFact]
    """The doctor's latest measurement of each direction between two nodes."""
    last_event_id: int
    """Id of the newest log line (the stream continues after it)."""
