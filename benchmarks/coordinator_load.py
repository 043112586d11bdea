"""Coordinator API latency under a simulated cluster (loopback only, bounded in time).

Starts a real ``potluck host`` process (uvicorn + SQLite + Lighthouse) on 127.0.0.1 with a
port chosen by the OS, registers N simulated agents, submits a job so every agent has a
replica to report on, then has each agent send one heartbeat (with its replica's step) and one
metrics batch per second for the measured duration. Latency is measured by the client, per
request, from send to full response: the honest number an agent sees.

    .venv/bin/python benchmarks/coordinator_load.py --agents 200 --seconds 30

Prints a JSON result (p50/p90/p99/max per endpoint, error count, achieved rate, host CPU) and
exits 1 if p99 >= --p99-budget-ms. Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from potluck.contracts.versions import local_versions


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_host(state_dir: Path, *extra: str, local_agent: bool = False,
               ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``potluck host`` on 127.0.0.1 (ports chosen by the OS; ``extra`` arguments appended,
    e.g. ``--emulate-speed 1.0`` for its local agent). Returns it and its host.json + token."""
    cmd = [sys.executable, "-m", "potluck", "host", "--advertise", "127.0.0.1", "--port", "0",
           "--lighthouse-port", "0", *([] if local_agent else ["--no-local-agent"]),
           "--state-dir", str(state_dir), *extra]
    log = open(state_dir.parent / "host.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"host exited: see {state_dir.parent / 'host.log'}")
        try:
            info = json.loads((state_dir / "host.json").read_text())
            info["token"] = (state_dir / "token").read_text().strip()
            return proc, info
        except (OSError, ValueError):
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("host did not start in 60 s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Connection:
    """One keep-alive HTTP/1.1 connection with a minimal client (httpx costs ~10x the CPU,
    and on a 2-core box a heavy client would measure its own event loop, not the server)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: Any, node: str = "") -> tuple[int, Any]:
        try:
            return await self._post(path, payload, node)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            self.close()  # the server closed an idle keep-alive connection: reconnect once
            self.writer = None
            return await self._post(path, payload, node)

    async def _post(self, path: str, payload: Any, node: str) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        body = json.dumps(payload).encode()
        extra = f"X-Potluck-Node: {node}\r\n" if node else ""
        self.writer.write(f"POST {path} HTTP/1.1\r\n{self.head}{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        data = await self.reader.readexactly(length)
        return status, json.loads(data) if data else None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def agent(i: int, conn: Connection, job_id: int, stop_at: float, start_at: float,
                lat: dict[str, list[float]], errors: list[str], versions: dict[str, str]) -> None:
    body = {"name": f"sim-{i:04d}", "node_key": f"simulated-node-key-{i:08d}", "address": "127.0.0.1",
            "hardware": {"cpu_cores": 8, "memory_mb": 16384, "gpus": [{"name": "Sim GPU", "memory_mb": 8192}]},
            "versions": versions, "speed": 1.0}
    status, reply = await conn.post("/api/v1/nodes", body)
    if status != 200:
        raise SystemExit(f"registration failed: {status} {reply}")
    node_id, credential = reply["node_id"], reply["credential"]
    await asyncio.sleep(max(0.0, start_at - time.monotonic() - 1) + random.random())  # spread over 1 s
    step = 0
    next_t = time.monotonic()
    while next_t < stop_at:
        step += 1
        report = {"replicas": [{"job_id": job_id, "state": "running", "step": step, "ready": True}]}
        records = [{"type": "step", "step": step, "committed": True, "local_batch": 64, "participants": 200,
                    "compute_s": 0.05, "comm_s": 0.01, "wait_s": 0.002, "loss": 1.0 / step,
                    "samples_per_s": 5000.0, "t": time.time(), "replica": f"sim-{i:04d}",
                    "slot": i % 256, "quorum_s": 0.001, "allreduce_s": 0.012, "commit_s": 0.001}]
        for name, path, payload in (
            ("heartbeat", f"/api/v1/nodes/{node_id}/heartbeat", report),
            ("metrics", f"/api/v1/nodes/{node_id}/jobs/{job_id}/metrics", {"records": records}),
        ):
            t0 = time.perf_counter()
            try:
                status, _ = await conn.post(path, payload, credential)
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors.append(f"{name} {type(exc).__name__}")
                conn.writer = None
                continue
            if status != 200:
                errors.append(f"{name} {status}")
            if time.monotonic() >= start_at:
                lat[name].append(time.perf_counter() - t0)
        next_t += 1.0
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))


async def load(info: dict[str, Any], agents: int, seconds: float, warmup: float) -> dict[str, Any]:
    lat: dict[str, list[float]] = {"heartbeat": [], "metrics": []}
    errors: list[str] = []
    versions = local_versions().model_dump()
    host, port = "127.0.0.1", int(info["port"])
    setup = Connection(host, port, info["token"])
    first = {"name": "sim-first", "node_key": "simulated-node-key-first", "address": "127.0.0.1",
             "hardware": {"cpu_cores": 1, "memory_mb": 1}, "versions": versions}
    await setup.post("/api/v1/nodes", first)
    status, job = await setup.post("/api/v1/jobs", {"config": {"steps": 100000, "fault": {"max_replicas": 256}}})
    if status != 201:
        raise SystemExit(f"job submission failed: {status} {job}")
    setup.close()
    conns = [Connection(host, port, info["token"]) for _ in range(agents)]
    start_at = time.monotonic() + 5 + warmup  # registration, then warm-up, then measure
    stop_at = start_at + seconds
    await asyncio.gather(*(agent(i, conns[i], job["id"], stop_at, start_at, lat, errors, versions)
                           for i in range(agents)))
    for conn in conns:
        conn.close()
    return {"lat": lat, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200, help="simulated agents")
    parser.add_argument("--seconds", type=float, default=30, help="measured duration")
    parser.add_argument("--warmup", type=float, default=5, help="unmeasured warm-up seconds")
    parser.add_argument("--p99-budget-ms", type=float, default=50, help="fail above this p99")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="potluck-bench-") as tmp:
        state = Path(tmp) / "state"
        proc, info = start_host(state)
        try:
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            raw = asyncio.run(load(info, args.agents, args.seconds, args.warmup))
            host_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    every = raw["lat"]["heartbeat"] + raw["lat"]["metrics"]
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "agents": args.agents,
        "seconds": args.seconds,
        "requests": len(every),
        "rate_per_s": round(len(every) / args.seconds, 1),
        "errors": len(raw["errors"]),
        "error_kinds": dict(collections.Counter(raw["errors"])),
        "host_cpu_cores": round(host_cpu, 2),
        **{f"{name}_ms": {"p50": ms(percentile(v, 0.5)), "p90": ms(percentile(v, 0.9)),
                          "p99": ms(percentile(v, 0.99)), "max": ms(max(v, default=float("nan")))}
           for name, v in (*raw["lat"].items(), ("all", every))},
        "mean_ms": ms(statistics.fmean(every)) if every else None,
    }
    print(json.dumps(result, indent=2))
    ok = result["all_ms"]["p99"] < args.p99_budget_ms and not raw["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
