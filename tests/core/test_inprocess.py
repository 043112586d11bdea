"""Tier 2: several replicas as threads of the test process, an in-process Lighthouse, real
torchft managers and gloo on loopback, failures injected by step. Seconds per test."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from potluck.contracts.errors import NoPeerError
from potluck.contracts.jobspec import JobSpec
from potluck.launcher.threads import ThreadCluster
from potluck.trainer import replica as replica_module
from potluck.trainer.core import global_batch_indices, train_reference
from potluck.trainer.faults import Faults, InjectedFailure


def committed(events: list[dict]) -> dict[int, dict]:
    steps: dict[int, dict] = {}
    for e in events:
        if e["type"] == "step" and e["committed"]:
            assert e["step"] not in steps, "a replica committed the same step twice"
            steps[e["step"]] = e
    return steps


def digests(results: dict[int, dict]) -> set[str]:
    return {r["params_sha256"] for r in results.values()}


def test_uneven_shares_with_micro_batches_equal_one_big_machine(tmp_path: Path) -> None:
    """Proportional shares 4:2:1, one replica micro-batching: the parameters one process gets."""
    job = JobSpec.parse({"steps": 5, "global_batch": 140, "policy": "proportional",
                         "balancer": {"profiles": {"0": [0.0, 1e-3], "1": [0.0, 2e-3],
                                                   "2": [0.0, 4e-3]}}})
    with ThreadCluster(job, [1.0, 1.0, 1.0], tmp_path, memory_caps={0: 16}) as cluster:
        results = cluster.wait()
        shares = [committed(cluster.events(s))[0]["local_batch"] for s in range(3)]
        distributed = cluster.replicas[0].tr.model.state_dict()
    assert shares == [80, 40, 20]
    reference, _ = train_reference(job, 5)
    for name, expected in reference.model.state_dict().items():
        torch.testing.assert_close(distributed[name], expected, rtol=1e-4, atol=1e-6)
    assert len(digests(results)) == 1


def test_equal_split_is_not_the_reference_when_the_batch_differs(tmp_path: Path) -> None:
    """The equivalence check can fail: a different global batch gives other parameters."""
    job = JobSpec.parse({"steps": 3, "global_batch": 96, "policy": "equal"})
    with ThreadCluster(job, [1.0, 1.0], tmp_path) as cluster:
        cluster.wait()
        distributed = cluster.replicas[0].tr.model.state_dict()
    other, _ = train_reference(job.updated({"global_batch": 64}), 3)
    name, expected = next(iter(other.model.state_dict().items()))
    assert not torch.allclose(distributed[name], expected)


def test_a_replica_dies_mid_epoch_and_heals_exactly_once(tmp_path: Path) -> None:
    """Slot 1 fails at step 4; the others go on; a new slot 1 heals from a peer. Committed
    steps use the permutation prefix exactly once and every replica ends bit-identical."""
    job = JobSpec.parse({"steps": 16, "global_batch": 120, "policy": "dynamic",
                         "rebalance_interval": 2, "emulation": {"sample_s": 1e-3},
                         "fault": {"step_timeout_s": 5}})
    faults = Faults().fail_at(1, 4)
    with ThreadCluster(job, [1.0, 0.5, 1.0], tmp_path, faults=faults,
                       record_indices=True) as cluster:
        died = cluster.wait_for(1)
        assert isinstance(died, InjectedFailure) and faults.fired == [(1, 4)]
        survivors_went_on = cluster.wait_event(
            0, lambda e: e["type"] == "step" and e["committed"] and e["participants"] == 2)
        cluster.restart(1)
        results = cluster.wait()
        events = {s: cluster.events(s) for s in range(3)}
    steps0 = committed(events[0])
    assert any(e["participants"] == 2 for e in steps0.values())  # went on without slot 1
    back = min(s for s in committed(events[1]) if s >= 4)
    assert back > survivors_went_on["step"]
    assert any(e["participants"] == 3 for s, e in steps0.items() if s >= back)
    by_step: dict[int, list[tuple[int, list[int]]]] = {}
    for recs in events.values():
        for step, e in committed(recs).items():
            by_step.setdefault(step, []).append((e["slot"], e["indices"]))
    assert sorted(by_step) == list(range(job.steps))
    size = cluster.replicas[0].tr.train_size
    for step, parts in by_step.items():
        got = [i for _, idx in sorted(parts) for i in idx]
        assert got == global_batch_indices(job, size, step).tolist(), f"step {step}"
    reasons = [e["reason"] for e in events[0] if e["type"] == "allocation"]
    assert any("members changed [0, 1, 2] -> [0, 2]" in r for r in reasons)
    assert any("members changed [0, 2] -> [0, 1, 2]" in r for r in reasons)
    membership = [e for e in events[0] if e["type"] == "membership"]
    assert [m["left"] for m in membership if m["left"]] == [[1]]
    assert len(digests(results)) == 1


def test_proportional_profiles_itself_and_dynamic_orders_shares_by_speed(tmp_path: Path) -> None:
    job = JobSpec.parse({"steps": 4, "global_batch": 128, "policy": "proportional",
                         "emulation": {"sample_s": 2e-3}})
    with ThreadCluster(job, [1.0, 0.25], tmp_path / "p") as cluster:
        results = cluster.wait()
        steps = committed(cluster.events(0))
        reasons = [e["reason"] for e in cluster.events(0) if e["type"] == "allocation"]
    assert steps[0]["allocation"] == {"0": 64, "1": 64}  # nothing known before step 0
    fast, slow = steps[3]["allocation"]["0"], steps[3]["allocation"]["1"]
    assert fast + slow == 128 and fast > 2 * slow
    assert any("profiles received" in r for r in reasons)
    assert len(digests(results)) == 1

    dynamic = job.updated({"balancer.policy": "dynamic", "steps": 6})
    with ThreadCluster(dynamic, [1.0, 0.5, 0.25], tmp_path / "d") as cluster:
        results = cluster.wait()
    final = results[0]["allocation"]
    assert final["0"] > final["1"] > final["2"] and sum(final.values()) == 128
    assert len(digests(results)) == 1


def test_an_unexpected_error_in_a_replica_is_reported(tmp_path: Path) -> None:
    job = JobSpec.parse({"steps": 3, "global_batch": 64, "fault": {"step_timeout_s": 5}})
    faults = Faults().fail_at(0, 1)
    with ThreadCluster(job, [1.0], tmp_path, faults=faults) as cluster:
        with pytest.raises(Exception, match="replica 0 ended with an injected"):
            cluster.wait()


def test_emulator_pads_to_the_speed_asked_for() -> None:
    """Pure: the padding target is (overhead + per-sample x b) / speed, and overruns count."""
    from potluck.trainer.emulation import Emulator

    fast, slow = Emulator(1.0, 1e-3, 2e-3), Emulator(0.25, 1e-3, 2e-3)
    assert fast.target_s(100) == pytest.approx(0.102)
    assert slow.target_s(100) == pytest.approx(4 * 0.102)
    assert slow.target_s(0) == 0.0
    assert not Emulator(1.0, 0.0).active
    import time as _time

    late = Emulator(1.0, 1e-9)
    late.pad(10, _time.perf_counter() - 1.0)  # the real compute already took longer
    assert late.overruns == 1


def test_a_lighthouse_restart_mid_job_costs_no_step_and_no_replica(tmp_path: Path) -> None:
    """The Lighthouse is replaced mid-job (a host restart): the new one numbers quorums from 1
    again, so the members get quorum ids the old one gave them, for other member sets too. A
    replica must neither keep its old group for a quorum that holds it alone nor read an old
    group's rendezvous keys (either way its collectives time out and the step is discarded):
    both ride through (one may train a step alone and heal), no step is discarded, every step
    is committed, same parameters."""
    job = JobSpec.parse({"steps": 24, "global_batch": 64, "policy": "equal",
                         "emulation": {"sample_s": 2e-3}, "fault": {"step_timeout_s": 5}})
    with ThreadCluster(job, [1.0, 1.0], tmp_path) as cluster:
        cluster.wait_event(0, lambda e: e["type"] == "step" and e["committed"] and e["step"] >= 4)
        cluster.restart_lighthouse()
        results = cluster.wait()
        events = {s: cluster.events(s) for s in range(2)}
    discarded = [e for s in range(2) for e in events[s] if e["type"] == "step" and not e["committed"]]
    assert discarded == []
    assert sorted(set(committed(events[0])) | set(committed(events[1]))) == list(range(24))
    assert len(digests(results)) == 1


class _Stall(Faults):
    """Freeze a replica for ``seconds`` when it is about to compute ``step`` (once): its
    peers give up on it, go on alone and finish meanwhile."""

    def __init__(self, slot: int, step: int, seconds: float) -> None:
        super().__init__()
        self.at, self.seconds = (slot, step), seconds

    def check(self, slot: int, step: int) -> None:
        if (slot, step) == self.at:
            self.at = (-1, -1)
            time.sleep(self.seconds)
        super().check(slot, step)


def test_a_replica_left_behind_does_not_finish_the_job_alone(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Slot 2 of three freezes mid-job past the step timeout: the other two discard that
    step, go on as a majority and finish. When slot 2 wakes, it ends up alone in its next
    quorum, whose id shows that the others formed quorums without it: it must not train the
    rest of the job alone (it would end with other weights than the job's) but wait for a
    peer, and then stop with NoPeerError."""
    monkeypatch.setattr(replica_module, "ALONE_WAIT_S", 1.0)
    job = JobSpec.parse({"global_batch": 48, "steps": 10, "policy": "equal",
                         "fault": {"step_timeout_s": 1.5}})
    with ThreadCluster(job, [1.0, 1.0, 1.0], tmp_path, faults=_Stall(2, 3, 8.0)) as cluster:
        results = {slot: cluster.wait_for(slot) for slot in range(3)}
        steps0 = [e for e in cluster.events(0) if e["type"] == "step" and e["committed"]]
        steps2 = [e["step"] for e in cluster.events(2) if e["type"] == "step" and e["committed"]]
    assert results[0]["params_sha256"] == results[1]["params_sha256"]
    assert [e["step"] for e in steps0] == list(range(10))
    assert any(e["participants"] == 2 for e in steps0)  # they went on without slot 2
    assert isinstance(results[2], NoPeerError), results[2]
    assert "the others went on without this replica" in str(results[2])
    assert max(steps2) < 3  # it committed nothing after it fell behind
