"""A node that leaves cleanly (Ctrl-C on `potluck join`) mid-job and joins again gets the
running job back and heals into the group, like a node that was lost."""

from __future__ import annotations

import json
import signal
from typing import Any

from cluster_helpers import wait_until
from test_cluster import JOB, job, job_yaml

from conftest import Cluster


def test_clean_leave_then_join_again_rejoins_the_running_job(cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2")
    cluster.start_agent(host, "b", "127.0.0.3", 1.0)
    c = cluster.start_agent(host, "c", "127.0.0.4", 0.5)
    wait_until(lambda: len(cluster.nodes()) == 2, 60, "two nodes to join")
    out = cluster.cli("train", *JOB, "--steps", "100000", "--config", job_yaml(cluster), "--detach", "--json")
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["job_id"]
    wait_until(lambda: job(cluster, job_id)["progress"]["step"] >= 8, 90, "training to reach step 8")

    assert cluster.stop(c, signal.SIGINT) == 0  # a clean leave
    wait_until(lambda: cluster.nodes()["c"]["state"] == "left", 30, "c to have left")
    replicas = {r["node"]: r["state"] for r in job(cluster, job_id)["replicas"]}
    assert replicas["c"] == "stopped" and job(cluster, job_id)["state"] == "running"

    cluster.start_agent(host, "c", "127.0.0.4", 0.5)
    attempt = cluster.tmp / "agent-c" / "runs" / f"job-{job_id}" / "attempt-2" / "replicas" / "c.jsonl"

    def healed() -> list[dict[str, Any]]:
        lines = attempt.read_text().splitlines() if attempt.exists() else []
        return [r for r in map(json.loads, lines) if r["type"] == "step" and r["committed"]
                and r["participants"] == 2]

    wait_until(lambda: len(healed()) >= 2, 90, "c to rejoin the job and train")
    assert healed()[0]["step"] > 8  # healed from b, not restarted from step 0
    assert "re-assigned to c" in cluster.cli("logs", str(job_id)).stdout
    assert cluster.cli("cancel", str(job_id)).returncode == 0
