"""Messages of a doctor round between the CLI, the coordinator and the agents (strict pydantic).

A round (``DoctorRun``) has two phases. ``listen``: every alive agent opens a probe listener
on its data-plane address and reports the port and its node checks. ``probe``: one agent at a
time (so bandwidth numbers are not shared between concurrent probes) probes every other
agent's listener and reports what it measured. Nothing is unpickled; probe results travel as
the JSON of :class:`~potluck.net.probe.LinkProbe`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["full", "preflight"]
RunState = Literal["listening", "probing", "done"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    settings: dict[str, Any] = Field(default_factory=dict, description="ProbeSettings fields")


class TaskResponse(Strict):
    task: Task | None = None


class Listening(Strict):
    node_id: int
    port: int = Field(ge=0, le=65535, description="0: the listener could not be opened")
    error: str | None = Field(default=None, max_length=500)
    checks: list[dict[str, Any]] = Field(default_factory=list, max_length=64)


class ProbeOut(Strict):
    target: str = Field(max_length=64)
    probe: dict[str, Any]


class Probed(Strict):
    node_id: int
    probes: list[ProbeOut] = Field(max_length=256)


class RunNode(Strict):
    name: str
    address: str
    port: int | None = None
    error: str | None = None
    checks: list[dict[str, Any]] = Field(default_factory=list)


class RunInfo(Strict):
    id: int
    mode: Mode
    state: RunState
    nodes: list[RunNode]
    links: list[dict[str, Any]]
    """``Link.to_dict()`` of every probed direction."""
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
