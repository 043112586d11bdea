"""Time ``GET /metrics`` of a coordinator holding a large cluster (loopback only).

Starts a real ``potluck host`` process on 127.0.0.1 (port chosen by the OS), registers N fake
nodes through the HTTP API, heartbeats each with telemetry (CPU, RAM and G GPUs), submits a
job and posts one committed step per node (so every node has a share, samples/s and a
sample counter), then times GET /metrics with the metrics token: client-measured latency
over one keep-alive connection, after a few unmeasured requests.

    .venv/bin/python benchmarks/metrics_exporter.py --nodes 200 --requests 50

Prints a JSON result (min/median/p95/max ms, response size, series count, and the time to
build the same text in-process without HTTP) and exits 1 if the median is over --budget-ms.
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from coordinator_load import percentile, start_host

from potluck.contracts import wire as s
from potluck.contracts.versions import local_versions
from potluck.coordinator.prometheus import JobView, NodeView, cluster_families, render

GIB = 2**30


def telemetry(i: int, gpus: int) -> dict[str, Any]:
    return s.NodeTelemetry(
        cpu_percent=float(i % 100), memory_used_bytes=(4 + i % 8) * GIB, memory_total_bytes=32 * GIB,
        gpus=[s.GpuTelemetry(index=g, utilization_percent=float((i + g) % 100),
                             memory_used_bytes=(1 + g) * GIB, memory_total_bytes=24 * GIB,
                             temperature_c=50.0 + g, power_w=120.5 + g) for g in range(gpus)],
    ).model_dump()


def build_cluster(http: httpx.Client, nodes: int, gpus: int) -> list[tuple[int, str, int, str]]:
    """Register, heartbeat, submit a job, post a step per node. Returns (id, credential, slot, name)."""
    versions = local_versions().model_dump()
    out = []
    for i in range(nodes):
        reply = http.post("/api/v1/nodes", json={
            "name": f"node-{i:04d}", "node_key": f"fake-node-key-{i:08d}", "address": "127.0.0.1",
            "hardware": {"cpu_cores": 16, "memory_mb": 32768,
                         "gpus": [{"name": "Fake GPU", "memory_mb": 24576}] * gpus},
            "versions": versions})
        reply.raise_for_status()
        body = reply.json()
        out.append((body["node_id"], body["credential"], body["slot"], body["name"]))
    heartbeat_all(http, out, gpus)
    job = http.post("/api/v1/jobs", json={"config": {"steps": 100000, "fault": {"max_replicas": 4096}}})
    job.raise_for_status()
    job_id = job.json()["id"]
    allocation = {str(slot): 16 + slot % 48 for _, _, slot, _ in out}
    heartbeat_all(http, out, gpus)  # every node gets its replica assigned
    for node_id, credential, slot, name in out:
        record = {"type": "step", "step": 0, "committed": True, "local_batch": allocation[str(slot)],
                  "participants": nodes, "compute_s": 0.05, "quorum_s": 0.001, "allreduce_s": 0.01,
                  "commit_s": 0.001, "loss": 2.3, "samples_per_s": 5000.0, "allocation": allocation,
                  "t": time.time(), "replica": name, "slot": slot}
        reply = http.post(f"/api/v1/nodes/{node_id}/jobs/{job_id}/metrics", json={"records": [record]},
                          headers={s.NODE_CREDENTIAL_HEADER: credential})
        reply.raise_for_status()
    return out


def heartbeat_all(http: httpx.Client, nodes: list[tuple[int, str, int, str]], gpus: int) -> None:
    for i, (node_id, credential, _, _) in enumerate(nodes):
        reply = http.post(f"/api/v1/nodes/{node_id}/heartbeat", json={"telemetry": telemetry(i, gpus)},
                          headers={s.NODE_CREDENTIAL_HEADER: credential})
        reply.raise_for_status()


def render_only_ms(nodes: int, gpus: int, repeat: int = 50) -> float:
    """Median ms to build the same text from plain data, no server, no HTTP."""
    views = [NodeView(name=f"node-{i:04d}", state="alive", heartbeat_age_s=0.5, compute_samples_per_s=300.0,
                      resources=s.NodeTelemetry(**telemetry(i, gpus))) for i in range(nodes)]
    names = [v.name for v in views]
    job = JobView(job_id=1, progress=s.JobProgress(step=10, participants=nodes, loss=2.3, samples_per_s=5000.0,
                                                   shares={n: 1 / nodes for n in names}),
                  node_samples={n: 1000 for n in names})
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        render(cluster_families(views, [job]))
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200, help="fake nodes")
    parser.add_argument("--gpus", type=int, default=2, help="GPUs per node")
    parser.add_argument("--requests", type=int, default=50, help="timed GET /metrics")
    parser.add_argument("--budget-ms", type=float, default=50, help="fail when the median is above this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="potluck-bench-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        proc, info = start_host(state)
        try:
            base = f"http://127.0.0.1:{info['port']}"
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {info['token']}"},
                              trust_env=False, timeout=30) as http:
                nodes = build_cluster(http, args.nodes, args.gpus)
                heartbeat_all(http, nodes, args.gpus)  # fresh: none is lost while we measure
            scrape_token = (state / "metrics-token").read_text().strip()
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {scrape_token}"},
                              trust_env=False, timeout=30) as scraper:
                for _ in range(5):
                    scraper.get("/metrics").raise_for_status()
                times, text = [], ""
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    resp = scraper.get("/metrics")
                    times.append(time.perf_counter() - t0)
                    resp.raise_for_status()
                    text = resp.text
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    up = sum(1 for line in samples if line.startswith("potluck_node_up{") and line.endswith(" 1"))
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "nodes": args.nodes, "gpus_per_node": args.gpus, "nodes_up": up,
        "series": len(samples), "bytes": len(text.encode()), "requests": len(times),
        "get_metrics_ms": {"min": ms(min(times)), "median": ms(statistics.median(times)),
                           "p95": ms(percentile(times, 0.95)), "max": ms(max(times))},
        "render_only_ms": render_only_ms(args.nodes, args.gpus),
    }
    print(json.dumps(result, indent=2))
    ok = up == args.nodes and result["get_metrics_ms"]["median"] < args.budget_ms
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
