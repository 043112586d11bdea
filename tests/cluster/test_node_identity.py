"""Every node has its own credential: a holder of the cluster token cannot act for another
node, report results for a job it is not part of, or take over an absent node's name and slot.
A real coordinator (uvicorn on loopback) and the real client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_helpers import serve_coordinator

from potluck.contracts import wire as s
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.errors import ForbiddenError, NodeAuthError
from potluck.contracts.jobspec import JobSpec
from potluck.contracts.versions import local_versions

TOKEN = "t0ken-for-tests-0123456789abcdef"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with serve_coordinator(tmp_path, TOKEN) as (served, _):
        yield served


def node(url: str, name: str, key: str) -> tuple[CoordinatorClient, s.RegisterResponse]:
    client = CoordinatorClient(url, TOKEN)
    reg = client.register(s.RegisterRequest(
        name=name, node_key=key * 32, address="127.0.0.3",
        hardware=s.Hardware(cpu_cores=2, memory_mb=1024), versions=local_versions()))
    return client, reg


def done_record(name: str, slot: int) -> dict[str, Any]:
    return {"type": "done", "step": 9, "t": 1.0, "replica": name, "slot": slot, "final_loss": 0.0,
            "test_accuracy": 1.0, "speed": 1.0, "final_step": 9, "committed_steps_here": 10,
            "discarded_steps": 0, "wall_s": 1.0, "started_at": 1.0, "ended_at": 2.0,
            "samples_per_s": 1.0, "allocation": {"0": 1}, "rebalances": 0, "host": "h",
            "params_sha256": "0" * 64}


def test_a_token_holder_cannot_act_for_another_node(url: str) -> None:
    a, reg_a = node(url, "a", "a")
    b, reg_b = node(url, "b", "b")
    assert reg_a.credential != reg_b.credential
    # b (a friend with the cluster token) tries to act for a.
    for call in (lambda: b.heartbeat(reg_a.node_id, s.HeartbeatRequest()),
                 lambda: b.leave(reg_a.node_id),
                 lambda: b.metrics(reg_a.node_id, 1, [done_record("a", reg_a.slot)])):
        with pytest.raises(NodeAuthError, match="missing or wrong node credential"):
            call()
    # No credential at all (the token alone) is refused the same way.
    raw = httpx.post(f"{url}/api/v1/nodes/{reg_a.node_id}/leave", headers={"Authorization": f"Bearer {TOKEN}"})
    assert raw.status_code == 401 and "node credential" in raw.json()["detail"]
    states = {n.name: n.state for n in a.nodes()}
    assert states == {"a": "alive", "b": "alive"}  # a did not "leave"
    # a itself still works.
    assert a.heartbeat(reg_a.node_id, s.HeartbeatRequest()).assignment is None


def test_results_come_only_from_the_nodes_a_job_was_assigned_to(url: str) -> None:
    a, reg_a = node(url, "a", "a")
    job = a.submit(JobSpec.parse({"steps": 100}), "real")
    assert a.heartbeat(reg_a.node_id, s.HeartbeatRequest()).assignment.job_id == job.id
    late, reg_late = node(url, "late", "l")  # joined after the start: no replica row yet
    with pytest.raises(ForbiddenError, match="has no replica in job"):
        late.metrics(reg_late.node_id, job.id, [done_record("late", reg_late.slot)])
    info = a.job(job.id)
    assert info.progress.step == 0 and all(r.node != "late" for r in info.replicas)


def test_an_absent_node_keeps_its_name_and_slot_from_newcomers(url: str) -> None:
    a, reg_a = node(url, "a", "a")
    a.leave(reg_a.node_id)
    impostor, reg_i = node(url, "a", "z")  # another machine claims the name
    assert (reg_i.name, reg_i.slot) == ("a-2", reg_a.slot + 1)
    back, reg_back = node(url, "a", "a")  # the real machine, with its node key
    assert (reg_back.node_id, reg_back.name, reg_back.slot) == (reg_a.node_id, "a", reg_a.slot)
    # Registering again hands out a new credential; the old one stops working.
    with pytest.raises(NodeAuthError):
        a.heartbeat(reg_a.node_id, s.HeartbeatRequest())
    assert back.heartbeat(reg_back.node_id, s.HeartbeatRequest()).assignment is None
