"""Tier 3: real replica processes on loopback, as a user's machines run them.

Training logic (equivalence, healing, policies) is tested in-process (test_inprocess.py);
this keeps what only real processes show: a replica killed hard (os._exit, as a machine
that vanishes) and a new process that heals into the group."""

from __future__ import annotations

from pathlib import Path

from potluck.contracts.jobspec import JobSpec
from potluck.launcher import LocalCluster
from potluck.trainer.core import global_batch_indices


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


def test_kill_and_restart_keeps_exactly_once_and_identical_state(tmp_path: Path) -> None:
    """Kill a replica mid-epoch, restart it: survivors go on, it heals, nothing is lost."""
    job = JobSpec.parse({"steps": 24, "global_batch": 240, "policy": "dynamic", "rebalance_interval": 2,
                         "emulation": {"sample_s": 4e-3}})
    speeds = [1.0, 0.5, 1.0]
    with LocalCluster(job, speeds, tmp_path / "run", record_indices=True,
                      fail_at={1: 4}) as cluster:
        assert cluster.procs[1].wait(timeout=120) == 17, "failure injection did not fire"
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
