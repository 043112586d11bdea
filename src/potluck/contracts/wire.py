"""Every message of the HTTP API between the coordinator, the agents and the CLI.

Strict pydantic schemas: requests forbid unknown fields (a typo is a 422 naming the field,
not silently ignored), floats must be finite, integers and strings are bounded, and nothing
from the network is ever unpickled. There are no ``dict[str, Any]`` holes: a job travels as
a :class:`~potluck.contracts.jobspec.JobSpec`, metrics as typed events. Bump ``API_VERSION``
on incompatible changes.

Two groups: the cluster (nodes, heartbeats, jobs, events) and the doctor's probe rounds (a
round has two phases; ``listen``: every alive agent opens a probe listener on its data-plane
address and reports the port and its node checks; ``probe``: one agent at a time, so that
bandwidth numbers are not shared between concurrent probes, probes every other agent's
listener and reports what it measured).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from potluck.contracts import events
from potluck.contracts.jobspec import JobSpec

API_VERSION = 1

NodeState = Literal["alive", "lost", "left", "forgotten"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ReplicaState = Literal["assigned", "starting", "running", "done", "failed", "lost", "stopped"]
FINISHED_JOB_STATES = ("succeeded", "failed", "cancelled")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""A node's name: what `--name` accepts."""


MAX_WIRE_INT = 2**62
"""Largest magnitude of any integer in a message: it must fit SQLite's signed 64 bits."""


