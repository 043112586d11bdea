"""Tier 2/3: real replica processes on loopback, torchft Lighthouse, real gloo all-reduce."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from potluck.contracts.jobspec import JobSpec
from potluck.launcher import LocalCluster
from potluck.trainer.core import global_batch_indices, train_reference


def committed(records: list[dict]) -> dict[int, dict]:
    steps = {}
    for r in records:
        if r["type"] == "step" and r["committed"]:
            assert r["step"] not in steps, "a replica committed the same step twice"
            steps[r["step"]] = r
    return steps


def done(records: list[dict]) -> dict:
    assert records and records[-1]["type"] == "done", "replica did not finish"
    return records[-1]


def test_uneven_allocation_equals_one_big_machine(tmp_path: Path) -> None:
    """Proportional shares 4:2:1, one replica micro-batching: same parameters as one process."""
    job = JobSpec.parse({"steps": 6, "global_batch": 140, "policy": "proportional",
                         "emulation": {"sample_s": 2e-4},
                         "balancer": {"profiles": {"0": [0.0, 1e-3], "1": [0.0, 2e-3], "2": [0.0, 4e-3]}}})
    model_path = tmp_path / "model.pt"
    with LocalCluster(job, [1.0, 0.5, 0.25], tmp_path / "run", save_model=str(model_path),
                      memory_caps={0: 16}) as cluster:
        codes = cluster.wait(180)
        records = [cluster.records(s) for s in range(3)]
    assert codes == {0: 0, 1: 0, 2: 0}
    shares = [r["local_batch"] for r in (committed(recs)[0] for recs in records)]
    assert shares == [80, 40, 20]  # uneven, as the profiles ask
    reference, _ = train_reference(job, 6)
    distributed = torch.load(model_path)
    for name, expected in reference.model.state_dict().items():
        torch.testing.assert_close(distributed[name], expected, rtol=1e-4, atol=1e-6)
    assert len({done(recs)["params_sha256"] for recs in records}) == 1


def test_kill_and_restart_keeps_exactly_once_and_identical_state(tmp_path: Path) -> None:
    """Kill a replica mid-epoch, restart it: survivors go on, it heals, nothing is lost."""
    job = JobSpec.parse({"steps": 24, "global_batch": 240, "policy": "dynamic", "rebalance_interval": 2,
                         "emulation": {"sample_s": 4e-3}})
    speeds = [1.0, 0.5, 1.0]
    with LocalCluster(job, speeds, tmp_path / "run", record_indices=True,
                      fail_at={1: 4}) as cluster:
        deadline = time.monotonic() + 120
        while cluster.procs[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cluster.procs[1].returncode == 17, "failure injection did not fire"
        survivors_step = max(committed(cluster.records(0)), default=-1)
        cluster.restart(1)
        codes = cluster.wait(240)
        records = [cluster.records(s) for s in range(3)]
    assert codes == {0: 0, 1: 0, 2: 0}

    # Survivors went on without node1, and node1 rejoined mid-run by healing.
    steps0 = committed(records[0])
    assert any(r["participants"] == 2 for r in steps0.values())
    rejoined = committed(records[1])
    first_back = min(s for s in rejoined if s >= 4)
    assert first_back > survivors_step and first_back < job.steps - 1
    assert any(r["participants"] == 3 for s, r in steps0.items() if s >= first_back)

    # Exactly once: committed steps are 0..N-1 and their indices are the permutation prefix.
    by_step: dict[int, list[tuple[int, list[int]]]] = {}
    for recs in records:
        for step, r in committed(recs).items():
            by_step.setdefault(step, []).append((r["slot"], r["indices"]))
    assert sorted(by_step) == list(range(job.steps))
    train_size = 1438
    for step, parts in by_step.items():
        got = [i for _, idx in sorted(parts) for i in idx]
        assert got == global_batch_indices(job, train_size, step).tolist(), f"step {step}"

    # The allocation changed several times (measured speeds, a member lost, a member back).
    reasons = [r["reason"] for r in records[0] if r["type"] == "allocation"]
    assert any(r.startswith("rebalance") or "measured" in r for r in reasons)
    assert any("members changed [0, 1, 2] -> [0, 2]" in r for r in reasons)
    assert any("members changed [0, 2] -> [0, 1, 2]" in r for r in reasons)
    # A discarded step was redone, and everybody ends bit-identical.
    assert any(not r["committed"] for r in records[0] if r["type"] == "step")
    digests = {done(recs)["params_sha256"] for recs in records}
    assert len(digests) == 1


def test_emulated_speeds_are_the_speeds_asked_for(tmp_path: Path) -> None:
    job = JobSpec.parse({"steps": 4, "global_batch": 120, "policy": "equal", "emulation": {"sample_s": 2e-3}})
    with LocalCluster(job, [1.0, 0.5, 0.25], tmp_path / "run") as cluster:
        assert cluster.wait(120) == {0: 0, 1: 0, 2: 0}
        per_sample = []
        for s in range(3):
            steps = committed(cluster.records(s)).values()
            per_sample.append(sum(r["compute_s"] for r in steps) / sum(r["local_batch"] for r in steps))
    ratios = [per_sample[i] / per_sample[0] for i in range(3)]
    assert ratios[1] == pytest.approx(2.0, rel=0.2)
    assert ratios[2] == pytest.approx(4.0, rel=0.2)


def test_proportional_profiles_itself_when_no_launcher_does(tmp_path: Path) -> None:
    """As in a cluster: no profiles given, each replica profiles its own emulated device."""
    job = JobSpec.parse({"steps": 4, "global_batch": 128, "policy": "proportional",
                         "emulation": {"sample_s": 2e-3}})
    with LocalCluster(job, [1.0, 0.25], tmp_path / "run") as cluster:
        assert cluster.wait(120) == {0: 0, 1: 0}
        steps = committed(cluster.records(0))
        decisions = [r for r in cluster.records(0) if r["type"] == "allocation"]
    assert steps[0]["allocation"] == {"0": 64, "1": 64}  # nothing known before step 0
    fast, slow = steps[3]["allocation"]["0"], steps[3]["allocation"]["1"]
    assert fast + slow == 128 and fast > 3 * slow * 0.8
    assert any("profiles received" in d["reason"] for d in decisions)
