"""The agent of one node: join, heartbeat, run what the coordinator assigns, stream metrics.

Loop (every heartbeat interval): forward new metrics records of the running replica, send a
heartbeat carrying the replica's state and the node's resources (``telemetry.py``), and
reconcile with the answer: start the assigned job, or stop a replica whose job is no longer
assigned. The agent keeps running between jobs.

A lost connection does not stop training: the replica keeps going under torchft, records are
buffered, and the agent retries with exponential backoff (reported once per outage). A 404 on
heartbeat (the coordinator's database was replaced) triggers a fresh registration.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from potluck.agent.hardware import detect_hardware
from potluck.agent.jobcode import Upload, Uploader, fetch_bundle, requirement_problems
from potluck.agent.runner import NodeSettings, ReplicaRunner
from potluck.agent.telemetry import TelemetrySampler
from potluck.contracts import wire as s
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.errors import (
    FATAL_EXIT_CODE,
    ApiResponseError,
    ClusterError,
    ConfigError,
    ConflictError,
    ForbiddenError,
    HostUnreachableError,
    NodeAuthError,
    NotFoundError,
    StorageError,
)
from potluck.contracts.versions import local_versions, require_same_versions
from potluck.coordinator.auth import write_private
from potluck.log import get_logger

log = get_logger("agent")

MAX_BACKOFF_S = 15.0
MAX_RESTARTS = 5
"""Times one job's replica is restarted on this node after a crash before it counts as failed."""
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Wait before restart 1, 2, ... (bounded: a replica that crashes at once does not spin)."""
MAX_BUFFERED_RECORDS = 200_000
METRICS_BATCH = 1000


@dataclass(kw_only=True)
class AgentConfig:
    """One node's agent."""

    url: str
    """Coordinator URL, e.g. ``http://100.64.1.2:7077``."""
    token: str
    """Join token."""
    name: str
    """Requested node name (the coordinator may add a suffix)."""
    state_dir: Path
    """Holds the node key and the replicas' run directories."""
    node: NodeSettings
    """Address, interface, speed and device for replicas."""
    interface: str | None = None
    """Interface of the address (reported to the coordinator)."""
    builtin_only: bool = False
    """Run only built-in recipes: refuse jobs that ship code (``potluck join --builtin-only``)."""


def load_node_key(state_dir: Path) -> str:
    """The random key that identifies this node across agent restarts (created once, 0600)."""
    path = state_dir / "node_key"
    if path.exists():
        key = path.read_text().strip()
        if len(key) >= 16:
            return key
    key = secrets.token_hex(16)
    write_private(path, key + "\n")
    return key


def default_node_name() -> str:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return name.strip("-._")[:64] or "node"


class Service(Protocol):
    """A background service that runs beside the heartbeat loop."""

    def start(self) -> object: ...

    def stop(self) -> None: ...


