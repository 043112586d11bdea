"""The coordinator: one facade over membership, jobs and telemetry.

The HTTP layer (``app.py``) maps each request to one method here; the rules live in
``membership.py`` (who is in the cluster), ``jobs.py`` (the job life cycle) and
``telemetry.py`` (what replicas report), all SQL in ``store.py``. Hot paths (heartbeats,
events) touch memory first; :meth:`Coordinator.tick` (once a second) flushes heartbeat times
and progress, marks silent nodes lost and moves jobs along their life cycle. Not thread-safe
by itself: call from one event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from potluck.contracts import wire as s
from potluck.contracts.errors import ForbiddenError, StorageError
from potluck.coordinator.artifacts import Artifacts
from potluck.coordinator.config import CoordinatorConfig
from potluck.coordinator.jobs import Jobs
from potluck.coordinator.membership import Membership
from potluck.coordinator.prometheus import JobView, NodeView, cluster_families, render
from potluck.coordinator.store import Store
from potluck.coordinator.telemetry import Telemetry
from potluck.log import get_logger

log = get_logger("coordinator")

__all__ = ["Coordinator", "CoordinatorConfig"]


class Coordinator:
    """All cluster state transitions."""

    def __init__(self, store: Store, config: CoordinatorConfig) -> None:
        self.store = store
        self.config = config
        self.membership = Membership(store, config)
        self.telemetry = Telemetry(store, config.state_dir / "experiments")
        self.artifacts = Artifacts(config.state_dir)
        self.lifecycle = Jobs(store, config, self.membership, self.telemetry, self.artifacts)
        self.closing = False
        """Set when the host shuts down: long-polling routes return at once."""
        self.storage_problem: str | None = None
        """Why the database cannot be written now (None: it can)."""
        store.event("coordinator", "coordinator started")

    def info(self) -> s.ClusterInfo:
        c = self.config
        return s.ClusterInfo(api_version=s.API_VERSION, versions=c.versions,
                             lighthouse=c.lighthouse, advertise=c.advertise, port=c.port,
                             lighthouse_port=c.lighthouse_port,
                             heartbeat_interval_s=c.timeouts.heartbeat_interval_s,
                             node_timeout_s=c.timeouts.node_timeout_s)

    # nodes ---------------------------------------------------------------------------------

    def nodes(self) -> list[s.NodeInfo]:
        measured = self.telemetry.measured
        return [self.membership.info(row, measured.get(row["id"])) for row in self.store.nodes()]

    def register(self, req: s.RegisterRequest) -> s.RegisterResponse:
        return self.membership.register(req)

    def authenticate(self, node_id: int, credential: str | None) -> None:
        """Raises NodeAuthError unless ``credential`` is ``node_id``'s (see Membership)."""
        self.membership.authenticate(node_id, credential)

    def leave(self, node_id: int, credential: str | None) -> None:
        self.membership.authenticate(node_id, credential)
        self.membership.leave(node_id)

    def forget(self, name: str) -> s.NodeInfo:
        """Forget a node that is away (the user's call, with the cluster token)."""
        row = self.membership.forget(name)
        return self.membership.info(row, None).model_copy(update={"state": "forgotten"})

    def heartbeat(self, node_id: int, req: s.HeartbeatRequest, credential: str | None) -> s.HeartbeatResponse:
        self.membership.authenticate(node_id, credential)
        node = self.membership.touch(node_id, req.telemetry)
        if req.replicas:
            node = node or self.membership.node(node_id)
            self.lifecycle.apply_reports(node, req.replicas)
        return s.HeartbeatResponse(assignment=self.lifecycle.assignment(node_id, node))

    def prometheus(self) -> str:
        """``GET /metrics``: nodes, their resources and the live jobs in the Prometheus text
        format, from memory plus one read of the nodes table. Runs in the event loop: a few
        milliseconds for 200 nodes (docs/benchmarks.md)."""
        now = time.time()
        rows = self.store.nodes()
        last_seen = self.membership.last_seen
        nodes = [NodeView(name=row["name"], state=row["state"],
                          heartbeat_age_s=now - last_seen.get(row["id"], row["last_heartbeat"]),
                          compute_samples_per_s=self.telemetry.measured.get(row["id"], row["measured_sps"]),
                          resources=self.membership.resources.get(row["id"]))
                 for row in rows]
        names = {row["id"]: row["name"] for row in rows}
        jobs = [JobView(job_id=job_id, progress=progress,
                        node_samples={names.get(node_id, f"node-{node_id}"): samples for node_id, samples
                                      in self.telemetry.node_samples.get(job_id, {}).items()})
                for job_id, progress in sorted(self.telemetry.progress.items())]
        return render(cluster_families(nodes, jobs))

    # events from replicas ------------------------------------------------------------------

    def metrics(self, node_id: int, job_id: int, req: s.MetricsRequest, credential: str | None) -> int:
        """Store a batch of one replica's events; returns how many were stored. Only a node
        the job was assigned to reports for it (ForbiddenError otherwise: nothing stored)."""
        self.membership.authenticate(node_id, credential)
        node = self.membership.node(node_id)
        self.lifecycle.row(job_id)
        if self.store.replica(job_id, node_id) is None:
            raise ForbiddenError(f"node {node['name']} has no replica in job {job_id}: results "
                                 "come only from the nodes the job was assigned to")
        return self.telemetry.ingest(node, job_id, list(req.records))

    # files from replicas ------------------------------------------------------------------

    def _job_member(self, node_id: int, job_id: int, credential: str | None) -> tuple[Any, Any]:
        self.membership.authenticate(node_id, credential)
        node = self.membership.node(node_id)
        job = self.lifecycle.row(job_id)
        if self.store.replica(job_id, node_id) is None:
            raise ForbiddenError(f"node {node['name']} has no replica in job {job_id}: files "
                                 "come only from the nodes the job was assigned to")
        return node, job

    async def put_checkpoint(self, node_id: int, job_id: int, step: int, data: bytes,
                             sha256: str | None, credential: str | None) -> None:
        """Store a replica's checkpoint (the file is written on a thread, off the loop)."""
        node, job = self._job_member(node_id, job_id, credential)
        keep = self.lifecycle.spec(job).checkpoint.keep
        await asyncio.to_thread(self.artifacts.put_checkpoint, job_id, step, data, sha256 or "", keep)
        self.lifecycle.checkpoint_stored(job_id, step)
        self.store.event("checkpoint", f"checkpoint after step {step} stored on the host "
                         f"({len(data) / 1e6:.1f} MB, from {node['name']})", job_id=job_id)

    async def put_model(self, node_id: int, job_id: int, data: bytes, sha256: str | None,
                        credential: str | None) -> None:
        node, job = self._job_member(node_id, job_id, credential)
        await asyncio.to_thread(self.artifacts.put_model, job_id, data, sha256 or "",
                                self.lifecycle.spec(job).model_dump_json(indent=2))
        self.store.event("job", f"trained model stored on the host ({len(data) / 1e6:.1f} MB, "
                         f"from {node['name']}): `potluck pull {job_id}` fetches it", job_id=job_id)

    # jobs ----------------------------------------------------------------------------------

    def submit(self, req: s.JobSubmit) -> s.JobInfo:
        return self.lifecycle.submit(req)

    def cancel(self, job_id: int) -> s.JobInfo:
        return self.lifecycle.cancel(job_id)

    def job_info(self, job_id: int) -> s.JobInfo:
        return self.lifecycle.info(job_id)

    def jobs(self) -> list[s.JobInfo]:
        return self.lifecycle.all()

    def events(self, job_id: int | None, after: int = 0) -> list[s.LogEntry]:
        return self.lifecycle.events(job_id, after)

    def summarize(self, job_id: int, state: str) -> s.JobSummary:
        return self.telemetry.summarize(job_id, state)

    # housekeeping --------------------------------------------------------------------------

    def tick(self) -> None:
        """Once a second: flush heartbeats and progress, mark silent nodes lost, move jobs on.

        Each part runs even when another fails (a full disk must not stop nodes being marked
        lost); a storage failure is logged once when it starts and once when it clears."""
        now = time.time()
        failed: StorageError | None = None
        for part in (lambda: self.membership.flush(self.telemetry.measured),
                     lambda: self.membership.mark_lost(
                         now, self.telemetry.training_slots(now - self.config.timeouts.node_timeout_s)),
                     self.telemetry.flush,
                     lambda: self.lifecycle.advance(now), self.lifecycle.start_queued):
            try:
                part()
            except StorageError as exc:
                failed = failed or exc
        if failed is not None and self.storage_problem is None:
            log.error("%s", failed)
        elif failed is None and self.storage_problem is not None:
            log.warning("the database can be written again")
        self.storage_problem = str(failed) if failed else None
