"""The coordinator's rules on a real SQLite file, without processes: membership, slots, job
life cycle, start barrier, summaries, restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from potluck.agent.hardware import parse_nvidia_smi
from potluck.cli import cluster_view as view
from potluck.contracts import wire as s
from potluck.contracts.errors import ConfigError, ConflictError, VersionMismatchError
from potluck.contracts.versions import compare_versions, local_versions
from potluck.coordinator.config import Timeouts
from potluck.coordinator.service import Coordinator, CoordinatorConfig
from potluck.coordinator.store import Store

VERSIONS = s.Versions(python="3.11", torch="2.13.0+cpu", torchft="0.2.0", potluck="0.1.0")
HW = s.Hardware(cpu_cores=2, memory_mb=4096)


def make(tmp_path: Path) -> Coordinator:
    store = Store(tmp_path / "potluck.db")
    return Coordinator(
        store,
        CoordinatorConfig(state_dir=tmp_path, advertise="127.0.0.2", port=7077,
                          lighthouse_port=7078, versions=VERSIONS,
                          timeouts=Timeouts(node_timeout_s=5.0)),
    )


def reg(c: Coordinator, name: str, key: str | None = None, **versions: str) -> s.RegisterResponse:
    return c.register(
        s.RegisterRequest(name=name, node_key=key or f"key-{name}-0123456789", address="127.0.0.3",
                          hardware=HW, versions=VERSIONS.model_copy(update=versions))
    )


def test_names_are_unique_and_slots_stable(tmp_path: Path) -> None:
    c = make(tmp_path)
    a, b = reg(c, "box", key="k" * 20), reg(c, "box", key="j" * 20)
    assert (a.name, a.slot) == ("box", 0)
    assert (b.name, b.slot) == ("box-2", 1)
    again = reg(c, "box", key="j" * 20)  # same node key: same node, same slot
    assert (again.node_id, again.name, again.slot) == (b.node_id, "box-2", 1)
    assert [n.name for n in c.nodes()] == ["box", "box-2"]


def test_version_mismatch_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    c = make(tmp_path)
    with pytest.raises(VersionMismatchError) as err:
        reg(c, "old", torch="2.12.0")
    assert err.value.http_status == 409
    assert err.value.diffs[0]["component"] == "torch"
    assert "2.12.0" in str(err.value) and "2.13.0" in str(err.value)
    assert c.nodes() == []


def test_host_timeouts_come_from_the_environment_and_bad_ones_are_named() -> None:
    assert Timeouts.from_env({}) == Timeouts()
    got = Timeouts.from_env({"POTLUCK_HOST_TIMEOUTS": " node_timeout_s=3, orphan_grace_s = 0.5 "})
    assert (got.node_timeout_s, got.orphan_grace_s, got.orphan_timeout_s) == (3.0, 0.5, 120.0)
    for raw, named in (("nodes=3", "'nodes=3' is not NAME=SECONDS"), ("node_timeout_s", "NAME=SECONDS"),
                       ("orphan_grace_s=soon", "orphan_grace_s must be a number of seconds, got 'soon'"),
                       ("straggler_grace_s=-1", "straggler_grace_s must be a positive number"),
                       ("barrier_timeout_s=nan", "barrier_timeout_s must be a positive number"),
                       ("node_timeout_s=1.5", "node_timeout_s must be at least twice heartbeat_interval_s")):
        with pytest.raises(ConfigError, match=f"^POTLUCK_HOST_TIMEOUTS: .*{named}"):
            Timeouts.from_env({"POTLUCK_HOST_TIMEOUTS": raw})


def test_cuda_and_cpu_builds_of_one_torch_are_compatible() -> None:
    node = VERSIONS.model_copy(update={"torch": "2.13.0+cu121"})
    assert compare_versions(VERSIONS, node) == []
    diffs = compare_versions(VERSIONS, VERSIONS.model_copy(update={"python": "3.12"}))
    assert [(d.component, d.host, d.node) for d in diffs] == [("python", "3.11", "3.12")]
    assert "3.11" in diffs[0].fix


def test_fake_version_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POTLUCK_FAKE_VERSION_TORCHFT", "9.9.9")
    assert local_versions().torchft == "9.9.9"


def test_nvidia_smi_parsing() -> None:
    gpus = parse_nvidia_smi("NVIDIA GeForce RTX 3090, 24576\nTesla T4, 15360\n")
    assert [(g.name, g.memory_mb) for g in gpus] == [("NVIDIA GeForce RTX 3090", 24576), ("Tesla T4", 15360)]


def test_submit_needs_a_live_node_and_a_valid_config(tmp_path: Path) -> None:
    c = make(tmp_path)
    with pytest.raises(ConflictError, match="no live nodes"):
        c.submit(s.JobSubmit(config={"steps": 5}))
    reg(c, "a")
    with pytest.raises(ConfigError, match="unknown model 'resnet9000'") as err:
        c.submit(s.JobSubmit(config={"model": "resnet9000"}))
    assert err.value.http_status == 422
    with pytest.raises(ValidationError, match="stepz"):
        s.JobSubmit(config={"stepz": 5})
    assert c.jobs() == []


PLAN = {"strategy": "allreduce", "wire": "fp32", "phase_s": 0.0, "chosen_by": "auto", "members": 2,
        "values": 15_258, "sync_bytes": 15_258 * 4 + 64 * 12 * 4, "bandwidth_bps": 4.4e9,
        "rtt_s": 0.002, "predicted_sync_s": 0.012, "predicted_fraction": 0.93,
        "collective_timeout_s": 20.0, "quorum_timeout_s": 30.0}
"""A step-0 plan event's plan, as a replica of an auto job on loopback reports it."""


