"""Live job progress folded from step records: the samples/s shown does not jump on one
outlier step (a step that ends right after a heal reads many times too fast)."""

from __future__ import annotations

from pathlib import Path

from potluck.contracts.events import AllocationEvent, StepEvent
from potluck.coordinator.store import Store
from potluck.coordinator.telemetry import Telemetry


def step(i: int, sps: float) -> StepEvent:
    return StepEvent(t=float(i), replica="a", slot=0, step=i, committed=True, participants=2,
                     local_batch=64, compute_s=0.03, quorum_s=0.001, allreduce_s=0.01,
                     commit_s=0.001, loss=1.0, samples_per_s=sps)


def test_live_samples_per_s_ignores_one_outlier_step(tmp_path: Path) -> None:
    telemetry = Telemetry(Store(tmp_path / "potluck.db"), tmp_path / "experiments")
    node = {"id": 1, "name": "a"}
    telemetry.ingest(node, 1, [step(i, 2300.0 + 20 * (i % 3)) for i in range(6)])
    telemetry.ingest(node, 1, [step(6, 49_121.0)])
    assert 2300 <= telemetry.progress[1].samples_per_s <= 2340
    # A real change of speed shows once it lasts.
    telemetry.ingest(node, 1, [step(i, 4600.0) for i in range(7, 22)])
    assert telemetry.progress[1].samples_per_s == 4600.0


def test_the_job_log_gets_each_rebalance_once_with_its_reason_and_the_loss(tmp_path: Path) -> None:
    store = Store(tmp_path / "potluck.db")
    telemetry = Telemetry(store, tmp_path / "experiments")
    for slot, name in ((0, "a"), (1, "b")):
        telemetry.ingest({"id": slot + 1, "name": name}, 1, [
            AllocationEvent(t=1.0, replica=name, slot=slot, step=5, allocation={"0": 90, "1": 38},
                            reason="node b measured 2.4x slower"),
            *[step(i, 2000.0) for i in range(30)],
        ])
    lines = [(r["kind"], r["message"]) for r in store.events(1)]
    assert lines.count(("allocation", "step 5: slot 0 90 / slot 1 38 (node b measured 2.4x slower)")) == 1
    assert ("progress", "step 25: loss 1.0000, 2,000 samples/s, 2 participant(s)") in lines
    assert len([k for k, _ in lines if k == "progress"]) == 1


def test_a_replica_going_back_to_step_0_is_a_restart_that_is_counted_and_logged(tmp_path: Path) -> None:
    store = Store(tmp_path / "potluck.db")
    telemetry = Telemetry(store, tmp_path / "experiments")
    a, b = {"id": 1, "name": "a"}, {"id": 2, "name": "b"}
    telemetry.ingest(a, 1, [step(i, 2000.0) for i in range(20)])
    telemetry.ingest(b, 1, [step(i, 2000.0) for i in range(15)])  # b posts late: not a restart
    assert telemetry.progress[1].restarts == 0
    # Every replica was lost; the new ones start from step 0 with nobody to heal from.
    telemetry.ingest(a, 1, [step(i, 2000.0) for i in range(3)])
    telemetry.ingest(b, 1, [step(i, 2000.0) for i in range(3)])
    progress = telemetry.progress[1]
    assert (progress.restarts, progress.steps_lost, progress.step) == (1, 20, 2)
    assert any("training restarted from step 0: every replica was lost after step 19" in r["message"]
               for r in store.events(1))
    summary = telemetry.summarize(1, "succeeded")
    assert (summary.restarts, summary.steps_lost) == (1, 20)


def test_going_on_from_a_checkpoint_is_a_restart_even_when_no_step_was_lost(tmp_path: Path) -> None:
    """Every replica died right after the checkpoint of step 20 (the host saw step 20 last):
    their first steps after loading it do not go back, but training restarted all the same.
    A `--resume` job's first steps from a checkpoint are not a restart."""
    store = Store(tmp_path / "potluck.db")
    telemetry = Telemetry(store, tmp_path / "experiments")
    a, b = {"id": 1, "name": "a"}, {"id": 2, "name": "b"}
    for node in (a, b):
        telemetry.ingest(node, 1, [step(i, 2000.0) for i in range(1, 21)])
    for node in (a, b):
        # the checkpoint holds 21 committed steps (0-20): the first step after loading it is
        # step 21 again, as the replica's events say (resumed_from = the checkpoint's count)
        first = step(21, 2000.0)
        first.resumed_from = 21
        telemetry.ingest(node, 1, [first, step(22, 2000.0)])
    progress = telemetry.progress[1]
    assert (progress.restarts, progress.steps_lost, progress.step) == (1, 0, 22)
    fresh = step(31, 2000.0)
    fresh.resumed_from = 31
    telemetry.ingest(a, 2, [fresh, step(32, 2000.0)])
    assert telemetry.progress[2].restarts == 0
