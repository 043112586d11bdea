"""The job life cycle: queue, start barrier, assignments, and ending a job.

::

    queued -> running -> succeeded | failed | cancelled

One job runs at a time (the cluster has one Lighthouse); later submissions queue. Every live
node gets a replica of the running job, in its stable slot; a node that comes back (or joins
late) is assigned the running job again, so torchft heals it into the group.
"""

from __future__ import annotations

import time
from typing import Any

from potluck.catalog import check_names
from potluck.contracts import wire as s
from potluck.contracts.errors import FATAL_EXIT_CODE, ConfigError, ConflictError, NotFoundError
from potluck.contracts.jobspec import JobSpec
from potluck.coordinator.artifacts import Artifacts
from potluck.coordinator.config import CoordinatorConfig
from potluck.coordinator.job_secrets import job_secret, load_or_create_job_key
from potluck.coordinator.membership import Membership
from potluck.coordinator.store import Store, dumps, loads
from potluck.coordinator.telemetry import Telemetry
from potluck.log import get_logger

log = get_logger("coordinator.jobs")

ACTIVE_REPLICA = ("assigned", "starting", "running")
FINAL_REPLICA = ("done", "failed", "stopped")


def job_spec_from(raw: object) -> JobSpec:
    """A validated JobSpec from untrusted data, names checked. Raises ConfigError naming the field."""
    # The built-ins' catalog, not the kernel's registries: those import torch (about 1.2
    # CPU-seconds and 200 MB in the host process).
    return check_names(JobSpec.parse(raw))


def _no_job(job_id: int) -> NotFoundError:
    return NotFoundError(f"no job {job_id}: `potluck jobs` lists the jobs")