def test_a_restart_reported_before_the_replica_ever_ran_is_logged(tmp_path: Path) -> None:
    """A replica killed while still starting is restarted in the same state: the agent's
    message about it must reach `potluck logs` although the state did not change."""
    c = make(tmp_path)
    a = reg(c, "a")
    job = c.submit(s.JobSubmit(config={"steps": 3, "global_batch": 64}))
    starting = s.ReplicaReport(job_id=job.id, state="starting")
    c.heartbeat(a.node_id, s.HeartbeatRequest(replicas=[starting]), a.credential)
    why = "replica killed by signal 9 (SIGKILL); restarting in 1 s (1 of 5)"
    for _ in range(2):  # said once, logged once
        c.heartbeat(a.node_id, s.HeartbeatRequest(replicas=[starting.model_copy(update={"message": why})]),
                    a.credential)
    c.heartbeat(a.node_id, s.HeartbeatRequest(replicas=[starting]), a.credential)
    said = [e.message for e in c.events(job.id)]
    assert said.count(f"replica on a: starting ({why})") == 1, said


def test_job_life_cycle_with_start_barrier(tmp_path: Path) -> None:
    c = make(tmp_path)
    a, b = reg(c, "a"), reg(c, "b")
    job = c.submit(s.JobSubmit(config={"steps": 3, "global_batch": 64}))
    assert job.state == "running"
    assert {r.node for r in job.replicas} == {"a", "b"}
    # Both get the job, in their slots, held at the start barrier.
    first = c.heartbeat(a.node_id, s.HeartbeatRequest(), a.credential).assignment
    assert first is not None and (first.slot, first.go) == (0, False)
    c.heartbeat(a.node_id, s.HeartbeatRequest(replicas=[s.ReplicaReport(job_id=job.id, state="starting", ready=True)]), a.credential)
    c.tick()
    assert c.heartbeat(a.node_id, s.HeartbeatRequest(), a.credential).assignment.go is False  # b not ready
    c.heartbeat(b.node_id, s.HeartbeatRequest(replicas=[s.ReplicaReport(job_id=job.id, state="starting", ready=True)]), b.credential)
    c.tick()
    assert c.heartbeat(b.node_id, s.HeartbeatRequest(), b.credential).assignment.go is True
    # Metrics: steps and an allocation, then done records.
    for node, slot in ((a, 0), (b, 1)):
        who = {"t": 1.0, "replica": node.name, "slot": slot}
        c.metrics(node.node_id, job.id, s.MetricsRequest(records=[
            {**who, "type": "allocation", "step": 0, "allocation": {"0": 40, "1": 24}, "reason": "r"},
            {**who, "type": "plan", "step": 0, "plan": PLAN},
            *[{**who, "type": "step", "step": i, "committed": True, "local_batch": 40 - 16 * slot,
               "participants": 2, "quorum_s": 0.001, "allreduce_s": 0.02, "commit_s": 0.001,
               "compute_s": 0.03, "comm_s": 0.01, "wait_s": 0.01 * slot, "loss": 2.0 - i / 2,
               "samples_per_s": 900.0, "sync_bytes": PLAN["sync_bytes"], "compute_fraction": 0.577}
              for i in range(3)],
            {**who, "type": "done", "step": 2, "final_loss": 1.0, "test_accuracy": 0.9,
             "speed": 1.0, "final_step": 2, "committed_steps_here": 3, "discarded_steps": 0,
             "wall_s": 1.0, "started_at": 1.0, "ended_at": 2.0, "samples_per_s": 900.0,
             "allocation": {"0": 40, "1": 24}, "rebalances": 0, "host": "h",
             "params_sha256": "0" * 64},
        ]), node.credential)
    info = c.job_info(job.id)
    assert info.progress.step == 2 and info.progress.shares == {"a": 0.625, "b": 0.375}
    assert info.progress.sync is not None and info.progress.sync.plan.strategy == "allreduce"
    assert info.progress.sync.samples == {"a": 120, "b": 72}
    assert "\n  sync: allreduce fp32 (auto), 64.1 kB/step" in view.job_status_text(info)  # potluck status
    for node in (a, b):
        c.heartbeat(node.node_id, s.HeartbeatRequest(replicas=[s.ReplicaReport(job_id=job.id, state="done", exit_code=0)]), node.credential)
    c.tick()
    final = c.job_info(job.id)
    assert final.state == "succeeded"
    summ = final.summary
    assert summ is not None
    assert (summ.nodes, summ.steps, summ.final_loss, summ.test_accuracy) == (["a", "b"], 3, 1.0, 0.9)
    assert summ.samples_per_s == pytest.approx(900.0)
    assert 0.5 < summ.compute_fraction < 1.0
    # The sync plan and what the steps measured: per step 0.052 s of wall, 0.03 s computing
    sync = summ.sync
    assert sync is not None and sync.plan is not None and sync.plan.model_dump() == PLAN
    assert (sync.steps, sync.sync_bytes, sync.samples) == (6, PLAN["sync_bytes"], {"a": 120, "b": 72})
    assert sync.step_s == pytest.approx(0.052) and sync.sync_s == pytest.approx(0.02)
    assert sync.compute_fraction == pytest.approx(0.03 / 0.052, abs=1e-4)
    assert view.sync_text(sync) == ("allreduce fp32 (auto), 64.1 kB/step, 20 ms/step, "
                                    "computing 58% (predicted 93%)")
    assert dict(view.sync_rows(sync))["sync timeouts"] == "collective 20 s, quorum 30 s (from a predicted 12 ms sync)"
    on_disk = json.loads((tmp_path / "experiments" / f"job-{job.id}" / "summary.json").read_text())
    assert on_disk["state"] == "succeeded"
    assert len((tmp_path / "experiments" / f"job-{job.id}" / "replicas" / "a.jsonl").read_text().splitlines()) == 6
    # Nothing runs after the end.
    assert c.heartbeat(a.node_id, s.HeartbeatRequest(), a.credential).assignment is None


