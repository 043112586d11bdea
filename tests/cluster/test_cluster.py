"""A real cluster on one box: `potluck host` and `potluck join` processes on distinct loopback
addresses, jobs trained with real gloo collectives under torchft, failures injected by killing
processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from cluster_helpers import QUICK_LOSS, free_port, wait_until

from conftest import Cluster
from potluck.agent.node import MAX_RESTARTS

# Emulated devices: a speed-1.0 device computes a sample in 0.4 ms, so speeds show in timings.
JOB = ["--model", "mlp", "--dataset", "digits", "--global-batch", "128", "--policy", "dynamic"]


def job_yaml(cluster: Cluster, **fields: Any) -> str:
    path = cluster.tmp / "job.yaml"
    flat = {"rebalance_interval": 5, **fields}
    path.write_text("emulation: {sample_s: 0.0004}\nfault: {step_timeout_s: 8}\n"
                    + "".join(f"{k}: {v}\n" for k, v in flat.items()))
    return str(path)


def job(cluster: Cluster, job_id: int) -> dict[str, Any]:
    return next(j for j in cluster.jobs() if j["id"] == job_id)


def test_three_nodes_with_mixed_speeds_train_digits(cluster: Cluster) -> None:
    # The host trains too (local agent at 127.0.0.2); two friends join at .3 and .4.
    host = cluster.start_host("127.0.0.2", "--name", "hostbox", "--emulate-speed", "1.0", local_agent=True)
    cluster.start_agent(host, "friend-b", "127.0.0.3", 0.5)
    cluster.start_agent(host, "friend-c", "127.0.0.4", 0.25)
    wait_until(lambda: len(cluster.nodes()) == 3, 60, "three nodes to join")

    nodes = cluster.nodes()
    assert {n: (v["address"], v["interface"], v["state"]) for n, v in nodes.items()} == {
        "hostbox": ("127.0.0.2", "lo", "alive"),
        "friend-b": ("127.0.0.3", "lo", "alive"),
        "friend-c": ("127.0.0.4", "lo", "alive"),
    }
    assert len({v["slot"] for v in nodes.values()}) == 3

    out = cluster.cli("train", *JOB, "--steps", "80", "--config", job_yaml(cluster), "--json", timeout=180)
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout)
    assert summary["state"] == "succeeded"
    assert summary["nodes"] == ["friend-b", "friend-c", "hostbox"]
    assert summary["steps"] >= 79
    assert summary["test_accuracy"] >= 0.9
    assert summary["final_loss"] < 0.5
    assert summary["samples_per_s"] > 0 and 0 < summary["compute_fraction"] <= 1
    # How it synced: the job's allreduce, measured at step 0; on loopback the sync is far
    # under the job's 8 s step timeout, which stays. Every committed sample is counted once.
    sync = summary["sync"]
    assert (sync["plan"]["strategy"], sync["plan"]["chosen_by"], sync["plan"]["members"]) == ("allreduce", "job", 3)
    assert (sync["plan"]["collective_timeout_s"], sync["plan"]["quorum_timeout_s"]) == (8, 12)
    assert sync["sync_bytes"] == sync["plan"]["sync_bytes"] == 4 * sync["plan"]["values"] + 64 * 12 * 4
    assert sum(sync["samples"].values()) == 128 * summary["steps"], sync["samples"]
    assert sync["samples"]["hostbox"] > sync["samples"]["friend-c"]
    assert 0 < sync["compute_fraction"] <= 1 and 0 < sync["sync_s"] < sync["step_s"]

    # Each replica advertised its own loopback address and pinned gloo to `lo`.
    for name, addr in (("friend-b", "127.0.0.3"), ("friend-c", "127.0.0.4")):
        spec = json.loads(next((cluster.tmp / f"agent-{name}" / "runs").glob("job-*/attempt-*/spec.json")).read_text())
        assert spec["advertise_host"] == addr
    # The dynamic policy gave the fastest node the largest share of the batch.
    shares = job(cluster, summary["job_id"])["progress"]["shares"]
    assert shares["hostbox"] > shares["friend-b"] > shares["friend-c"]
    # Metrics were streamed to the host and stored there.
    run_dir = cluster.host_dir / "experiments" / f"job-{summary['job_id']}"
    assert json.loads((run_dir / "summary.json").read_text())["state"] == "succeeded"
    lines = (run_dir / "replicas" / "friend-c.jsonl").read_text().splitlines()
    assert any(json.loads(line)["type"] == "done" for line in lines)
    # Measured speeds reflect the emulated ones.
    speeds = {n: v["measured_samples_per_s"] for n, v in cluster.nodes().items()}
    assert speeds["hostbox"] > speeds["friend-b"] > speeds["friend-c"] > 0

    text = cluster.cli("status")
    assert text.returncode == 0 and "friend-c" in text.stdout
    logs = cluster.cli("logs", str(summary["job_id"]))
    assert "training starts (all replicas ready)" in logs.stdout and "succeeded" in logs.stdout


def test_killed_agent_is_lost_then_rejoins_the_running_job(cluster: Cluster) -> None:
    """A machine vanishes mid-job (SIGKILL of its agent and replica) and comes back: the
    others go on without it, and it is re-assigned the job and heals into the group. The job
    is long on purpose and cancelled once that is shown, so no step count races the test."""
    host = cluster.start_host("127.0.0.2", timeouts=QUICK_LOSS)
    cluster.start_agent(host, "b", "127.0.0.3", 1.0)
    c = cluster.start_agent(host, "c", "127.0.0.4", 0.5)
    wait_until(lambda: len(cluster.nodes()) == 2, 60, "two nodes to join")

    out = cluster.cli("train", *JOB, "--steps", "100000", "--config", job_yaml(cluster), "--detach", "--json")
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["job_id"]
    wait_until(lambda: job(cluster, job_id)["progress"]["step"] >= 15, 90, "training to reach step 15")

    cluster.stop(c, signal.SIGKILL)  # the machine vanishes; its replica dies with the agent
    wait_until(lambda: cluster.nodes()["c"]["state"] == "lost", 30, "node c to be marked lost")
    assert "lost" in cluster.cli("status").stdout
    step_at_loss = job(cluster, job_id)["progress"]["step"]
    wait_until(lambda: job(cluster, job_id)["progress"]["step"] >= step_at_loss + 10, 60,
               "training to go on without c")
    assert job(cluster, job_id)["state"] == "running"

    cluster.start_agent(host, "c", "127.0.0.4", 0.5)  # same state dir: same node, same slot
    wait_until(lambda: cluster.nodes()["c"]["state"] == "alive", 30, "node c to come back")
    runs = cluster.tmp / "agent-c" / "runs" / f"job-{job_id}"

    def second_attempt() -> list[dict[str, Any]]:
        path = runs / "attempt-2" / "replicas" / "c.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(x) for x in lines if x.strip()]

    def healed_steps() -> list[dict[str, Any]]:
        return [r for r in second_attempt() if r["type"] == "step" and r["committed"]
                and r["participants"] == 2]

    wait_until(lambda: len(healed_steps()) >= 3, 90, "c to heal and train again")
    # It healed from a peer: its first step back is far past 0, and the group is whole again.
    assert healed_steps()[0]["step"] > step_at_loss
    events = cluster.cli("logs", str(job_id)).stdout
    assert "c lost" not in events  # node events are not job events
    assert "re-assigned to c" in events
    assert len(sorted(runs.glob("attempt-*"))) == 2
    out = cluster.cli("cancel", str(job_id))
    assert out.returncode == 0 and f"job {job_id}" in out.stdout and "cancelled" in out.stdout, out.stderr
    assert job(cluster, job_id)["state"] == "cancelled"
    again, missing = cluster.cli("cancel", str(job_id)), cluster.cli("cancel", "999")
    assert again.returncode == 1 and f"job {job_id} already cancelled" in again.stderr
    assert missing.returncode == 1 and "no job 999" in missing.stderr


def test_forgetting_a_lost_node_ends_its_orphan_job_and_frees_its_name(cluster: Cluster) -> None:
    """The only node vanishes mid-job: `potluck forget` removes it, the job stops waiting for
    it (the queued job is next), and the machine joins again under its name and slot."""
    host = cluster.start_host("127.0.0.2", timeouts={**QUICK_LOSS, "orphan_grace_s": 2.0})
    b = cluster.start_agent(host, "b", "127.0.0.3", 1.0)
    wait_until(lambda: "b" in cluster.nodes(), 60, "b to join")
    long = cluster.cli("train", *JOB, "--steps", "5000", "--config", job_yaml(cluster), "--detach", "--json")
    long_id = json.loads(long.stdout)["job_id"]
    short = cluster.cli("train", *JOB, "--steps", "5", "--config", job_yaml(cluster), "--detach", "--json")
    short_id = json.loads(short.stdout)["job_id"]
    wait_until(lambda: job(cluster, long_id)["progress"]["step"] >= 1, 90, "the first job to train")
    cluster.stop(b, signal.SIGKILL)
    wait_until(lambda: cluster.nodes()["b"]["state"] == "lost", 30, "b to be marked lost")

    usage, unknown = cluster.cli("forget"), cluster.cli("forget", "nobody")
    assert usage.returncode == 2 and "--away" in usage.stderr, usage.stderr
    assert unknown.returncode == 1 and "no node named 'nobody'" in unknown.stderr, unknown.stderr
    out = cluster.cli("forget", "--away", "--json")
    assert out.returncode == 0, out.stderr
    assert [(n["name"], n["state"]) for n in json.loads(out.stdout)] == [("b", "forgotten")]
    assert cluster.nodes() == {}
    final = wait_until(lambda: (j := job(cluster, long_id))["state"] != "running" and j, 60,
                       "the orphaned job to end")
    assert final["state"] == "failed" and "every node left, failed or was forgotten" in final["message"]
    assert "b was forgotten" in cluster.cli("logs", str(long_id)).stdout

    cluster.start_agent(host, "b", "127.0.0.3", 1.0)  # same machine: a new node, same name
    wait_until(lambda: "b" in cluster.nodes(), 60, "b to join again")
    assert cluster.nodes()["b"]["slot"] == 0
    done = wait_until(lambda: (j := job(cluster, short_id))["state"] in ("succeeded", "failed") and j,
                      120, "the queued job to run")
    assert done["state"] == "succeeded", done
    alive = cluster.cli("forget", "b")
    assert alive.returncode == 1 and "node b is alive" in alive.stderr, alive.stderr


def test_ctrl_c_in_train_offers_to_cancel_the_job(cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2")
    agent = cluster.start_agent(host, "b", "127.0.0.3", 1.0)
    wait_until(lambda: cluster.nodes().get("b", {}).get("state") == "alive", 60, "b to join")
    log = (cluster.tmp / "train.log").open("wb")
    train = subprocess.Popen(
        [sys.executable, "-m", "potluck", "train", *JOB, "--steps", "5000", "--config", job_yaml(cluster),
         "--state-dir", str(cluster.host_dir)],
        stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=cluster.env(),
    )
    try:
        wait_until(lambda: (j := cluster.jobs()) and j[0]["progress"]["step"] >= 3, 90, "training to start")
        train.send_signal(signal.SIGINT)
        assert train.stdin is not None
        train.stdin.write(b"y\n")
        train.stdin.close()
        assert train.wait(timeout=30) == 1
    finally:
        if train.poll() is None:
            train.kill()
        log.close()
    output = (cluster.tmp / "train.log").read_text()
    assert "cancel job 1?" in output and "job 1 cancelled" in output
    jobs = cluster.json("jobs")
    assert jobs[0]["state"] == "cancelled"
    # The agent stops the replica and stays in the cluster, ready for the next job.
    wait_until(lambda: "stopping the replica" in (cluster.tmp / "agent-b.log").read_text(), 30,
               "the agent to stop its replica")
    assert cluster.nodes()["b"]["state"] == "alive"
    # Ctrl-C on the agent: it leaves the cluster cleanly.
    assert cluster.stop(agent, signal.SIGINT) == 0
    assert cluster.nodes()["b"]["state"] == "left"
    assert "b left the cluster" in (cluster.tmp / "agent-b.log").read_text()


def test_coordinator_restart_mid_job(cluster: Cluster) -> None:
    """A clean stop of `potluck host` mid-job: state survives in SQLite, agents reconnect by
    themselves, and the replicas keep training through it (new Lighthouse, same port)."""
    port, lh_port = free_port("127.0.0.2"), free_port("127.0.0.2")
    ports = ("--port", str(port), "--lighthouse-port", str(lh_port))
    host = cluster.start_host("127.0.0.2", *ports)
    cluster.start_agent(host, "b", "127.0.0.3", 1.0)
    cluster.start_agent(host, "c", "127.0.0.4", 0.5)
    wait_until(lambda: len(cluster.nodes()) == 2, 60, "two nodes to join")
    first = cluster.cli("train", *JOB, "--steps", "3", "--config", job_yaml(cluster), "--json", timeout=120)
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["job_id"]
    out = cluster.cli("train", *JOB, "--steps", "100", "--config", job_yaml(cluster), "--detach", "--json")
    job_id = json.loads(out.stdout)["job_id"]
    wait_until(lambda: job(cluster, job_id)["progress"]["step"] >= 10, 90, "training to reach step 10")

    assert cluster.stop(host["proc"]) == 0  # SIGTERM: a clean stop
    assert not (cluster.host_dir / "host.json").exists()
    down = cluster.cli("status")
    assert down.returncode == 1 and "no running `potluck host`" in down.stderr

    cluster.start_host("127.0.0.2", *ports, name="host-again")
    assert set(cluster.nodes()) == {"b", "c"}  # remembered from SQLite
    wait_until(lambda: all(n["state"] == "alive" for n in cluster.nodes().values()), 60,
               "agents to reconnect by themselves")
    assert job(cluster, first_id)["state"] == "succeeded"
    assert "lost connection to the host" in (cluster.tmp / "agent-b.log").read_text()
    assert [j["id"] for j in cluster.json("jobs")] == [job_id, first_id]
    final = wait_until(lambda: (j := job(cluster, job_id))["state"] in ("succeeded", "failed") and j, 150,
                       "the job to end")
    assert final["state"] == "succeeded", final
    assert final["summary"]["steps"] >= 99 and final["summary"]["test_accuracy"] >= 0.9
    # Both finished, with the same parameters. A replica whose quorum or heal timed out while
    # the Lighthouse was away is restarted by its agent and heals (within its restart budget).
    assert sorted(r["node"] for r in final["replicas"] if r["state"] == "done") == ["b", "c"], final
    folder = cluster.host_dir / "experiments" / f"job-{job_id}" / "replicas"
    digests = {json.loads(line)["params_sha256"] for name in ("b", "c")
               for line in (folder / f"{name}.jsonl").read_text().splitlines() if '"done"' in line}
    assert len(digests) == 1
    for name in ("b", "c"):
        assert len(list((cluster.tmp / f"agent-{name}" / "runs" / f"job-{job_id}").glob("attempt-*"))) <= 1 + MAX_RESTARTS