class Jobs:
    def __init__(self, store: Store, config: CoordinatorConfig, membership: Membership,
                 telemetry: Telemetry, artifacts: Artifacts) -> None:
        self.store = store
        self.artifacts = artifacts
        self._checkpoint_refs: dict[int, s.CheckpointRef | None] = {}
        self.config = config
        self.membership = membership
        self.telemetry = telemetry
        # Jobs whose start barrier is released; a restarted coordinator releases running jobs.
        self.released: set[int] = {r["id"] for r in store.jobs_in("running")}
        self._job_key = load_or_create_job_key(config.state_dir)
        self._no_active_since: dict[int, float] = {}
        self._specs: dict[int, JobSpec] = {}

    # queries -------------------------------------------------------------------------------

    def spec(self, row: Any) -> JobSpec:
        """The JobSpec of a job row, parsed once per job (heartbeats ask for it every second)."""
        spec = self._specs.get(row["id"])
        if spec is None:
            spec = self._specs[row["id"]] = JobSpec.parse(loads(row["config"]))
        return spec

    def row(self, job_id: int) -> Any:
        row = self.store.job(job_id)
        if row is None:
            raise _no_job(job_id)
        return row

    def info(self, job_id: int) -> s.JobInfo:
        row = self.row(job_id)
        summary = loads(row["summary"])
        return s.JobInfo(
            id=row["id"], name=row["name"], state=row["state"],
            config=self.spec(row), created_at=row["created_at"],
            started_at=row["started_at"], finished_at=row["finished_at"],
            progress=self.telemetry.progress_of(job_id, row),
            replicas=[s.JobReplica(node=r["node"], slot=r["slot"], state=r["state"],
                                   step=r["step"], exit_code=r["exit_code"], message=r["message"])
                      for r in self.store.replicas(job_id)],
            summary=s.JobSummary(**summary) if summary else None,
            message=row["message"],
        )

    def all(self) -> list[s.JobInfo]:
        return [self.info(row["id"]) for row in self.store.jobs()]

    def events(self, job_id: int | None, after: int = 0) -> list[s.LogEntry]:
        if job_id is not None:
            self.row(job_id)
        return [s.LogEntry(id=r["id"], t=r["t"], kind=r["kind"], message=r["message"], node=r["node"])
                for r in self.store.events(job_id, after)]

    # submitting ----------------------------------------------------------------------------

    def submit(self, req: s.JobSubmit) -> s.JobInfo:
        config = job_spec_from(req.config)
        code = config.code
        if code.file is not None and code.bundle is None:
            raise ConfigError("a job file must be shipped as a bundle: submit it with "
                              "`potluck train JOB_FILE`")
        if code.bundle is not None and not self.artifacts.has_bundle(code.bundle):
            raise ConfigError(f"code bundle {code.bundle[:12]} is not on the host: submit the "
                              "job with `potluck train JOB_FILE` (it uploads the bundle first)")
        if req.resume is not None:
            old = self.row(req.resume)
            if old["state"] not in s.FINISHED_JOB_STATES:
                raise ConflictError(f"job {req.resume} is still {old['state']}: resume it after "
                                    f"it ends, or `potluck cancel {req.resume}` first")
            if self.artifacts.latest_checkpoint(req.resume) is None:
                raise ConflictError(f"job {req.resume} has no checkpoint on the host to resume from")
        if not any(r["state"] == "alive" for r in self.store.nodes()):
            raise ConflictError(
                "no live nodes in the cluster: run `potluck join` on a machine (or start "
                "`potluck host` without --no-local-agent)"
            )
        default = (f"{code.file.rsplit('/', 1)[-1].removesuffix('.py')}" if code.file
                   else f"{config.model.name}-{config.data.name}")
        job_id = self.store.add_job(req.name or default, dumps(config.model_dump()), time.time())
        if req.resume is not None:
            step = self.artifacts.copy_checkpoint(req.resume, job_id)
            self.store.event("job", f"resumes job {req.resume} from its checkpoint after step "
                             f"{step}", job_id=job_id)
        self.telemetry.progress[job_id] = s.JobProgress()
        self.start_queued()
        return self.info(job_id)

    def checkpoint_stored(self, job_id: int, step: int) -> None:
        self._checkpoint_refs.pop(job_id, None)

    def checkpoint_ref(self, job_id: int) -> s.CheckpointRef | None:
        """The job's newest checkpoint on the host (cached: heartbeats ask every second)."""
        if job_id not in self._checkpoint_refs:
            latest = self.artifacts.latest_checkpoint(job_id)
            ref = None
            if latest is not None:
                ref = s.CheckpointRef(step=latest[0],
                                      sha256=self.artifacts.checkpoint_sha256(latest[1]))
            self._checkpoint_refs[job_id] = ref
        return self._checkpoint_refs[job_id]

    def cancel(self, job_id: int) -> s.JobInfo:
        row = self.row(job_id)
        if row["state"] in s.FINISHED_JOB_STATES:
            raise ConflictError(f"job {job_id} already {row['state']}")
        self.finish(job_id, "cancelled", "cancelled by user")
        self.start_queued()
        return self.info(job_id)

    def running(self) -> Any:
        rows = self.store.jobs_in("running")
        return rows[0] if rows else None

    def start_queued(self) -> None:
        if self.running() is not None:
            return
        queued = self.store.jobs_in("queued")
        if queued:
            job = queued[0]
            config = self.spec(job)
            self.store.start_job(job["id"], time.time(), config.fault.max_replicas)

    # replicas ------------------------------------------------------------------------------

    def apply_reports(self, node: Any, reports: list[s.ReplicaReport]) -> None:
        """What an agent says of its replicas; a final replica state stays final."""
        for rep in reports:
            row = self.store.replica(rep.job_id, node["id"])
            if row is None or (row["state"] == rep.state and row["step"] == rep.step
                               and bool(row["ready"]) == rep.ready
                               and (row["message"] or "") == (rep.message or "")):
                continue
            if row["state"] in FINAL_REPLICA and rep.state != row["state"]:
                continue
            event = None
            if row["state"] != rep.state:
                event = f"replica on {node['name']}: {row['state']} -> {rep.state}"
                if rep.message:
                    event += f" ({rep.message})"
            elif rep.message and rep.message != row["message"]:
                # news in the same state: a replica that crashed before it ever reported
                # running is restarted while its row still says starting
                event = f"replica on {node['name']}: {rep.state} ({rep.message})"
            self.store.update_replica(rep.job_id, node["id"], state=rep.state, step=rep.step,
                                      exit_code=rep.exit_code, message=rep.message,
                                      ready=rep.ready, event=event)

    def assignment(self, node_id: int, node: Any) -> s.Assignment | None:
        """The job this node should run now (None: nothing)."""
        job = self.running()
        if job is None:
            return None
        row = self.store.replica(job["id"], node_id)
        if row is not None and row["state"] in FINAL_REPLICA and not self._left_and_back(row, node):
            return None
        node = node or self.membership.node(node_id)
        config = self.spec(job)
        if node["slot"] >= config.fault.max_replicas:
            return None  # the job has no room for this slot (raise max_replicas)
        if row is None or row["state"] == "lost" or self._left_and_back(row, node):
            if job["id"] in self.telemetry.first_done_at:
                return None  # the job is finishing: no late joiners
            verb = "re-assigned" if row is not None else "assigned"
            self.store.assign_replica(job["id"], node_id, node["slot"],
                                      f"{verb} to {node['name']} (slot {node['slot']})")
        return s.Assignment(job_id=job["id"], slot=node["slot"], name=node["name"],
                            lighthouse=self.config.lighthouse, job=config,
                            go=job["id"] in self.released,
                            secret=job_secret(self._job_key, job["id"], job["created_at"]),
                            resume=self.checkpoint_ref(job["id"]),
                            min_step=self.telemetry.progress_of(job["id"], job).step)

    def _restarted(self, job_id: int) -> str:
        """What the job's end message must add when training started over (never silent)."""
        progress = self.telemetry.progress.get(job_id)
        if progress is None or not progress.restarts:
            return ""
        times = "once" if progress.restarts == 1 else f"{progress.restarts} times"
        return (f"; restarted {times} after every replica was lost, from the last checkpoint "
                f"or step 0 ({progress.steps_lost} committed steps trained again)")

    def _left_and_back(self, row: Any, node: Any) -> bool:
        """The node left cleanly mid-job (its replica was stopped) and is alive again: it
        rejoins the running job like a node that was lost."""
        if row["state"] != "stopped":
            return False
        node = node or self.membership.node(row["node_id"])
        return node["state"] == "alive"

    # ending --------------------------------------------------------------------------------

    def finish(self, job_id: int, state: str, message: str) -> None:
        summary = self.telemetry.summarize(job_id, state)
        latest = self.artifacts.latest_checkpoint(job_id)
        summary.checkpoint_step = latest[0] if latest else None
        summary.model = self.artifacts.model_path(job_id) is not None
        if state == "failed" and latest is not None:
            message += (f"; `potluck train --resume {job_id}` continues from the checkpoint "
                        f"after step {latest[0]}")
        self._checkpoint_refs.pop(job_id, None)
        self.telemetry.write_summary(summary)
        progress = self.telemetry.forget(job_id)
        self.store.finish_job(job_id, state, message, dumps(summary.model_dump()),
                              dumps(progress.model_dump()) if progress else "{}")
        self._no_active_since.pop(job_id, None)
        self.released.discard(job_id)
        log.info("job %s %s: %s", job_id, state, message)

    def advance(self, now: float) -> None:
        """Release the start barrier, and end the running job when its replicas are done."""
        job = self.running()
        if job is None:
            return
        job_id = job["id"]
        replicas = self.store.replicas(job_id)
        active = [r for r in replicas if r["state"] in ACTIVE_REPLICA]
        if job_id not in self.released and active:
            ready = all(r["ready"] or r["state"] == "running" for r in active)
            if ready or now - (job["started_at"] or now) > self.config.timeouts.barrier_timeout_s:
                self.released.add(job_id)
                why = "all replicas ready" if ready else "start barrier timed out"
                self.store.event("job", f"training starts ({why})", job_id=job_id)
        done = [r for r in replicas if r["done"] or r["state"] == "done"]
        fatal = [r for r in replicas if r["state"] == "failed" and r["exit_code"] == FATAL_EXIT_CODE]
        if fatal and not done and (job_id not in self.released or not active):
            # the job's code raised, a requirement is missing, replicas disagree: restarting or
            # starting without those nodes would not help
            reasons = "; ".join(f"{r['node']}: {r['message'] or 'exit ' + str(r['exit_code'])}"
                                for r in fatal)
            self.finish(job_id, "failed", f"job stopped before it could train ({reasons})"
                        if job_id not in self.released else f"job stopped ({reasons})")
            return
        first_done = self.telemetry.first_done_at.get(job_id, now)
        restarted = self._restarted(job_id)
        if done and not active:
            self.finish(job_id, "succeeded", f"finished on {len(done)} node(s){restarted}")
        elif done and now - first_done > self.config.timeouts.straggler_grace_s:
            self.finish(job_id, "succeeded", f"finished (stragglers stopped){restarted}")
        elif active or not replicas:
            self._no_active_since.pop(job_id, None)
        elif all(r["state"] == "failed" for r in replicas):
            reasons = "; ".join(f"{r['node']}: {r['message'] or 'exit ' + str(r['exit_code'])}"
                                for r in replicas)
            self.finish(job_id, "failed", f"every replica failed ({reasons})")
        else:
            # Lost nodes may come back (a crash, a dropped link): wait for them. Nodes that
            # left, failed or were forgotten are not waited for beyond a short grace, in which
            # a restarted host's own agent rejoins: the queue moves on.
            lost = any(r["state"] == "lost" for r in replicas)
            waited = now - self._no_active_since.setdefault(job_id, now)
            waits = self.config.timeouts
            if waited > (waits.orphan_timeout_s if lost else waits.orphan_grace_s):
                self.finish(job_id, "failed", "no replica left running (all nodes lost or failed)"
                            if lost else "no replica left running: every node left, failed or "
                            "was forgotten")