def test_silent_node_is_lost_then_rejoins_the_running_job(tmp_path: Path) -> None:
    c = make(tmp_path)
    reg(c, "a")
    b = reg(c, "b")
    job = c.submit(s.JobSubmit(config={"steps": 100}))
    c.membership.last_seen[b.node_id] = time.time() - 60  # b went silent
    c.tick()
    nodes = {n.name: n.state for n in c.nodes()}
    assert nodes == {"a": "alive", "b": "lost"}
    assert {r.node: r.state for r in c.job_info(job.id).replicas}["b"] == "lost"
    assert c.job_info(job.id).state == "running"
    # b comes back (agent restarted, same node key): re-assigned to the running job.
    back = reg(c, "b")
    assert back.slot == b.slot
    assignment = c.heartbeat(back.node_id, s.HeartbeatRequest(), back.credential).assignment
    assert assignment is not None and assignment.job_id == job.id
    assert {n.name: n.state for n in c.nodes()}["b"] == "alive"


def test_every_replica_failed_fails_the_job_and_the_next_starts(tmp_path: Path) -> None:
    c = make(tmp_path)
    a = reg(c, "a")
    first = c.submit(s.JobSubmit(config={"steps": 5}))
    second = c.submit(s.JobSubmit(config={"steps": 5}))
    assert (first.state, second.state) == ("running", "queued")
    c.heartbeat(a.node_id, s.HeartbeatRequest(replicas=[
        s.ReplicaReport(job_id=first.id, state="failed", exit_code=1, message="boom")]), a.credential)
    c.tick()
    assert c.job_info(first.id).state == "failed"
    assert "boom" in (c.job_info(first.id).message or "")
    assert c.job_info(second.id).state == "running"
    assert c.cancel(second.id).state == "cancelled"
    with pytest.raises(ConflictError, match="already cancelled"):
        c.cancel(second.id)


