"""Typed, versioned training events: what a replica reports, and what every consumer reads.

Producers (the replica loop) emit these through an ``EventSink``; consumers (the demo's live
view, the agent that streams them to the host, the coordinator that folds them into job
progress and summaries, tests) parse them with :func:`parse_event`. On disk and on the wire
an event is one JSON object with a ``type`` and a schema version ``v``; a consumer rejects
what does not validate instead of storing it. Field meanings: docs/metrics.md.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from potluck.contracts.errors import ConfigError
from potluck.contracts.jobspec import describe_validation_error

EVENT_VERSION: Literal[1] = 1
Seconds = Annotated[float, Field(ge=0, le=1e7)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
Bytes = Annotated[int, Field(ge=0, le=2**53)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Allocation = Annotated[dict[str, Count], Field(max_length=4096)]
"""``{"<slot>": samples}``: the share of the global batch each replica slot computes."""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    v: Literal[1] = EVENT_VERSION
    t: float = Field(ge=0, le=1e11)
    """Unix time the event was written."""
    replica: str = Field(min_length=1, max_length=100)
    """Name of the replica (its node)."""
    slot: int = Field(ge=0, le=4096)
    step: Count
    """Global step number (the data position; moves only on commit)."""


class StepEvent(_Event):
    """One attempted step; ``committed`` False means it was discarded and will be redone."""

    type: Literal["step"] = "step"
    committed: bool
    participants: Count
    local_batch: Count
    compute_s: Seconds
    quorum_s: Seconds
    allreduce_s: Seconds
    commit_s: Seconds
    data_s: Seconds | None = None
    """Seconds this step waited for its samples (0 when they were prefetched in time)."""
    wait_s: Seconds | None = None
    comm_s: Seconds | None = None
    loss: float | None = None
    allocation: Allocation | None = None
    samples_per_s: float | None = Field(default=None, ge=0)
    indices: list[Count] | None = Field(default=None, max_length=1 << 20)
    resumed_from: Count | None = None
    """Set on a replica's first committed step after it loaded a checkpoint: the checkpoint's
    count of committed steps, which is also that first step's index (the host counts a restart
    when training went on from it)."""
    sync_bytes: Bytes | None = None
    """Bytes this replica contributed to the step's sync (its values in the wire format and
    its statistics)."""
    compute_fraction: Fraction | None = None
    """(committed only) ``compute_s`` over the step's wall time (quorum, compute, sync and
    commit): what a sync plan's ``predicted_fraction`` predicts."""


class SyncPlan(BaseModel):
    """How a job syncs and what the cost model predicts for it (docs/sync.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    strategy: Literal["allreduce", "allreduce-bf16", "diloco"]
    wire: Literal["fp32", "bf16", "int8"]
    phase_s: Seconds = 0.0
    """diloco: seconds per inner phase (0: one sync per step)."""
    chosen_by: Literal["auto", "job"]
    """``auto`` chose it from the measured link, or the job's ``sync.strategy`` fixed it."""
    members: Count
    values: Bytes
    """Numbers synced (the model's parameters)."""
    sync_bytes: Bytes
    """Bytes each member contributes per sync."""
    bandwidth_bps: float = Field(ge=0, le=1e15)
    """The slowest member's link as measured by the plan's probe (bits/s)."""
    rtt_s: Seconds
    predicted_sync_s: Seconds
    predicted_fraction: Fraction
    """Predicted fraction of wall time spent computing."""
    collective_timeout_s: Seconds
    """torchft's timeout for every collective and the commit vote, derived from the plan."""
    quorum_timeout_s: Seconds


class PlanEvent(_Event):
    """The job's sync plan, decided at step 0 (and by `auto` again when the members change)
    by every member of the quorum from the same measurements."""

    type: Literal["plan"] = "plan"
    plan: SyncPlan


class AllocationEvent(_Event):
    """An allocation change: from ``step`` on, ``allocation[slot]`` samples per step."""

    type: Literal["allocation"] = "allocation"
    allocation: Allocation
    reason: str = Field(max_length=1000)
    predicted_step_s: Seconds | None = None
    members: list[Annotated[int, Field(ge=0, le=4096)]] = Field(default_factory=list, max_length=4096)
    """The quorum's slots when the decision was made."""


class MembershipEvent(_Event):
    """The quorum's members changed (a replica joined, left or came back)."""

    type: Literal["membership"] = "membership"
    members: list[Annotated[int, Field(ge=0, le=4096)]] = Field(max_length=4096)
    joined: list[Annotated[int, Field(ge=0, le=4096)]] = Field(default_factory=list, max_length=4096)
    left: list[Annotated[int, Field(ge=0, le=4096)]] = Field(default_factory=list, max_length=4096)


class DoneEvent(_Event):
    """The replica's last event: its summary of the run."""

    type: Literal["done"] = "done"
    speed: float = Field(gt=0)
    final_step: Count
    committed_steps_here: Count
    discarded_steps: Count
    final_loss: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = Field(default=None, ge=0, le=1)
    emulation_overruns: Count = 0
    wall_s: Seconds
    started_at: float
    ended_at: float
    samples_per_s: float = Field(ge=0)
    allocation: Allocation
    rebalances: Count
    host: str = Field(max_length=300)
    params_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AlertEvent(_Event):
    """Something a replica refused for safety: a quorum member without the job's tag, a
    checkpoint request or a recovery source without the job's secret."""

    type: Literal["alert"] = "alert"
    message: str = Field(min_length=1, max_length=1000)


class NoticeEvent(_Event):
    """Something the user should know about the job (it still trains): e.g. BatchNorm layers,
    which make uneven shares inexact. The host logs each distinct notice once."""

    type: Literal["notice"] = "notice"
    message: str = Field(min_length=1, max_length=1000)


class ErrorEvent(_Event):
    """The replica stopped on an error a restart cannot fix (the job's code raised, replicas
    disagree on the model or data): one line, and the traceback for ``potluck logs``."""

    type: Literal["error"] = "error"
    message: str = Field(min_length=1, max_length=1000)
    traceback: str = Field(default="", max_length=20000)


class CheckpointEvent(_Event):
    """A checkpoint of the full training state after ``step`` committed steps was written."""

    type: Literal["checkpoint"] = "checkpoint"
    file: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: Count
    final: bool = False


Event = Annotated[StepEvent | AllocationEvent | MembershipEvent | DoneEvent | AlertEvent
                  | ErrorEvent | CheckpointEvent | NoticeEvent | PlanEvent, Field(discriminator="type")]
_adapter: TypeAdapter[Any] = TypeAdapter(Event)


def parse_event(raw: Any) -> (StepEvent | AllocationEvent | MembershipEvent | DoneEvent | AlertEvent
                              | ErrorEvent | CheckpointEvent | NoticeEvent | PlanEvent):
    """One event from untrusted JSON data. Raises ConfigError naming the bad field."""
    try:
        return _adapter.validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "event field")) from None


def finite(value: float | None) -> float | None:
    """``value``, or None when it is NaN or infinite (JSON and SQLite cannot hold those)."""
    return value if value is None or math.isfinite(value) else None


def event_json(event: BaseModel) -> str:
    """Compact one-line JSON of an event, without unset optional fields."""
    return event.model_dump_json(exclude_none=True)


__all__ = ["Event", "StepEvent", "AllocationEvent", "MembershipEvent", "DoneEvent", "AlertEvent",
           "ErrorEvent", "CheckpointEvent", "NoticeEvent", "PlanEvent", "SyncPlan",
           "EVENT_VERSION", "parse_event", "finite", "event_json"]