def _check_ints(value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_WIRE_INT <= value <= MAX_WIRE_INT:
            raise ValueError(f"integer {str(value)[:24]} is out of range (at most 2^62 in magnitude)")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_ints(item)
    elif isinstance(value, dict):
        for item in value.values():
            _check_ints(item)


class Strict(BaseModel):
    """Base of every message: unknown fields, NaN and infinity are errors, and so is an
    integer that would not fit in SQLite (anywhere in the message, nested data included)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_ints(cls, value: Any) -> Any:
        _check_ints(value)
        return value


class Versions(Strict):
    """Software versions that must match across the cluster."""

    python: str = Field(max_length=32, description="major.minor")
    torch: str = Field(max_length=64)
    torchft: str = Field(max_length=64)
    potluck: str = Field(max_length=64)


class Gpu(Strict):
    name: str = Field(max_length=200)
    memory_mb: int = Field(ge=0)


class Hardware(Strict):
    cpu_cores: int = Field(ge=1, le=4096)
    memory_mb: int = Field(ge=0)
    gpus: list[Gpu] = Field(default_factory=list, max_length=64)
    os: str | None = Field(default=None, max_length=100)
    """The operating system, e.g. ``Linux 6.1 x86_64`` (None: an agent that did not say)."""


class RegisterRequest(Strict):
    """An agent joining (or re-joining) the cluster."""

    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    node_key: str = Field(
        min_length=16, max_length=128, description="random id the agent keeps across restarts"
    )
    address: str = Field(min_length=1, max_length=64)
    """The node's data-plane IP address (v4 or v6), as chosen by ``potluck join``."""
    interface: str | None = Field(default=None, max_length=32, pattern=r"^[A-Za-z0-9_.:@-]+$")
    hardware: Hardware
    versions: Versions
    speed: float = Field(default=1.0, gt=0, le=1000, description="emulated speed factor")


    @field_validator("address")
    @classmethod
    def _an_ip_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("must be an IP address (v4 or v6), not a host name") from None


NODE_CREDENTIAL_HEADER = "X-Potluck-Node"
SHA256_HEADER = "X-Potluck-Sha256"
"""sha256 (hex) of a file's bytes, sent with every upload and download of a file."""
STEP_HEADER = "X-Potluck-Step"
"""The step of a checkpoint being downloaded."""
"""Header carrying a node's credential on every call that acts for that node."""


class RegisterResponse(Strict):
    node_id: int
    name: str
    slot: int
    heartbeat_interval_s: float
    lighthouse: str
    credential: str = Field(min_length=16, max_length=256)
    """This node's secret, new at every registration: the agent sends it (header
    ``X-Potluck-Node``) on every call that acts for the node; the host keeps only its hash."""


class ReplicaReport(Strict):
    """What an agent knows about its replica process for one job."""

    job_id: int
    state: ReplicaState
    step: int | None = None
    exit_code: int | None = None
    message: str | None = Field(default=None, max_length=2000)
    ready: bool = False
    """The replica is up (connected to the Lighthouse) and waits at the start barrier."""


MAX_TELEMETRY_BYTES = 2**50
"""Largest memory figure a node may report (1 PiB): bounds a driver's nonsense."""


class GpuTelemetry(Strict):
    """One GPU's state when the node last sampled it; a field the driver did not give is
    None (a GPU without a power sensor, a query that failed)."""

    index: int = Field(ge=0, le=63)
    """The GPU's index as the driver numbers it (``nvidia-smi -i``)."""
    utilization_percent: float | None = Field(default=None, ge=0, le=100)
    memory_used_bytes: int | None = Field(default=None, ge=0, le=MAX_TELEMETRY_BYTES)
    memory_total_bytes: int | None = Field(default=None, ge=0, le=MAX_TELEMETRY_BYTES)
    temperature_c: float | None = Field(default=None, ge=-100, le=250)
    power_w: float | None = Field(default=None, ge=0, le=100_000)


class NodeTelemetry(Strict):
    """What a node's resources are doing, sampled by its agent at each heartbeat
    (``potluck.agent.telemetry``). None: not measurable on that machine."""

    cpu_percent: float | None = Field(default=None, ge=0, le=100)
    """Whole-machine CPU use since the previous sample, all cores together."""
    memory_used_bytes: int | None = Field(default=None, ge=0, le=MAX_TELEMETRY_BYTES)
    """RAM in use (total minus available)."""
    memory_total_bytes: int | None = Field(default=None, ge=0, le=MAX_TELEMETRY_BYTES)
    gpus: list[GpuTelemetry] = Field(default_factory=list, max_length=64)
    """NVIDIA GPUs (empty without a driver)."""


class HeartbeatRequest(Strict):
    replicas: list[ReplicaReport] = Field(default_factory=list, max_length=16)
    telemetry: NodeTelemetry | None = None
    """The node's resources now (None from an agent that did not sample them)."""


class CheckpointRef(Strict):
    """A checkpoint stored on the host (``GET /api/v1/jobs/{id}/checkpoint``)."""

    step: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Assignment(Strict):
    """A job this node should run a replica of."""

    job_id: int
    slot: int
    name: str
    lighthouse: str
    job: JobSpec
    """The job (validated by the coordinator at submission)."""
    go: bool = True
    """False while the job waits for all first replicas to be ready (the start barrier), so
    the first quorum holds every node; a replica started with ``go`` False waits for it."""
    secret: str | None = Field(default=None, min_length=32, max_length=256, repr=False)
    """The job's secret for its replicas (ReplicaSpec.secret); only in this authenticated
    answer to the node's own heartbeat, never in the JobSpec or any listing."""
    resume: CheckpointRef | None = None
    """The job's newest checkpoint on the host: a replica starts from it, not from step 0."""
    min_step: int = Field(default=0, ge=0)
    """The step the job had reached when this was sent: a replica behind it that finds no
    peer to heal from waits for one instead of training the job again alone."""


class HeartbeatResponse(Strict):
    assignment: Assignment | None = None
    """The job to run now; None means run nothing (stop what is running)."""


class MetricsRequest(Strict):
    """Events from a replica's event file, in file order."""

    records: list[events.Event] = Field(max_length=2000)


class JobSubmit(Strict):
    """A training job and a display name."""

    config: JobSpec
    name: str | None = Field(default=None, max_length=100)
    resume: int | None = Field(default=None, ge=0)
    """Start from this earlier job's newest checkpoint (``potluck train --resume JOB``)."""


class BundleInfo(Strict):
    """A code bundle stored on the host."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    files: int = Field(ge=0)


class NodeInfo(Strict):
    id: int
    name: str
    slot: int
    address: str
    interface: str | None
    hardware: Hardware
    versions: Versions
    speed: float
    measured_samples_per_s: float | None
    state: NodeState
    last_heartbeat: float
    joined_at: float
    telemetry: NodeTelemetry | None = None
    """The resources the node reported in its latest heartbeat since the host started
    (None before that; kept in the host's memory only)."""


class SyncStats(Strict):
    """How a job syncs: its plan and what its committed steps (phases, for diloco) measured,
    averaged over every replica's committed steps."""

    plan: events.SyncPlan | None = None
    """From step 0's plan event (None: one replica at step 0, or a strategy the cost model
    does not know)."""
    steps: int = Field(default=0, ge=0)
    """Committed step reports behind the means (one per replica and step)."""
    step_s: float | None = Field(default=None, ge=0)
    """Mean wall seconds of a step or phase (quorum, compute, sync, commit)."""
    compute_s: float | None = Field(default=None, ge=0)
    """Mean seconds computing in a step (a diloco phase's local training)."""
    sync_s: float | None = Field(default=None, ge=0)
    """Mean seconds in the sync (waiting for slower peers included)."""
    sync_bytes: int | None = Field(default=None, ge=0)
    """Bytes each member contributes per sync."""
    compute_fraction: float | None = Field(default=None, ge=0, le=1)
    """Compute seconds over wall seconds, summed over the committed steps: what the plan's
    ``predicted_fraction`` predicts."""
    samples: dict[str, int] = Field(default_factory=dict)
    """Node name -> samples its replica processed in committed steps or phases."""


class JobProgress(Strict):
    step: int = 0
    loss: float | None = None
    samples_per_s: float | None = None
    participants: int | None = None
    shares: dict[str, float] = Field(default_factory=dict)
    """Node name -> fraction of the global batch in the latest allocation."""
    restarts: int = 0
    """Times training started over because every replica was lost at once."""
    steps_lost: int = 0
    """Committed steps trained again after those restarts."""
    sync: SyncStats | None = None
    """The sync plan and what the committed steps measured so far."""


class JobSummary(Strict):
    job_id: int
    state: JobState
    nodes: list[str]
    steps: int
    samples_per_s: float | None
    compute_fraction: float | None
    """Fraction of replica step time spent computing (the rest: communication, waiting)."""
    final_loss: float | None
    test_accuracy: float | None
    run_dir: str
    restarts: int = 0
    """Times training started over (from the last checkpoint, or step 0 without one) because
    every replica was lost at once."""
    steps_lost: int = 0
    """Committed steps trained again after those restarts."""
    checkpoint_step: int | None = None
    """Step of the newest checkpoint on the host (``potluck train --resume`` starts there)."""
    model: bool = False
    """The trained model is on the host (``potluck pull JOB``)."""
    sync: SyncStats | None = None
    """The sync plan and what the committed steps measured (per step, or per diloco phase)."""


class JobReplica(Strict):
    node: str
    slot: int
    state: ReplicaState
    step: int | None
    exit_code: int | None
    message: str | None


class JobInfo(Strict):
    id: int
    name: str
    state: JobState
    config: JobSpec
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: JobProgress
    replicas: list[JobReplica]
    summary: JobSummary | None
    message: str | None


class LogEntry(Strict):
    """One line of the cluster's event log (``potluck logs``)."""

    id: int
    t: float
    kind: str
    message: str
    node: str | None = None


class ClusterInfo(Strict):
    api_version: int
    versions: Versions
    lighthouse: str
    advertise: str
    port: int
    lighthouse_port: int
    heartbeat_interval_s: float
    node_timeout_s: float


# doctor rounds ------------------------------------------------------------------------------

Mode = Literal["full", "preflight"]
RunState = Literal["listening", "probing", "done"]



class FixMsg(Strict):
    """A fix, per operating system (empty strings where the same fix fits all)."""

    all: str = Field(default="", max_length=2000)
    linux: str = Field(default="", max_length=2000)
    macos: str = Field(default="", max_length=2000)
    windows: str = Field(default="", max_length=2000)


class CheckMsg(Strict):
    """One doctor check of one node (``doctor.report.Check``)."""

    id: str = Field(max_length=200)
    node: str = Field(max_length=200)
    status: Literal["ok", "warn", "fail"]
    summary: str = Field(max_length=2000)
    fix: FixMsg | None = None
    data: dict[str, JsonValue] = Field(default_factory=dict, max_length=64)
    """Measured values, for ``--json``."""


class LinkMsg(Strict):
    """One direction of one pair as classified by the host (``doctor.report.Link``)."""

    source: str = Field(max_length=200)
    target: str = Field(max_length=200)
    address: str = Field(max_length=300)
    status: Literal["ok", "warn", "fail"]
    summary: str = Field(max_length=2000)
    fix: FixMsg | None = None
    rtt_ms: float | None = None
    mbit_s: float | None = None
    largest_message: int | None = Field(default=None, ge=0)
    error: str | None = Field(default=None, max_length=2000)


class ProbeSettingsMsg(Strict):
    """Bounds of one probe run (``net.probe.ProbeSettings``); unset fields keep its defaults."""

    connect_timeout_s: float | None = Field(default=None, gt=0, le=60)
    pings: int | None = Field(default=None, ge=0, le=100)
    bandwidth_bytes: int | None = Field(default=None, ge=0, le=1 << 30)
    bandwidth_seconds: float | None = Field(default=None, ge=0, le=60)
    message_sizes: list[int] | None = Field(default=None, max_length=32)
    stall_s: float | None = Field(default=None, gt=0, le=60)
    messages_seconds: float | None = Field(default=None, ge=0, le=120)


class ConnectMsg(Strict):
    ok: bool
    error: str | None = Field(default=None, max_length=100)
    detail: str = Field(default="", max_length=2000)
    seconds: float = Field(default=0.0, ge=0)


class LatencyMsg(Strict):
    rtt_ms: list[float] = Field(max_length=1000)
    clock_offset_s: float
    median_ms: float | None = None


class BandwidthMsg(Strict):
    bytes: int = Field(ge=0)
    seconds: float = Field(ge=0)
    mbit_s: float | None = None


class MessagesMsg(Strict):
    passed: list[int] = Field(default_factory=list, max_length=64)
    stalled_at: int | None = None
    stalled_after: int = 0
    skipped_from: int | None = None


class LinkProbeMsg(Strict):
    """What one probe of one direction measured (``net.probe.LinkProbe``)."""

    target: str = Field(max_length=200)
    connect: ConnectMsg
    latency: LatencyMsg | None = None
    bandwidth: BandwidthMsg | None = None
    messages: MessagesMsg | None = None
    error: str | None = Field(default=None, max_length=2000)


class RunRequest(Strict):
    mode: Mode = "full"


class Target(Strict):
    name: str = Field(max_length=64)
    address: str = Field(max_length=64)
    port: int = Field(ge=1, le=65535)


class Task(Strict):
    """What an agent is asked to do for a round."""

    kind: Literal["listen", "probe"]
    run_id: int
    mode: Mode
    ttl_s: float = Field(default=60.0, gt=0, le=600, description="listener lifetime")
    targets: list[Target] = Field(default_factory=list, max_length=256)
    settings: ProbeSettingsMsg = Field(default_factory=ProbeSettingsMsg)


class TaskResponse(Strict):
    task: Task | None = None


class Listening(Strict):
    node_id: int
    port: int = Field(ge=0, le=65535, description="0: the listener could not be opened")
    error: str | None = Field(default=None, max_length=500)
    checks: list[CheckMsg] = Field(default_factory=list, max_length=64)


class ProbeOut(Strict):
    target: str = Field(max_length=64)
    probe: LinkProbeMsg


class Probed(Strict):
    node_id: int
    probes: list[ProbeOut] = Field(max_length=256)


class RunNode(Strict):
    name: str
    address: str
    port: int | None = None
    error: str | None = None
    checks: list[CheckMsg] = Field(default_factory=list, max_length=64)


class RunInfo(Strict):
    id: int
    mode: Mode
    state: RunState
    nodes: list[RunNode]
    links: list[LinkMsg]
    """Every probed direction."""
    missing: list[str]
    """Nodes that did not answer in time (agent busy, disconnected, or too old)."""


class LinkFact(Strict):
    """The latest measurement of one direction of one pair, as stored on the host."""

    source: str
    target: str
    status: str
    rtt_ms: float | None
    mbit_s: float | None
    largest_message: int | None
    error: str | None
    summary: str
    measured_at: float


class HostTime(Strict):
    time: float


# errors -------------------------------------------------------------------------------------


class VersionDiffMsg(Strict):
    """One component whose version differs between a node and the host."""

    component: str
    host: str
    node: str
    fix: str


class ApiError(Strict):
    """Every error answer of the API (4xx, 503): ``detail`` is one line saying what happened
    and the fix; a version mismatch (409) adds ``diffs``, one per differing component."""

    detail: str
    diffs: list[VersionDiffMsg] | None = None