def test_restart_keeps_nodes_jobs_and_events(tmp_path: Path) -> None:
    c = make(tmp_path)
    a = reg(c, "a")
    job = c.submit(s.JobSubmit(config={"steps": 5}, name="keep-me"))
    c.tick()
    c.store.close()
    again = make(tmp_path)
    assert [n.name for n in again.nodes()] == ["a"]
    info = again.job_info(job.id)
    assert (info.name, info.state) == ("keep-me", "running")
    assert [e.message for e in again.events(job.id)][:1] == ["submitted"]
    # The node's agent reconnects with its old id; it gets the running job, not held at a barrier.
    assignment = again.heartbeat(a.node_id, s.HeartbeatRequest(), a.credential).assignment
    assert assignment is not None and assignment.go


def test_port_checks_tell_taken_from_unusable(tmp_path: Path) -> None:
    import socket

    from potluck.contracts.errors import NetworkConfigError, PortInUseError
    from potluck.coordinator.lighthouse import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match="already in use.*--lighthouse-port"):
            check_port_free("127.0.0.1", port, "lighthouse", "--lighthouse-port")
    # 192.0.2.1 (TEST-NET) is on no interface here: cannot bind, and it is not "in use".
    with pytest.raises(NetworkConfigError, match="is 192.0.2.1 an address of this machine"):
        check_port_free("192.0.2.1", 0, "lighthouse", "--lighthouse-port")


def test_doctor_links_keep_the_last_bandwidth(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    link = {"source": "a", "target": "b", "status": "ok", "rtt_ms": 1.0, "mbit_s": 900.0,
            "largest_message": 1 << 20, "error": None, "summary": "fine"}
    store.upsert_link(link, 1.0)
    store.upsert_link({**link, "rtt_ms": 2.0, "mbit_s": None}, 2.0)  # a pre-flight: no bandwidth
    [row] = store.links()
    assert (row["rtt_ms"], row["mbit_s"], row["measured_at"]) == (2.0, 900.0, 2.0)
