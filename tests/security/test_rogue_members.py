"""Tier 3: an unassigned process joins a real job's quorum through the Lighthouse.

Each test runs a LocalCluster (separate replica processes on loopback, gloo, torchft) and a
rogue torchft Manager (rogue_member.py) that the coordinator never assigned. The rogue
achieves nothing, training continues, the replicas report an alert and end identical.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from potluck.contracts.events import parse_event
from potluck.contracts.jobspec import JobSpec
from potluck.launcher import LocalCluster
from potluck.trainer.trust import member_tag, strangers

ROGUE = Path(__file__).with_name("rogue_member.py")
JOB = {"steps": 30, "global_batch": 32, "policy": "equal", "emulation": {"sample_s": 5e-3}}


def _wait_for_step(cluster: LocalCluster, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = cluster.records(0)
        if any(r["type"] == "step" and r["committed"] and r["step"] >= step for r in recs):
            return
        assert all(p.poll() is None for p in cluster.procs.values()), "a replica died early"
        time.sleep(0.1)
    raise AssertionError(f"replicas did not reach step {step}")


def _attack(job: JobSpec, tmp_path: Path, mode: str, out: Path,
            extra: Callable[[str], list[str]] = lambda secret: []
            ) -> tuple[subprocess.Popen[str], str, dict[int, int], list[list[dict]]]:
    """Two replicas train ``job``; the rogue (``rogue_member.py MODE``, given ``extra(secret)``
    as further arguments) joins once they are at step 3. Returns the rogue, its output, the
    replicas' exit codes and their records."""
    out.mkdir()
    with LocalCluster(job, [1.0, 1.0], tmp_path / "run") as cluster:
        rogue = subprocess.Popen(
            [sys.executable, str(ROGUE), mode, cluster.lighthouse_addr, str(out), "3",
             *extra(cluster.secret)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        _wait_for_step(cluster, 3)
        (out / "go").touch()
        output, _ = rogue.communicate(timeout=120)
        codes = cluster.wait(240)
        records = [cluster.records(s) for s in range(2)]
    return rogue, output, codes, records


@pytest.mark.parametrize("mode", ["poison", "steal"])
def test_rogue_quorum_member_gets_nothing_and_runs_nothing(tmp_path: Path, mode: str) -> None:
    """poison: the rogue claims the highest step and serves a pickle that creates a file when
    loaded; steal: the rogue joins at step 0 so a real replica sends it the model."""
    job = JobSpec.parse(JOB)
    out = tmp_path / "rogue"
    rogue, output, codes, records = _attack(job, tmp_path, mode, out)
    assert rogue.returncode == 0, output
    assert int((out / "rounds").read_text()) > 0, "the rogue never got into a quorum"
    assert not (out / "pwned").exists(), "a replica unpickled the rogue's checkpoint"
    assert not (out / "stolen").exists(), "the rogue received a replica's state"
    assert codes == {0: 0, 1: 0}
    for recs in records:
        for rec in recs:
            parse_event(rec)  # every record, alerts included, is a valid typed event
    alerts = [r for recs in records for r in recs if r["type"] == "alert"]
    assert alerts, "no replica reported the stranger"
    done = [recs[-1] for recs in records]
    assert all(d["type"] == "done" and d["final_step"] == job.steps - 1 for d in done)
    assert len({d["params_sha256"] for d in done}) == 1


@pytest.mark.parametrize("mode", ["replay", "mute"])
def test_a_replayed_member_tag_gets_into_the_group_but_not_past_the_proof(tmp_path: Path, mode: str) -> None:
    """The rogue carries a real tag for a slot no replica holds (as if captured from an
    earlier quorum's replica ids), so the tag check admits it and it reaches the gloo group.
    replay: it answers the proof exchange without the job's secret; mute: it never answers
    (the replicas give up after the group's timeout, shortened here). No step with it commits."""
    job = JobSpec.parse({**JOB, "fault": {"step_timeout_s": 3}} if mode == "mute" else JOB)
    out = tmp_path / "rogue"

    def captured(secret: str) -> list[str]:
        tag = f"{member_tag(secret, 7)}_7"
        assert strangers(secret, [f"rogue.{tag}:uuid"]) == []  # tags alone: let in
        return [tag]

    rogue, output, codes, records = _attack(job, tmp_path, mode, out, captured)
    assert codes == {0: 0, 1: 0}
    for recs in records:
        for rec in recs:
            parse_event(rec)
    alerts = [r["message"] for recs in records for r in recs if r["type"] == "alert"]
    assert not any("does not carry the job's tag" in m for m in alerts), alerts
    if mode == "replay":
        assert any("proof" in m and "_7" in m for m in alerts), alerts
    else:  # the replicas waited out the exchange, refused the quorum and lived on
        logs = [(tmp_path / "run" / "replicas" / f"node{s}.log").read_text() for s in range(2)]
        assert all("proof exchange failed" in log for log in logs)
    done = [recs[-1] for recs in records]
    assert all(d["type"] == "done" and d["final_step"] == job.steps - 1 for d in done)
    assert len({d["params_sha256"] for d in done}) == 1
    # no step with the rogue in it committed: every committed step had the two replicas or fewer
    steps = [r for recs in records for r in recs if r["type"] == "step"]
    assert all(r["participants"] <= 2 for r in steps if r["committed"])
    assert any(r["participants"] == 3 and not r["committed"] for r in steps), "rogue never in a step"
    assert rogue.returncode == 0, output
    assert (out / "groups").exists() and int((out / "groups").read_text()) > 0, \
        f"the rogue never reached a gloo group with the replicas:\n{output}"


def test_checkpoint_server_refuses_requests_without_the_secret(tmp_path: Path) -> None:
    """Straight to a real replica's checkpoint server: no proof, no state (403)."""
    import urllib.error
    import urllib.request
    from datetime import timedelta

    import torch

    from potluck.trainer.checkpoint import SecureCheckpointTransport, request_auth

    alerts: list[str] = []
    t = SecureCheckpointTransport(bind_host="127.0.0.1", advertise_host="127.0.0.1",
                                  secret=b"s" * 32, timeout=timedelta(seconds=2),
                                  on_alert=alerts.append)
    try:
        t.send_checkpoint([1], 5, {"user": {"w": torch.ones(3)}}, timedelta(seconds=2))
        url = t.metadata() + "5"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)
        assert err.value.code == 403 and alerts
        forged, _ = request_auth(b"x" * 32, "/checkpoint/5")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, headers={"X-Potluck-Auth": forged}), timeout=5)
        assert err.value.code == 403
        state = t.recv_checkpoint(0, t.metadata(), 5, timedelta(seconds=5))  # a real member
        assert torch.equal(state["user"]["w"], torch.ones(3))
    finally:
        t.shutdown()
