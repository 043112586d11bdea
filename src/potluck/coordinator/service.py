"""The coordinator's rules: who is in the cluster, which job runs where, when a job is over.

Plain Python over :class:`~potluck.coordinator.store.Store`; the HTTP layer (``app.py``) only
maps requests to these methods. Hot paths (heartbeats, metrics) touch memory first and the
database only when something changes; :meth:`Coordinator.tick` (once a second) flushes
heartbeat times, marks silent nodes lost and moves jobs along their life cycle::

    queued -> running -> succeeded | failed | cancelled

One job runs at a time (the cluster has one Lighthouse); later submissions queue. Every live
node gets a replica of the running job, in its stable slot; a node that comes back (or joins
late) is assigned the running job again, so torchft heals it into the group.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potluck.contracts import wire as s
from potluck.contracts.addressing import http_url
from potluck.contracts.errors import ConflictError, NotFoundError
from potluck.contracts.jobspec import JobSpec
from potluck.contracts.versions import require_same_versions
from potluck.coordinator.job_secrets import job_secret, load_or_create_job_key
from potluck.coordinator.store import Store, dumps, loads
from potluck.log import get_logger
from potluck.recipes import check_spec

log = get_logger("coordinator")

ACTIVE_REPLICA = ("assigned", "starting", "running")
STRAGGLER_GRACE_S = 60.0
"""After the first replica finishes, how long the others get to finish before the job ends."""
BARRIER_TIMEOUT_S = 90.0
"""The first step starts when every first replica is ready, or after this long anyway."""
ORPHAN_TIMEOUT_S = 120.0
"""A running job with no active replica for this long fails (every node lost for good)."""
MAX_NODES = 4096
"""Slots ever handed out by one coordinator; a job uses the nodes with slot < max_replicas."""


@dataclass(kw_only=True)
class CoordinatorConfig:
    """Settings of one coordinator."""

    state_dir: Path
    """Holds ``potluck.db``, ``token``, ``host.json`` and ``experiments/``."""
    advertise: str
    """Address agents and replicas use to reach the host."""
    port: int
    """HTTP API port."""
    lighthouse_port: int
    """torchft Lighthouse port."""
    versions: s.Versions
    """The host's versions; joining nodes must match them."""
    heartbeat_interval_s: float = 1.0
    """How often agents heartbeat."""
    node_timeout_s: float = 6.0
    """A node silent for this long is marked lost."""

    @property
    def lighthouse(self) -> str:
        return http_url(self.advertise, self.lighthouse_port)


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (SQLite/JSON cannot hold NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def job_spec_from(raw: object) -> JobSpec:
    """A validated JobSpec from untrusted data, names checked. Raises ConfigError naming the field."""
    return check_spec(JobSpec.parse(raw))


class Coordinator:
    """All cluster state transitions. Not thread-safe by itself: call from one event loop."""

    def __init__(self, store: Store, config: CoordinatorConfig) -> None:
        self.store = store
        self.config = config
        self.experiments = config.state_dir / "experiments"
        self._job_key = load_or_create_job_key(config.state_dir)
        now = time.time()
        # A restarted coordinator gives every known node a full timeout to reconnect.
        self._last_seen: dict[int, float] = {row["id"]: now for row in store.nodes()}
        self._dirty_seen: set[int] = set(self._last_seen)
        self._measured: dict[int, float] = {}
        self._progress: dict[int, s.JobProgress] = {}
        self._progress_dirty: set[int] = set()
        self._no_active_since: dict[int, float] = {}
        self._first_done_at: dict[int, float] = {}
        self._slot_names: dict[str, str] = {}
        # Jobs whose start barrier is released; a restarted coordinator releases running jobs.
        self._released: set[int] = {
            r["id"] for r in store.query("SELECT id FROM jobs WHERE state='running'")
        }
        with store.tx() as conn:
            store.add_event(conn, "coordinator", "coordinator started")
        for row in store.query("SELECT * FROM jobs WHERE state IN ('queued', 'running')"):
            self._progress[row["id"]] = s.JobProgress(**(loads(row["progress"]) or {}))

    # queries -------------------------------------------------------------------------------

    def info(self) -> s.ClusterInfo:
        c = self.config
        return s.ClusterInfo(
            api_version=s.API_VERSION,
            versions=c.versions,
            lighthouse=c.lighthouse,
            advertise=c.advertise,
            port=c.port,
            lighthouse_port=c.lighthouse_port,
            heartbeat_interval_s=c.heartbeat_interval_s,
            node_timeout_s=c.node_timeout_s,
        )

    def node_info(self, row: Any) -> s.NodeInfo:
        node_id = row["id"]
        return s.NodeInfo(
            id=node_id,
            name=row["name"],
            slot=row["slot"],
            address=row["address"],
            interface=row["interface"],
            hardware=s.Hardware(**loads(row["hardware"])),
            versions=s.Versions(**loads(row["versions"])),
            speed=row["speed"],
            measured_samples_per_s=self._measured.get(node_id, row["measured_sps"]),
            state=row["state"],
            last_heartbeat=self._last_seen.get(node_id, row["last_heartbeat"]),
            joined_at=row["joined_at"],
        )

    def nodes(self) -> list[s.NodeInfo]:
        return [self.node_info(row) for row in self.store.nodes()]

    def job_info(self, job_id: int) -> s.JobInfo:
        row = self.store.job(job_id)
        if row is None:
            raise NotFoundError(f"no job {job_id}: `potluck jobs` lists the jobs")
        progress = self._progress.get(job_id) or s.JobProgress(**(loads(row["progress"]) or {}))
        summary = loads(row["summary"])
        return s.JobInfo(
            id=row["id"],
            name=row["name"],
            state=row["state"],
            config=JobSpec.parse(loads(row["config"])),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            progress=progress,
            replicas=[
                s.JobReplica(
                    node=r["node"],
                    slot=r["slot"],
                    state=r["state"],
                    step=r["step"],
                    exit_code=r["exit_code"],
                    message=r["message"],
                )
                for r in self.store.replicas(job_id)
            ],
            summary=s.JobSummary(**summary) if summary else None,
            message=row["message"],
        )

    def jobs(self) -> list[s.JobInfo]:
        return [self.job_info(row["id"]) for row in self.store.jobs()]

    def events(self, job_id: int | None, after: int = 0) -> list[s.LogEntry]:
        if job_id is not None and self.store.job(job_id) is None:
            raise NotFoundError(f"no job {job_id}: `potluck jobs` lists the jobs")
        return [
            s.LogEntry(id=r["id"], t=r["t"], kind=r["kind"], message=r["message"], node=r["node"])
            for r in self.store.events(job_id, after)
        ]

    # nodes ---------------------------------------------------------------------------------

    def register(self, req: s.RegisterRequest) -> s.RegisterResponse:
        require_same_versions(self.config.versions, req.versions)
        now = time.time()
        hardware, versions = dumps(req.hardware.model_dump()), dumps(req.versions.model_dump())
        with self.store.tx() as conn:
            rows = conn.execute("SELECT * FROM nodes").fetchall()
            mine = next((r for r in rows if r["node_key"] == req.node_key), None)
            if mine is None:
                same_name = next((r for r in rows if r["name"] == req.name), None)
                if same_name is not None and same_name["state"] != "alive":
                    mine = same_name  # the same machine back with a fresh state dir
            if mine is not None:
                node_id, name, slot = mine["id"], mine["name"], mine["slot"]
                conn.execute(
                    "UPDATE nodes SET node_key=?, address=?, interface=?, hardware=?, versions=?, "
                    "speed=?, state='alive', last_heartbeat=? WHERE id=?",
                    (req.node_key, req.address, req.interface, hardware, versions, req.speed, now, node_id),
                )
                self.store.add_event(conn, "node", f"{name} rejoined from {req.address}", node_id=node_id)
            else:
                taken = {r["name"] for r in rows}
                name, n = req.name, 2
                while name in taken:
                    name, n = f"{req.name}-{n}", n + 1
                used = {r["slot"] for r in rows}
                slot = next(i for i in range(len(used) + 1) if i not in used)
                if slot >= MAX_NODES:
                    raise ConflictError(f"cluster is full ({slot} nodes): start a new state dir")
                node_id = conn.execute(
                    "INSERT INTO nodes (name, node_key, slot, address, interface, hardware, versions,"
                    " speed, state, last_heartbeat, joined_at) VALUES (?,?,?,?,?,?,?,?,'alive',?,?)",
                    (name, req.node_key, slot, req.address, req.interface, hardware, versions,
                     req.speed, now, now),
                ).lastrowid
                self.store.add_event(
                    conn, "node", f"{name} joined from {req.address} (slot {slot})", node_id=node_id
                )
        assert node_id is not None
        self._last_seen[node_id] = now
        log.info("node %s registered (id %s, slot %s)", name, node_id, slot)
        return s.RegisterResponse(
            node_id=node_id,
            name=name,
            slot=slot,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            lighthouse=self.config.lighthouse,
        )

    def leave(self, node_id: int) -> None:
        node = self._node(node_id)
        with self.store.tx() as conn:
            conn.execute("UPDATE nodes SET state='left' WHERE id=?", (node_id,))
            self._end_active_replicas(conn, node_id, "stopped", "node left the cluster")
            self.store.add_event(conn, "node", f"{node['name']} left the cluster", node_id=node_id)

    def _node(self, node_id: int) -> Any:
        node = self.store.node(node_id)
        if node is None:
            raise NotFoundError(f"unknown node {node_id}: register again")
        return node

    def heartbeat(self, node_id: int, req: s.HeartbeatRequest) -> s.HeartbeatResponse:
        now = time.time()
        if node_id not in self._last_seen:
            self._node(node_id)  # raises 404 for an unknown node
        self._last_seen[node_id] = now
        self._dirty_seen.add(node_id)
        node = None
        if req.replicas or self._node_state(node_id) != "alive":
            node = self._node(node_id)
            self._apply_reports(node, req.replicas)
        return s.HeartbeatResponse(assignment=self._assignment(node_id, node))

    def _node_state(self, node_id: int) -> str:
        rows = self.store.query("SELECT state FROM nodes WHERE id=?", (node_id,))
        return rows[0]["state"] if rows else "unknown"

    def _apply_reports(self, node: Any, reports: list[s.ReplicaReport]) -> None:
        node_id = node["id"]
        with self.store.tx() as conn:
            if node["state"] != "alive":
                conn.execute("UPDATE nodes SET state='alive' WHERE id=?", (node_id,))
                self.store.add_event(conn, "node", f"{node['name']} is back", node_id=node_id)
            for rep in reports:
                row = conn.execute(
                    "SELECT state, step, ready FROM replicas WHERE job_id=? AND node_id=?",
                    (rep.job_id, node_id),
                ).fetchone()
                if row is None or (
                    row["state"] == rep.state and row["step"] == rep.step and bool(row["ready"]) == rep.ready
                ):
                    continue
                if row["state"] in ("done", "failed", "stopped") and rep.state != row["state"]:
                    continue  # a final state is final
                conn.execute(
                    "UPDATE replicas SET state=?, step=?, exit_code=?, message=?, ready=?, "
                    "updated_at=? WHERE job_id=? AND node_id=?",
                    (rep.state, rep.step, rep.exit_code, rep.message, int(rep.ready), time.time(),
                     rep.job_id, node_id),
                )
                if row["state"] != rep.state:
                    text = f"replica on {node['name']}: {row['state']} -> {rep.state}"
                    if rep.message:
                        text += f" ({rep.message})"
                    self.store.add_event(conn, "replica", text, job_id=rep.job_id, node_id=node_id)

    def _running_job(self) -> Any:
        rows = self.store.query("SELECT * FROM jobs WHERE state='running' ORDER BY id LIMIT 1")
        return rows[0] if rows else None

    def _assignment(self, node_id: int, node: Any) -> s.Assignment | None:
        job = self._running_job()
        if job is None:
            return None
        rows = self.store.query(
            "SELECT state FROM replicas WHERE job_id=? AND node_id=?", (job["id"], node_id)
        )
        if rows and rows[0]["state"] in ("done", "failed", "stopped"):
            return None
        node = node or self._node(node_id)
        config = JobSpec.parse(loads(job["config"]))
        if node["slot"] >= config.fault.max_replicas:
            return None  # the job has no room for this slot (raise max_replicas)
        if not rows or rows[0]["state"] == "lost":
            if job["id"] in self._first_done_at:
                return None  # the job is finishing: no late joiners
            with self.store.tx() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO replicas (job_id, node_id, slot, state, updated_at) "
                    "VALUES (?, ?, ?, 'assigned', ?)",
                    (job["id"], node_id, node["slot"], time.time()),
                )
                verb = "re-assigned" if rows else "assigned"
                self.store.add_event(
                    conn, "replica", f"{verb} to {node['name']} (slot {node['slot']})",
                    job_id=job["id"], node_id=node_id,
                )
        return s.Assignment(
            job_id=job["id"],
            slot=node["slot"],
            name=node["name"],
            lighthouse=self.config.lighthouse,
            job=config,
            go=job["id"] in self._released,
            secret=job_secret(self._job_key, job["id"], job["created_at"]),
        )

    # metrics -------------------------------------------------------------------------------

    def metrics(self, node_id: int, job_id: int, req: s.MetricsRequest) -> int:
        """Store a batch of metrics records; returns how many were stored."""
        node = self._node(node_id)
        if self.store.job(job_id) is None:
            raise NotFoundError(f"no job {job_id}")
        records = [_finite(r.model_dump(exclude_none=True)) for r in req.records]
        progress = self._progress.setdefault(job_id, s.JobProgress())
        rows = []
        for rec in records:
            kind = str(rec.get("type", "unknown"))
            step = rec.get("step") if isinstance(rec.get("step"), int) else None
            rows.append((job_id, node_id, kind, step, dumps(rec)))
            self._fold(progress, node_id, rec)
        self._progress_dirty.add(job_id)
        with self.store.tx() as conn:
            conn.executemany(
                "INSERT INTO metrics (job_id, node_id, type, step, record) VALUES (?,?,?,?,?)", rows
            )
            for rec in records:
                if rec.get("type") == "done":
                    conn.execute(
                        "UPDATE replicas SET done=? WHERE job_id=? AND node_id=?",
                        (dumps(rec), job_id, node_id),
                    )
                    self._first_done_at.setdefault(job_id, time.time())
        self._append_run_file(job_id, node["name"], records)
        return len(rows)

    def _fold(self, progress: s.JobProgress, node_id: int, rec: dict[str, Any]) -> None:
        kind = rec.get("type")
        if kind == "step" and rec.get("committed", True):
            step = rec.get("step")
            if isinstance(step, int) and step >= progress.step:
                progress.step = step
                progress.loss = rec.get("loss", progress.loss)
                progress.samples_per_s = rec.get("samples_per_s", progress.samples_per_s)
                progress.participants = rec.get("participants", progress.participants)
            batch, compute = rec.get("local_batch"), rec.get("compute_s")
            if isinstance(batch, (int, float)) and isinstance(compute, (int, float)) and compute > 0:
                rate = batch / compute
                old = self._measured.get(node_id)
                self._measured[node_id] = rate if old is None else 0.8 * old + 0.2 * rate
        # Allocation and committed step records both carry the allocation in force.
        alloc = rec.get("allocation")
        if isinstance(alloc, dict) and alloc and (kind == "allocation" or rec.get("committed")):
            total = sum(v for v in alloc.values() if isinstance(v, (int, float))) or 1
            if any(str(slot) not in self._slot_names for slot in alloc):
                self._slot_names = {str(r["slot"]): r["name"] for r in self.store.nodes()}
            progress.shares = {
                self._slot_names.get(str(slot), f"slot {slot}"): round(b / total, 4)
                for slot, b in alloc.items()
                if isinstance(b, (int, float))
            }

    def _run_dir(self, job_id: int) -> Path:
        return self.experiments / f"job-{job_id}"

    def _append_run_file(self, job_id: int, node_name: str, records: list[dict[str, Any]]) -> None:
        path = self._run_dir(job_id) / "replicas" / f"{node_name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)

    # jobs ----------------------------------------------------------------------------------

    def submit(self, req: s.JobSubmit) -> s.JobInfo:
        config = job_spec_from(req.config)
        if not any(r["state"] == "alive" for r in self.store.nodes()):
            raise ConflictError(
                "no live nodes in the cluster: run `potluck join` on a machine (or start "
                "`potluck host` without --no-local-agent)",
            )
        raw = config.model_dump()
        with self.store.tx() as conn:
            job_id = conn.execute(
                "INSERT INTO jobs (name, state, config, created_at) VALUES (?, 'queued', ?, ?)",
                (req.name or f"{config.model.name}-{config.data.name}", dumps(raw), time.time()),
            ).lastrowid
            assert job_id is not None
            self.store.add_event(conn, "job", "submitted", job_id=job_id)
        self._progress[job_id] = s.JobProgress()
        self._start_queued()
        return self.job_info(job_id)

    def cancel(self, job_id: int) -> s.JobInfo:
        job = self.store.job(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}: `potluck jobs` lists the jobs")
        if job["state"] in s.FINISHED_JOB_STATES:
            raise ConflictError(f"job {job_id} already {job['state']}")
        self._finish(job_id, "cancelled", "cancelled by user")
        self._start_queued()
        return self.job_info(job_id)

    def _start_queued(self) -> None:
        if self._running_job() is not None:
            return
        rows = self.store.query("SELECT id FROM jobs WHERE state='queued' ORDER BY id LIMIT 1")
        if not rows:
            return
        job_id = rows[0]["id"]
        now = time.time()
        with self.store.tx() as conn:
            conn.execute("UPDATE jobs SET state='running', started_at=? WHERE id=?", (now, job_id))
            # Every live node gets a replica now, so the start barrier knows whom to wait for.
            config = loads(conn.execute("SELECT config FROM jobs WHERE id=?", (job_id,)).fetchone()[0])
            alive = conn.execute(
                "SELECT id, name, slot FROM nodes WHERE state='alive' AND slot < ?",
                (config["fault"]["max_replicas"],),
            ).fetchall()
            conn.executemany(
                "INSERT INTO replicas (job_id, node_id, slot, state, updated_at) "
                "VALUES (?, ?, ?, 'assigned', ?)",
                [(job_id, n["id"], n["slot"], now) for n in alive],
            )
            names = ", ".join(n["name"] for n in alive)
            self.store.add_event(conn, "job", f"started on {len(alive)} node(s): {names}", job_id=job_id)

    def _end_active_replicas(self, conn: Any, node_id: int, state: str, why: str) -> None:
        rows = conn.execute(
            "SELECT job_id FROM replicas WHERE node_id=? AND state IN ('assigned','starting','running')",
            (node_id,),
        ).fetchall()
        for r in rows:
            conn.execute(
                "UPDATE replicas SET state=?, message=?, updated_at=? WHERE job_id=? AND node_id=?",
                (state, why, time.time(), r["job_id"], node_id),
            )
            self.store.add_event(conn, "replica", f"replica {state}: {why}", job_id=r["job_id"], node_id=node_id)

    def _finish(self, job_id: int, state: str, message: str) -> None:
        summary = self.summarize(job_id, state)
        run_dir = self._run_dir(job_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps(summary.model_dump(), indent=2) + "\n")
        progress = self._progress.pop(job_id, None)
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE jobs SET state=?, finished_at=?, message=?, summary=?, progress=? WHERE id=?",
                (state, time.time(), message, dumps(summary.model_dump()),
                 dumps(progress.model_dump()) if progress else "{}", job_id),
            )
            conn.execute(
                "UPDATE replicas SET state='stopped', updated_at=? WHERE job_id=? "
                "AND state IN ('assigned','starting','running','lost')",
                (time.time(), job_id),
            )
            self.store.add_event(conn, "job", f"{state}: {message}", job_id=job_id)
        self._first_done_at.pop(job_id, None)
        self._no_active_since.pop(job_id, None)
        self._released.discard(job_id)
        log.info("job %s %s: %s", job_id, state, message)

    def summarize(self, job_id: int, state: str) -> s.JobSummary:
        """Final numbers of a job from its stored metrics.

        ``efficiency`` is the fraction of replica step time spent computing (the rest is
        communication and waiting for slower peers), averaged over committed steps.
        """
        replicas = self.store.replicas(job_id)
        done = [loads(r["done"]) for r in replicas if r["done"]]
        steps_rows = self.store.query(
            "SELECT record FROM metrics WHERE job_id=? AND type='step'", (job_id,)
        )
        steps = [json.loads(r["record"]) for r in steps_rows]
        committed = [r for r in steps if r.get("committed", True)]
        max_step = max((r.get("step") or 0 for r in committed), default=0)
        fractions = []
        for r in committed:
            parts = [r.get(k) for k in ("compute_s", "comm_s", "wait_s")]
            if all(isinstance(p, (int, float)) for p in parts) and sum(parts) > 0:  # type: ignore[arg-type]
                fractions.append(parts[0] / sum(parts))  # type: ignore[arg-type,operator]

        def mean(values: list[Any]) -> float | None:
            good = [v for v in values if isinstance(v, (int, float))]
            return sum(good) / len(good) if good else None

        sps = mean([d.get("samples_per_s") for d in done])
        if sps is None:
            sps = mean([r.get("samples_per_s") for r in committed[-20:]])
        return s.JobSummary(
            job_id=job_id,
            state=state,  # type: ignore[arg-type]
            nodes=sorted({r["node"] for r in replicas}),
            steps=max(max_step, max((d.get("step") or 0 for d in done), default=0)),
            samples_per_s=sps,
            efficiency=mean(fractions),
            final_loss=mean([d.get("final_loss") for d in done]),
            test_accuracy=mean([d.get("test_accuracy") for d in done]),
            run_dir=str(self._run_dir(job_id)),
        )

    # housekeeping --------------------------------------------------------------------------

    def tick(self) -> None:
        """Once a second: flush heartbeats, mark silent nodes lost, end finished jobs."""
        now = time.time()
        timeout = self.config.node_timeout_s
        with self.store.tx() as conn:
            if self._dirty_seen:
                conn.executemany(
                    "UPDATE nodes SET last_heartbeat=? WHERE id=?",
                    [(self._last_seen[i], i) for i in self._dirty_seen if i in self._last_seen],
                )
                self._dirty_seen.clear()
            for node_id, rate in self._measured.items():
                conn.execute("UPDATE nodes SET measured_sps=? WHERE id=?", (rate, node_id))
            for row in conn.execute("SELECT id, name FROM nodes WHERE state='alive'").fetchall():
                if now - self._last_seen.get(row["id"], 0) > timeout:
                    conn.execute("UPDATE nodes SET state='lost' WHERE id=?", (row["id"],))
                    self.store.add_event(
                        conn, "node", f"{row['name']} lost (no heartbeat for {timeout:.0f} s)",
                        node_id=row["id"],
                    )
                    self._end_active_replicas(conn, row["id"], "lost", "node stopped heartbeating")
            for job_id in self._progress_dirty:
                progress = self._progress.get(job_id)
                if progress is not None:
                    conn.execute(
                        "UPDATE jobs SET progress=? WHERE id=?", (dumps(progress.model_dump()), job_id)
                    )
            self._progress_dirty.clear()
        self._advance_running_job(now)
        self._start_queued()

    def _advance_running_job(self, now: float) -> None:
        job = self._running_job()
        if job is None:
            return
        job_id = job["id"]
        replicas = self.store.replicas(job_id)
        active = [r for r in replicas if r["state"] in ACTIVE_REPLICA]
        if job_id not in self._released and active:
            ready = all(r["ready"] or r["state"] == "running" for r in active)
            if ready or now - (job["started_at"] or now) > BARRIER_TIMEOUT_S:
                self._released.add(job_id)
                with self.store.tx() as conn:
                    why = "all replicas ready" if ready else "start barrier timed out"
                    self.store.add_event(conn, "job", f"training starts ({why})", job_id=job_id)
        done = [r for r in replicas if r["done"] or r["state"] == "done"]
        if done and not active:
            self._finish(job_id, "succeeded", f"finished on {len(done)} node(s)")
        elif done and now - self._first_done_at.get(job_id, now) > STRAGGLER_GRACE_S:
            self._finish(job_id, "succeeded", "finished (stragglers stopped)")
        elif active or not replicas:
            self._no_active_since.pop(job_id, None)
        elif all(r["state"] == "failed" for r in replicas):
            reasons = "; ".join(f"{r['node']}: {r['message'] or 'exit ' + str(r['exit_code'])}" for r in replicas)
            self._finish(job_id, "failed", f"every replica failed ({reasons})")
        elif now - self._no_active_since.setdefault(job_id, now) > ORPHAN_TIMEOUT_S:
            self._finish(job_id, "failed", "no replica left running (all nodes lost or failed)")
