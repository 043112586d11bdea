"""The dashboard's view of a coordinator: :class:`Board` builds snapshots and job details.

Read-only: it reads the coordinator's store and what its parts keep in memory (heartbeat
times, resources, measured speeds, live progress) and never changes either. Snapshots are
cached for ``SNAPSHOT_TTL_S`` (``SNAPSHOT_FRESH_S`` once a new step has been committed), so
any number of open pages costs at most a few builds a second.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

from potluck.contracts import dashboard as d
from potluck.contracts import wire as s
from potluck.contracts.errors import NotFoundError, PotluckError
from potluck.contracts.jobspec import DEFAULT_STEPS, JobSpec
from potluck.contracts.versions import compare_versions
from potluck.coordinator.service import Coordinator
from potluck.coordinator.store import loads
from potluck.dashboard.recorder import JobRecorder
from potluck.net.address import AddressKind, classify

SNAPSHOT_TTL_S = 0.5
SNAPSHOT_FRESH_S = 0.2
"""A cached snapshot older than this is rebuilt when a step was committed since."""
HISTORY_JOBS = 50
JOB_EVENTS = 50
MAX_MARKERS = 200
KEEP_RECORDERS = 8
"""Jobs whose series stay in memory (the running one and recently viewed ones)."""

NETWORK: dict[AddressKind, d.NetworkKind] = {
    AddressKind.PRIVATE: "LAN", AddressKind.VPN: "VPN", AddressKind.LOOPBACK: "loopback",
    AddressKind.LINK_LOCAL: "link-local", AddressKind.PUBLIC: "public",
}


def network_kind(address: str, interface: str | None) -> d.NetworkKind | None:
    try:
        return NETWORK[classify(address, interface)]
    except PotluckError:  # an address the store holds but the classifier cannot read
        return None


def marker_kind(kind: str, message: str) -> d.MarkerKind | None:
    """Which marker a log line is on a job's charts (None: not drawn)."""
    if kind == "allocation":
        return "rebalance"
    if kind == "node":
        if " rejoined " in message or " joined " in message:
            return "join"
        if message.endswith("left the cluster"):
            return "leave"
        if " lost (" in message:
            return "lost"
        if message.endswith(" is back"):
            return "back"
        return None
    if kind == "job":
        if message.startswith("training restarted"):
            return "restart"
        if message.startswith(("started on", "training starts")):
            return "start"
        if message.startswith(("succeeded:", "failed:", "cancelled:")):
            return "end"
    return None


def log_line(row: Any) -> d.LogLine:
    return d.LogLine(id=row["id"], t=row["t"], kind=row["kind"], message=row["message"],
                     node=row["node"], job_id=row["job_id"])


def describe(spec: JobSpec) -> str:
    """What a job trains: ``model/data``, or its job file's name."""
    if spec.code.file:
        return spec.code.file.rsplit("/", 1)[-1]
    return f"{spec.model.name}/{spec.data.name}"


def total_steps(spec: JobSpec) -> int | None:
    if spec.steps is not None:
        return spec.steps
    return None if spec.epochs is not None else DEFAULT_STEPS


