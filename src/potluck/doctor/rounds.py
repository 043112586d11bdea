"""The host's side of ``potluck doctor --cluster``: probe rounds and stored link facts.

``potluck host`` plugs :func:`doctor_router` into the coordinator's app under
``/api/v1/doctor`` (so the token middleware guards it); the coordinator does not know the
doctor. Rounds live in memory (they last seconds); only the measured facts go to the
coordinator's store (``Store.upsert_link``: one row per direction, the latest measurement),
where ``potluck status --json`` and later the balancer read them.

Round life cycle (see :mod:`potluck.contracts.wire`): ``listening`` until every alive node
reported its listener (or ``LISTEN_TIMEOUT_S``), ``probing`` one node at a time (each given
``PROBE_TIMEOUT_S`` per target), then ``done``. Agents long-poll ``tasks/{node_id}``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Query

from potluck.contracts import wire as d
from potluck.contracts.errors import ConfigError, NotFoundError
from potluck.coordinator.app import Id, NodeCredential
from potluck.coordinator.service import Coordinator
from potluck.doctor.network import link_from_probe
from potluck.net.probe import LinkProbe

LISTEN_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = {"full": 12.0, "preflight": 6.0}
"""Per target: connect + pings + large messages (+ bandwidth in full mode), with margin."""
MAX_WAIT_S = 30.0
KEEP_RUNS = 20

SETTINGS: dict[str, d.ProbeSettingsMsg] = {
    "full": d.ProbeSettingsMsg(connect_timeout_s=3.0, pings=5, bandwidth_bytes=16 * 2**20,
                               bandwidth_seconds=1.0, stall_s=2.0, messages_seconds=4.0),
    "preflight": d.ProbeSettingsMsg(connect_timeout_s=2.0, pings=3, bandwidth_bytes=0,
                                    message_sizes=[64 * 1024, 1024 * 1024], stall_s=1.5,
                                    messages_seconds=2.0),
}

@dataclass
class _Node:
    id: int
    name: str
    address: str
    port: int | None = None
    error: str | None = None
    checks: list[d.CheckMsg] = field(default_factory=list)
    listen_sent: bool = False
    probe_sent_at: float | None = None
    probed: bool = False


@dataclass
class _Run:
    id: int
    mode: d.Mode
    nodes: dict[int, _Node]
    created: float
    state: d.RunState = "listening"
    order: list[int] = field(default_factory=list)
    links: list[d.LinkMsg] = field(default_factory=list)
    missing: set[int] = field(default_factory=set)

    def targets_for(self, node_id: int) -> list[d.Target]:
        return [
            d.Target(name=n.name, address=n.address, port=n.port)
            for n in self.nodes.values()
            if n.id != node_id and n.port
        ]


class DoctorRounds:
    """All rounds of one coordinator. Call from its event loop only."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.runs: dict[int, _Run] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def start(self, mode: d.Mode) -> _Run:
        nodes = {
            n.id: _Node(id=n.id, name=n.name, address=n.address)
            for n in self.coordinator.nodes()
            if n.state == "alive"
        }
        run = _Run(id=next(self._ids), mode=mode, nodes=nodes, created=time.monotonic())
        self.runs[run.id] = run
        for old in sorted(self.runs)[:-KEEP_RUNS]:
            del self.runs[old]
        if not nodes:
            run.state = "done"
        self._notify()
        return run

    def advance(self, run: _Run) -> None:
        """Move a round along on timeouts (called on every request touching it)."""
        now = time.monotonic()
        if run.state == "listening":
            waiting = [n for n in run.nodes.values() if n.port is None and n.error is None]
            if waiting and now - run.created > LISTEN_TIMEOUT_S:
                run.missing.update(n.id for n in waiting)
                waiting = []
            if not waiting:
                run.state = "probing"
                run.order = [n.id for n in run.nodes.values() if n.port and n.id not in run.missing]
                self._notify()
        if run.state == "probing":
            while run.order:
                node = run.nodes[run.order[0]]
                limit = PROBE_TIMEOUT_S[run.mode] * max(1, len(run.targets_for(node.id))) + 5
                if node.probed:
                    run.order.pop(0)
                elif node.probe_sent_at is not None and now - node.probe_sent_at > limit:
                    run.missing.add(node.id)
                    run.order.pop(0)
                elif node.probe_sent_at is None and now - run.created > LISTEN_TIMEOUT_S + limit:
                    run.missing.add(node.id)  # never came to fetch its probe task
                    run.order.pop(0)
                else:
                    break
            if not run.order:
                run.state = "done"
                self._notify()

    def task_for(self, node_id: int) -> d.Task | None:
        for run in list(self.runs.values()):
            self.advance(run)
            node = run.nodes.get(node_id)
            if node is None or node_id in run.missing:
                continue
            if run.state == "listening" and not node.listen_sent:
                node.listen_sent = True
                ttl = LISTEN_TIMEOUT_S + PROBE_TIMEOUT_S[run.mode] * len(run.nodes) ** 2 + 10
                return d.Task(kind="listen", run_id=run.id, mode=run.mode, ttl_s=min(ttl, 600))
            if run.state == "probing" and run.order and run.order[0] == node_id:
                if node.probe_sent_at is None:
                    node.probe_sent_at = time.monotonic()
                    return d.Task(kind="probe", run_id=run.id, mode=run.mode,
                                  targets=run.targets_for(node_id), settings=SETTINGS[run.mode])
        return None

    async def wait_task(self, node_id: int, wait_s: float) -> d.Task | None:
        deadline = time.monotonic() + min(wait_s, MAX_WAIT_S)
        while True:
            task = self.task_for(node_id)
            remaining = deadline - time.monotonic()
            if task is not None or remaining <= 0 or self.coordinator.closing:
                return task
            changed = self._changed
            try:
                # Wake at least every second so timeouts of rounds advance.
                await asyncio.wait_for(changed.wait(), timeout=min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass

    def run(self, run_id: int) -> _Run:
        run = self.runs.get(run_id)
        if run is None:
            raise NotFoundError(f"unknown doctor run {run_id}: start one with `potluck doctor --cluster`")
        self.advance(run)
        return run

    def listening(self, run_id: int, req: d.Listening) -> None:
        run = self.run(run_id)
        node = run.nodes.get(req.node_id)
        if node is None:
            raise NotFoundError(f"node {req.node_id} is not part of doctor run {run_id}")
        node.port, node.error, node.checks = (req.port or None), req.error, req.checks
        run.missing.discard(node.id)
        self.advance(run)
        self._notify()

    def probed(self, run_id: int, req: d.Probed) -> None:
        run = self.run(run_id)
        node = run.nodes.get(req.node_id)
        if node is None:
            raise NotFoundError(f"node {req.node_id} is not part of doctor run {run_id}")
        names = {n.name for n in run.nodes.values()}
        now = time.time()
        for out in req.probes:
            if out.target not in names:
                continue
            try:
                probe = LinkProbe.from_dict(out.probe.model_dump())
            except (KeyError, TypeError) as exc:
                raise ConfigError(f"malformed probe result for {out.target}: {exc}") from exc
            link = link_from_probe(node.name, out.target, probe, node.address)
            run.links.append(d.LinkMsg.model_validate(link.to_dict()))
            self.coordinator.store.upsert_link(link.to_dict(), now)
        node.probed = True
        self.advance(run)
        self._notify()

    def info(self, run: _Run) -> d.RunInfo:
        return d.RunInfo(
            id=run.id,
            mode=run.mode,
            state=run.state,
            nodes=[d.RunNode(name=n.name, address=n.address, port=n.port, error=n.error,
                             checks=n.checks) for n in run.nodes.values()],
            links=run.links,
            missing=sorted(run.nodes[i].name for i in run.missing),
        )

    def facts(self) -> list[d.LinkFact]:
        return [d.LinkFact(**row) for row in self.coordinator.store.links()]


def doctor_router(coordinator: Coordinator) -> APIRouter:
    """The ``/api/v1/doctor`` routes over one :class:`DoctorRounds`."""
    router = APIRouter(prefix="/api/v1/doctor")
    rounds: list[DoctorRounds] = []

    def get() -> DoctorRounds:
        # Created lazily: asyncio.Event must belong to the server's event loop.
        if not rounds:
            rounds.append(DoctorRounds(coordinator))
        return rounds[0]

    @router.post("/runs", status_code=201)
    async def start(req: d.RunRequest) -> d.RunInfo:
        r = get()
        return r.info(r.start(req.mode))

    @router.get("/runs/{run_id}")
    async def run(run_id: Id) -> d.RunInfo:
        r = get()
        return r.info(r.run(run_id))

    @router.get("/tasks/{node_id}")
    async def task(node_id: Id, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0,
                   node: NodeCredential = None) -> d.TaskResponse:
        coordinator.authenticate(node_id, node)
        return d.TaskResponse(task=await get().wait_task(node_id, max(0.0, wait)))

    @router.post("/runs/{run_id}/listening")
    async def listening(run_id: Id, req: d.Listening, node: NodeCredential = None) -> dict[str, str]:
        coordinator.authenticate(req.node_id, node)  # a node reports only for itself
        get().listening(run_id, req)
        return {"status": "ok"}

    @router.post("/runs/{run_id}/probed")
    async def probed(run_id: Id, req: d.Probed, node: NodeCredential = None) -> dict[str, str]:
        coordinator.authenticate(req.node_id, node)
        get().probed(run_id, req)
        return {"status": "ok"}

    @router.get("/links")
    async def links() -> list[d.LinkFact]:
        return get().facts()

    @router.get("/time")
    async def host_time() -> d.HostTime:
        return d.HostTime(time=time.time())

    return router