class Agent:
    """Call :meth:`join` (raises on a bad token, versions or host), then :meth:`run`."""

    def __init__(self, config: AgentConfig, *, on_event: Callable[[str], None] | None = None,
                 services: Sequence[Callable[[Agent], Service]] = ()) -> None:
        """``services`` are factories of background services (e.g. the doctor's responder)
        that start when :meth:`run` starts and stop when it ends; layers above the agent plug
        in this way, the agent knows none of them."""
        self.config = config
        self._service_factories = list(services)
        self.services: list[Service] = []
        self.client = CoordinatorClient(config.url, config.token)
        self.stop_event = threading.Event()
        self.on_event = on_event or (lambda msg: log.warning("%s", msg))
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.node_key = load_node_key(config.state_dir)
        self.runner: ReplicaRunner | None = None
        self.pending: list[dict[str, Any]] = []
        self.pending_job: int | None = None
        self.finished_reports: dict[int, s.ReplicaReport] = {}
        self.node_id: int | None = None
        self.registration: s.RegisterResponse | None = None
        self.restarts: dict[int, int] = {}
        """Job id -> crashed replicas restarted so far."""
        self._restart_at: tuple[int, float] | None = None
        """A crashed replica's job and when (monotonic) to start it again."""
        self.interval_s = 1.0
        self.uploader: Uploader | None = None
        self.sampler = TelemetrySampler()
        """CPU, RAM and GPU figures sent with every heartbeat."""

    # joining --------------------------------------------------------------------------------

    def check_versions(self) -> s.ClusterInfo:
        """Compare with the host before registering. Raises VersionMismatchError with the diffs."""
        info = self.client.info()
        require_same_versions(info.versions, local_versions(), where="this machine")
        self.interval_s = info.heartbeat_interval_s
        return info

    def join(self) -> s.RegisterResponse:
        """Register with the coordinator (idempotent: the node key keeps name and slot)."""
        self.check_versions()
        reg = self.client.register(
            s.RegisterRequest(
                name=self.config.name,
                node_key=self.node_key,
                address=self.config.node.advertise,
                interface=self.config.interface,
                hardware=detect_hardware(),
                versions=local_versions(),
                speed=self.config.node.speed,
            )
        )
        self.node_id, self.registration = reg.node_id, reg
        self.interval_s = reg.heartbeat_interval_s
        if self.uploader is None or self.uploader.node_id != reg.node_id:
            if self.uploader is not None:
                self.uploader.close(0)
            self.uploader = Uploader(self.client, reg.node_id)
        return reg

    # the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Heartbeat until :meth:`stop`; then stop the replica and leave the cluster."""
        backoff, outage_since, host_error = 0.0, None, ""
        self.services = [factory(self) for factory in self._service_factories]
        for service in self.services:
            service.start()
        try:
            while not self.stop_event.is_set():
                try:
                    self._once()
                    if host_error:
                        self.on_event("the host answers normally again")
                    host_error = ""
                    if outage_since is not None:
                        self.on_event(f"reconnected to {self.config.url} after {time.time() - outage_since:.0f} s")
                    backoff, outage_since = 0.0, None
                    wait = self.interval_s
                except HostUnreachableError as exc:
                    if outage_since is None:
                        outage_since = time.time()
                        self.on_event(f"lost connection to the host: {exc}; retrying with backoff")
                    backoff = min(MAX_BACKOFF_S, max(0.5, backoff * 2))
                    wait = backoff
                except NodeAuthError:
                    # The host no longer knows our credential (its database was replaced, or
                    # this node registered again elsewhere): register again, with backoff.
                    self.on_event("the host refused this node's credential: registering again")
                    self._rejoin()
                    backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
                    wait = backoff
                except NotFoundError as exc:
                    if "unknown node" in str(exc):
                        self.on_event("the host does not know this node any more: registering again")
                        self._rejoin()
                        wait = 0.0
                    else:
                        self.on_event(f"host error: {exc}")
                        wait = self.interval_s
                except (ApiResponseError, ConflictError, StorageError) as exc:
                    if str(exc) != host_error:  # once per problem, not every heartbeat
                        self.on_event(f"host error: {exc}")
                    host_error = str(exc)
                    wait = self.interval_s
                self.stop_event.wait(wait)
        finally:
            self._shutdown()

    def _rejoin(self) -> None:
        try:
            self.join()
        except ClusterError as exc:
            self.on_event(f"could not register again: {exc}")

    def stop(self) -> None:
        self.stop_event.set()

    def _once(self) -> None:
        assert self.node_id is not None
        reports = self._collect()
        self._flush_metrics()
        reply = self.client.heartbeat(
            self.node_id, s.HeartbeatRequest(replicas=reports, telemetry=self.sampler.sample()))
        # A finished replica's final state has been delivered: forget it.
        for rep in reports:
            if rep.state in ("done", "failed"):
                self.finished_reports.pop(rep.job_id, None)
        self._reconcile(reply.assignment)

    def _collect(self) -> list[s.ReplicaReport]:
        reports = list(self.finished_reports.values())
        runner = self.runner
        if runner is None:
            return reports
        records = runner.read_records()
        report = runner.report()  # after reading, so a 'done' record is never missed
        records += runner.read_records()
        self._send_files(runner, records)
        if runner.finished and self.uploader is not None and not self.uploader.idle:
            # the trained model is on its way to the host: "done" only once it is there
            reports.append(s.ReplicaReport(job_id=runner.job_id, state="running",
                                           step=report.step))
            if records:
                self.pending_job = runner.job_id
                self.pending.extend(records)
            return reports
        if records:
            if self.pending_job not in (None, runner.job_id):
                self.pending.clear()
            self.pending_job = runner.job_id
            self.pending.extend(records)
            del self.pending[:-MAX_BUFFERED_RECORDS]
        if runner.finished:
            runner.stop()
            self.runner = None
            done = self.restarts.get(report.job_id, 0)
            fatal = report.exit_code == FATAL_EXIT_CODE  # the job's code: a restart cannot help
            if report.state == "failed" and done < MAX_RESTARTS and not fatal:
                delay = RESTART_BACKOFF_S[min(done, len(RESTART_BACKOFF_S) - 1)]
                self.restarts[report.job_id] = done + 1
                self._restart_at = (report.job_id, time.monotonic() + delay)
                why = f"{report.message}; restarting in {delay:.0f} s ({done + 1} of {MAX_RESTARTS})"
                self.on_event(f"job {report.job_id}: replica {why}")
                reports.append(report.model_copy(update={"state": "starting", "message": why}))
                return reports
            if report.state == "failed" and done:
                report = report.model_copy(update={"message": f"{report.message} (after {done} restarts)"})
            self.finished_reports[report.job_id] = report
            level = "finished" if report.state == "done" else f"failed: {report.message}"
            self.on_event(f"job {report.job_id}: replica {level}")
            reports = list(self.finished_reports.values())
        else:
            reports.append(report)
        return reports

    def _send_files(self, runner: ReplicaRunner, records: list[dict[str, Any]]) -> None:
        """Queue each checkpoint the replica announced (and, with the last, the model)."""
        if self.uploader is None:
            return
        for rec in records:
            if rec.get("type") != "checkpoint" or not isinstance(rec.get("file"), str):
                continue
            folder = runner.checkpoint_dir
            if rec.get("final"):
                self.uploader.add(Upload(runner.job_id, "model", folder / "model.safetensors"))
            self.uploader.add(Upload(runner.job_id, "checkpoint", folder / rec["file"],
                                     int(rec.get("step", 0))))

    def _prepare(self, assignment: s.Assignment) -> tuple[Path | None, Path | None]:
        """The job's code folder and the checkpoint to start from (None, None: neither).
        Raises ConfigError with one line when this node cannot run the job."""
        job = assignment.job
        code_dir = None
        if job.code.file is not None:
            if self.config.builtin_only:
                raise ConfigError("this node runs built-in recipes only (joined with "
                                  "--builtin-only) and does not run a job file")
            problems = requirement_problems(job.code.requirements)
            if problems:
                raise ConfigError("; ".join(problems))
            assert job.code.bundle is not None
            code_dir = fetch_bundle(self.client, job.code.bundle, self.config.state_dir / "bundles")
        resume = None
        if assignment.resume is not None:
            folder = self.config.state_dir / "checkpoints" / f"job-{assignment.job_id}"
            resume = folder / f"step-{assignment.resume.step:08d}.safetensors"
            if not resume.is_file():
                step, data = self.client.checkpoint(assignment.job_id)
                resume = folder / f"step-{step:08d}.safetensors"
                from potluck.system import write_atomic

                write_atomic(resume, data)
        return code_dir, resume

    def _flush_metrics(self) -> None:
        assert self.node_id is not None
        while self.pending and self.pending_job is not None:
            batch = self.pending[:METRICS_BATCH]
            try:
                self.client.metrics(self.node_id, self.pending_job, batch)
            except (NotFoundError, ConfigError, ForbiddenError) as exc:
                log.warning("dropping %d metrics records the host refused: %s", len(batch), exc)
            del self.pending[: len(batch)]

    def _reconcile(self, assignment: s.Assignment | None) -> None:
        runner = self.runner
        if runner is not None and (assignment is None or assignment.job_id != runner.job_id):
            self.on_event(f"job {runner.job_id}: stopping the replica (no longer assigned)")
            runner.stop()
            self.runner = None
        elif runner is not None and assignment is not None and assignment.go and runner.waiting:
            runner.release()
        if self._restart_at is not None and (assignment is None or assignment.job_id != self._restart_at[0]):
            self._restart_at = None  # the crashed replica's job is over or no longer ours
        if assignment is not None and self.runner is None:
            if assignment.job_id in self.finished_reports:
                return  # our final report has not reached the host yet
            if self._restart_at is not None:
                if time.monotonic() < self._restart_at[1]:
                    return  # backing off after a crash
                self._restart_at = None
            try:
                code_dir, resume = self._prepare(assignment)
            except ConfigError as exc:
                self.on_event(f"job {assignment.job_id}: cannot run it here: {exc}")
                self.finished_reports[assignment.job_id] = s.ReplicaReport(
                    job_id=assignment.job_id, state="failed", exit_code=FATAL_EXIT_CODE,
                    message=str(exc)[:2000])
                return
            self.on_event(f"job {assignment.job_id}: starting a replica in slot {assignment.slot}"
                          + (f" from the checkpoint after step {assignment.resume.step}"
                             if assignment.resume else ""))
            self.runner = ReplicaRunner(assignment, self.config.node, self.config.state_dir / "runs",
                                        code_dir=code_dir, resume_from=resume)

    def _shutdown(self) -> None:
        for service in self.services:
            service.stop()
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        if self.uploader is not None:
            self.uploader.close(timeout_s=30)
        if self.node_id is not None:
            try:
                self._flush_metrics()
                self.client.leave(self.node_id)
            except ClusterError as exc:
                log.warning("could not tell the host we are leaving: %s", exc)
        self.client.close()
        self.sampler.close()