class Board:
    """Snapshots of one coordinator (call from its event loop)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._recorders: OrderedDict[int, JobRecorder] = OrderedDict()
        self._cached: tuple[float, int, d.Snapshot] | None = None
        self._static: dict[int, tuple[tuple[str, ...], tuple[Any, ...]]] = {}
        """Node id -> (its stored hardware, versions, address, interface) and what the
        rows derive from them, so a snapshot parses them only when they change."""

    @property
    def steps_seen(self) -> int:
        """Moves whenever a job commits a step (the stream sends a snapshot then)."""
        return self.coordinator.telemetry.steps_seen

    # jobs ----------------------------------------------------------------------------------

    def _recorder(self, job_id: int, names: dict[int, str]) -> JobRecorder:
        rec = self._recorders.pop(job_id, None) or JobRecorder(job_id)
        self._recorders[job_id] = rec
        while len(self._recorders) > KEEP_RECORDERS:
            self._recorders.popitem(last=False)
        rec.update(self.coordinator.store, names)
        return rec

    def _brief(self, row: Any) -> d.JobBrief:
        spec = self.coordinator.lifecycle.spec(row)
        progress = self.coordinator.telemetry.progress_of(row["id"], row)
        summary = loads(row["summary"])
        return d.JobBrief(id=row["id"], name=row["name"], state=row["state"],
                          model=describe(spec), created_at=row["created_at"],
                          started_at=row["started_at"], finished_at=row["finished_at"],
                          message=row["message"],
                          step=progress.step if progress.participants is not None else None,
                          summary=s.JobSummary(**summary) if summary else None)

    def job(self, job_id: int, now: float | None = None) -> d.JobDetail:
        """A job with its charts and events. Raises NotFoundError for an unknown job."""
        c = self.coordinator
        row = c.store.job(job_id)
        if row is None:
            raise NotFoundError(f"no job {job_id}: the History view lists the jobs")
        now = time.time() if now is None else now
        nodes = c.store.nodes()
        names = {r["id"]: r["name"] for r in nodes}
        spec = c.lifecycle.spec(row)
        progress = c.telemetry.progress_of(job_id, row)
        rec = self._recorder(job_id, names)
        running = row["state"] == "running"
        step = progress.step if progress.participants is not None else None
        total = total_steps(spec)
        sps = progress.samples_per_s
        eta = None
        if running and sps and total is not None and step is not None:
            eta = max(0, total - step - 1) * spec.global_batch / sps
        efficiency = None
        if running and sps and progress.shares:
            ideal = sum(c.telemetry.measured.get(r["id"], r["measured_sps"] or 0.0) or 0.0
                        for r in nodes if r["name"] in progress.shares)
            efficiency = round(sps / ideal, 4) if ideal > 0 else None
        summary = loads(row["summary"])
        since = row["started_at"] or row["created_at"]
        markers = []
        for m in c.store.job_markers(job_id, since, row["finished_at"] or now):
            kind = marker_kind(m["kind"], m["message"])
            if kind is not None:
                markers.append(d.Marker(id=m["id"], t=m["t"], kind=kind, label=m["message"][:200]))
        job_nodes = [r["node"] for r in c.store.replicas(job_id)]
        return d.JobDetail(
            id=job_id, name=row["name"], state=row["state"],
            model=describe(spec), global_batch=spec.global_batch,
            policy=spec.balancer.policy, sync=spec.sync.strategy,
            created_at=row["created_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], message=row["message"], step=step,
            total_steps=total, eta_s=round(eta, 1) if eta is not None else None,
            loss=progress.loss, samples_per_s=sps, participants=progress.participants,
            efficiency=efficiency,
            compute_fraction=rec.compute_fraction if summary is None
            else summary.get("compute_fraction"),
            restarts=progress.restarts, shares=progress.shares,
            node_samples=dict(sorted(rec.node_samples.items())),
            series=rec.series(job_nodes), stragglers=rec.stragglers(job_nodes),
            markers=markers[-MAX_MARKERS:],
            events=[log_line(r) for r in c.store.log_tail(job_id, JOB_EVENTS)],
            summary=s.JobSummary(**summary) if summary else None,
        )

    # the whole cluster ---------------------------------------------------------------------

    def _nodes(self, now: float, job: d.JobDetail | None) -> list[d.NodeRow]:
        c = self.coordinator
        live = job if job is not None and job.state == "running" else None
        total = sum(live.node_samples.values()) if live else 0
        rows = []
        for r in sorted(c.store.nodes(), key=lambda r: r["slot"]):
            hw, versions, mismatch, network = self._derived(r)
            alive = r["state"] == "alive"
            age = max(0.0, now - c.membership.last_seen.get(r["id"], r["last_heartbeat"]))
            samples = live.node_samples.get(r["name"]) if live else None
            rows.append(d.NodeRow(
                id=r["id"], name=r["name"], slot=r["slot"], state=r["state"],
                address=r["address"], interface=r["interface"],
                network=network, os=hw.os,
                cpu_cores=hw.cpu_cores, memory_mb=hw.memory_mb, gpus=hw.gpus, speed=r["speed"],
                versions=versions, version_mismatch=list(mismatch),
                heartbeat_age_s=round(age, 2), late=age > c.config.timeouts.node_timeout_s,
                measured_samples_per_s=c.telemetry.measured.get(r["id"], r["measured_sps"]),
                share=live.shares.get(r["name"]) if live else None,
                samples=samples,
                samples_fraction=round(samples / total, 4) if samples is not None and total else None,
                telemetry=c.membership.resources.get(r["id"]) if alive else None,
            ))
        if len(self._static) > len(rows):  # forgotten nodes
            self._static = {row.id: self._static[row.id] for row in rows}
        return rows

    def _derived(self, r: Any) -> tuple[Any, ...]:
        """A node row's hardware, versions, version mismatches and network kind."""
        key = (r["hardware"], r["versions"], r["address"], r["interface"])
        known = self._static.get(r["id"])
        if known is not None and known[0] == key:
            return known[1]
        hw = s.Hardware(**loads(r["hardware"]))
        versions = s.Versions(**loads(r["versions"]))
        mismatch = tuple(x.component for x in compare_versions(self.coordinator.config.versions, versions))
        derived = (hw, versions, mismatch, network_kind(r["address"], r["interface"]))
        self._static[r["id"]] = (key, derived)
        return derived

    def snapshot(self) -> d.Snapshot:
        """Everything the page shows (cached ``SNAPSHOT_TTL_S``, ``SNAPSHOT_FRESH_S`` once a
        step has been committed since)."""
        now = time.time()
        steps = self.steps_seen
        if self._cached is not None:
            age = now - self._cached[0]
            if age < SNAPSHOT_FRESH_S or (age < SNAPSHOT_TTL_S and steps == self._cached[1]):
                return self._cached[2]
        c = self.coordinator
        jobs = c.store.jobs(HISTORY_JOBS + 20)
        running = next((r for r in jobs if r["state"] == "running"), None)
        shown = running if running is not None else (jobs[0] if jobs else None)
        job = self.job(shown["id"], now) if shown is not None else None
        snap = d.Snapshot(
            time=now,
            host=d.HostView(advertise=c.config.advertise, port=c.config.port,
                            versions=c.config.versions, node_timeout_s=c.config.timeouts.node_timeout_s),
            storage_problem=c.storage_problem,
            nodes=self._nodes(now, job),
            job=job,
            queued=[self._brief(r) for r in reversed(jobs) if r["state"] == "queued"],
            history=[self._brief(r) for r in jobs
                     if r["state"] in s.FINISHED_JOB_STATES][:HISTORY_JOBS],
            links=[s.LinkFact(**row) for row in c.store.links()],
            last_event_id=c.store.last_event_id(),
        )
        self._cached = (now, steps, snap)
        return snap

    # logs and raw data ---------------------------------------------------------------------

    def log_text(self, query: str = "") -> str:
        """Every log line (or those containing ``query``, any case) as plain text."""
        needle = query.lower()
        out = []
        for row in self.coordinator.store.events(None, 0):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["t"]))
            job = f" job {row['job_id']}" if row["job_id"] is not None else ""
            node = f" {row['node']}" if row["node"] else ""
            line = f"{when} [{row['kind']}]{job}{node}: {row['message']}"
            if needle in line.lower():
                out.append(line)
        return "\n".join(out) + ("\n" if out else "")

    def steps_csv(self, job_id: int) -> str:
        """Every step event of a job (committed or not), one CSV row per replica and step."""
        c = self.coordinator
        if c.store.job(job_id) is None:
            raise NotFoundError(f"no job {job_id}: the History view lists the jobs")
        names = {r["id"]: r["name"] for r in c.store.nodes()}
        cols = ["t", "step", "node", "slot", "committed", "participants", "local_batch",
                "compute_s", "quorum_s", "allreduce_s", "commit_s", "data_s", "wait_s", "comm_s",
                "loss", "samples_per_s"]
        lines = [",".join(cols)]
        after = 0
        while True:
            rows = c.store.metrics_after(job_id, after, ("step",), 20_000)
            if not rows:
                break
            for row in rows:
                after = row["id"]
                e = json.loads(row["record"])
                e["node"] = names.get(row["node_id"], e.get("replica", ""))
                lines.append(",".join(csv_cell(e.get(col)) for col in cols))
        return "\n".join(lines) + "\n"


def csv_cell(value: Any) -> str:
    """One CSV field: numbers as they are; text quoted when needed, and a leading ``=``,
    ``+``, ``-`` or ``@`` defused so a spreadsheet does not run it as a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if text[:1] in ("=", "+", "-", "@"):
        text = "'" + text
    if any(ch in text for ch in ',"\n\r'):
        text = '"' + text.replace('"', '""') + '"'
    return text
