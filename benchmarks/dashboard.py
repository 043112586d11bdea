"""The web dashboard's performance goals (issue 11), against a real ``potluck host`` on 127.0.0.1.

- ``latency``: from a step's commit (the replica's ``StepEvent.t``) to the browser showing it
  (p95 < 1.5 s). A real host, its local agent training a real job (digits + MLP, emulated
  device), and the page in headless Chromium on the Job view. A MutationObserver in the page
  notes when the step counter changes and the next animation frame after it (the frame that
  paints it), on ``performance.timeOrigin + performance.now()``: the same machine's wall
  clock as the replica's ``time.time()``. Every committed step counts, shown when the counter
  first reads that step or a later one (a snapshot every second skips steps in between); the
  latency of the steps the counter actually displayed is reported beside it.
- ``transfer``: the page's total transfer (HTML, JS, CSS, icon and the first snapshot) under
  250 KB gzip. A host holding N nodes (telemetry, 2 GPUs each) and a job whose charts are full
  (240 points for every node); what Chromium received, what the server sends to a client
  asking ``Accept-Encoding: gzip``, and the raw and locally gzipped sizes of the same bytes.
- ``cpu``: what the dashboard and the exporter add to the host's CPU with 200 agents
  heartbeating (< 5% of a core). 200 simulated agents (coordinator_load.py's minimal client)
  each send a heartbeat with telemetry and a metrics batch (one committed step) every
  heartbeat interval; the host's CPU (psutil: the process and its children) is read over
  phases that alternate (a) nobody watching and (b) one open dashboard stream plus Prometheus
  scraping ``/metrics`` every 15 s (docs/metrics.md's scrape_interval).

Run (loopback only; about 2, 1 and 4 minutes):

    PYTHONPATH=src .venv/bin/python benchmarks/dashboard.py latency --seconds 60
    PYTHONPATH=src .venv/bin/python benchmarks/dashboard.py transfer --nodes 200
    PYTHONPATH=src .venv/bin/python benchmarks/dashboard.py cpu --agents 200 --seconds 30 --rounds 2

Each prints a JSON result and exits 1 when its goal is missed. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from coordinator_load import Connection, percentile, start_host
from metrics_exporter import telemetry

from potluck.contracts import wire as s
from potluck.contracts.versions import local_versions

LATENCY_GOAL_S = 1.5
TRANSFER_GOAL_KB = 250
CPU_GOAL_PCT = 5.0
SCRAPE_EVERY_S = 15.0
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def stats(values: list[float], scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    r = lambda v: round(v * scale, digits)  # noqa: E731
    return {"n": len(values), "min": r(min(values)), "p50": r(percentile(values, 0.5)),
            "p95": r(percentile(values, 0.95)), "max": r(max(values))}


@contextmanager
def host(*extra: str, local_agent: bool = False) -> Iterator[tuple[psutil.Process, dict[str, Any], Path]]:
    """A real ``potluck host`` process; yields it, its host.json + token, and its state dir."""
    with tempfile.TemporaryDirectory(prefix="potluck-bench-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        proc, info = start_host(state, *extra, local_agent=local_agent)
        info["url"] = f"http://127.0.0.1:{info['port']}"
        try:
            yield psutil.Process(proc.pid), info, state
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise SystemExit("Debian's `chromium` is not installed (sudo apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def local_only(page: Any, origin: str) -> list[str]:
    """Block (and list) every request to anything but ``origin``."""
    blocked: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(origin + "/"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return blocked


# -- latency -----------------------------------------------------------------------------------

WATCH = """() => {
  // The step counter as painted: each change (MutationObserver, before paint) and the start
  // of the next animation frame, the one that paints it. Both on the machine's wall clock.
  const now = () => (performance.timeOrigin + performance.now()) / 1000;  // seconds
  window.__shown = [];
  let last = null;
  const check = () => {
    const el = document.querySelector("[data-testid=step]");
    const text = el ? el.textContent : null;
    if (text === null || text === last) return;
    last = text;
    const entry = {text, changed: now(), frame: null};
    window.__shown.push(entry);
    requestAnimationFrame(() => { entry.frame = now(); });
  };
  new MutationObserver(check).observe(document.getElementById("view-job"),
                                      {childList: true, subtree: true, characterData: true});
  check();
}"""

SNAPSHOTS = """
// Note each snapshot the page's own stream receives: when it arrived, when the host built
// it (its `time`) and the job's step in it. Wraps EventSource before the page's script runs.
window.__snaps = [];
const Original = window.EventSource;
window.EventSource = class extends Original {
  constructor(...args) {
    super(...args);
    this.addEventListener("snapshot", (ev) => {
      const at = (performance.timeOrigin + performance.now()) / 1000;
      const snap = JSON.parse(ev.data);
      window.__snaps.push({at, built: snap.time, step: snap.job ? snap.job.step : null});
    });
  }
};
"""


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def committed_steps(http: httpx.Client, job_id: int) -> dict[int, float]:
    """step -> the latest commit time among its replicas (``t`` of the committed StepEvents)."""
    text = http.get(f"/api/v1/dashboard/jobs/{job_id}/steps.csv").raise_for_status().text
    rows = text.splitlines()
    cols = rows[0].split(",")
    out: dict[int, float] = {}
    for line in rows[1:]:
        row = dict(zip(cols, line.split(",")))
        if row["committed"] == "1":
            step = int(row["step"])
            out[step] = max(out.get(step, 0.0), float(row["t"]))
    return out


def latency(args: argparse.Namespace) -> dict[str, Any]:
    with host("--emulate-speed", "1.0", local_agent=True) as (_, info, _state), chromium() as browser:
        http = httpx.Client(base_url=info["url"], headers={"Authorization": f"Bearer {info['token']}"},
                            trust_env=False, timeout=30)
        wait_for(lambda: [n["state"] for n in http.get("/api/v1/nodes").json()] == ["alive"], 90,
                 "the local agent to join")
        config = {"model": {"name": "mlp"}, "data": {"name": "digits"}, "global_batch": args.batch,
                  "steps": 1_000_000, "emulation": {"sample_s": args.sample_ms / 1000}}
        job_id = http.post("/api/v1/jobs", json={"config": config}).raise_for_status().json()["id"]

        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        blocked = local_only(page, info["url"])
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.add_init_script(SNAPSHOTS)
        page.goto(f"{info['url']}/#t={info['token']}")
        page.click("#tabs a[data-view=job]")
        page.wait_for_selector("#view-job:not([hidden])")
        page.wait_for_function("() => /^[0-9]/.test(document.querySelector('[data-testid=step]')?.textContent || '')",
                               timeout=120_000)
        # The page's clock against ours (both read the system clock; this bounds any skew).
        t0 = time.time()
        page_now = page.evaluate("(performance.timeOrigin + performance.now()) / 1000")
        skew = page_now - (t0 + time.time()) / 2
        page.evaluate(WATCH)
        begin = time.time()
        page.wait_for_timeout(args.seconds * 1000)  # not time.sleep: Playwright's routing runs here
        end = time.time()
        shown = page.evaluate("window.__shown")
        snaps = page.evaluate("window.__snaps")
        steps = committed_steps(http, job_id)
        http.post(f"/api/v1/jobs/{job_id}/cancel")
        http.close()

    # The counter reads step + 1 (steps count from 0). Measure the steps committed while the
    # observer ran, leaving 3 s at the end so every one of them has had its chance to show.
    displays = [(int(e["text"].replace(",", "")) - 1, e["frame"] or e["changed"], e["changed"]) for e in shown
                if e["text"][:1].isdigit()]
    every, frame_gap, displayed = [], [], []
    for step, t in sorted(steps.items()):
        if not begin <= t <= end - 3:
            continue
        first = next(((at, changed) for shown_step, at, changed in displays if shown_step >= step and changed >= t), None)
        if first is None:
            raise SystemExit(f"step {step} (committed at {t:.3f}) never showed")
        every.append(first[0] - t)
        frame_gap.append(first[0] - first[1])
    for step, at, _ in displays:
        if step in steps and begin <= steps[step] <= end - 3:
            displayed.append(at - steps[step])
    # Where the time goes, per snapshot that brought a new step: commit -> built on the host
    # (the agent forwards records once a heartbeat; the stream sends a snapshot at its next
    # poll) -> received by the page.
    built, received, prev = [], [], None
    for snap in snaps:
        step = snap["step"]
        if step is not None and step != prev and step in steps and begin <= steps[step] <= end - 3:
            built.append(snap["built"] - steps[step])
            received.append(snap["at"] - snap["built"])
        prev = step
    interval = statistics.median([b - a for a, b in zip(sorted(steps.values()), sorted(steps.values())[1:])])
    result = {
        "part": "latency", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "load_average": os.getloadavg(), "seconds": args.seconds, "step_interval_s": round(interval, 3),
        "page_clock_skew_ms": round(skew * 1000, 2),
        "commit_to_shown_s": stats(every),
        "commit_to_shown_displayed_steps_s": stats(displayed),
        "change_to_frame_ms": stats(frame_gap, 1000, 1),
        "commit_to_snapshot_built_s": stats(built),
        "snapshot_built_to_received_s": stats(received),
        "console_errors": errors, "blocked": blocked,
    }
    result["ok"] = bool(every) and result["commit_to_shown_s"]["p95"] < LATENCY_GOAL_S and not errors
    return result


# -- transfer ----------------------------------------------------------------------------------

def build_cluster(http: httpx.Client, nodes: int, steps: int, gpus: int = 2) -> list[tuple[int, str, int, str]]:
    """N registered nodes with telemetry, a running job, and ``steps`` committed steps of each
    node one second apart (in the past), so every chart is full. Returns (id, credential, slot, name)."""
    versions = local_versions().model_dump()
    out = []
    for i in range(nodes):
        body = http.post("/api/v1/nodes", json={
            "name": f"node-{i:04d}", "node_key": f"fake-node-key-{i:08d}", "address": f"10.1.{i // 250}.{i % 250 + 1}",
            "hardware": {"cpu_cores": 16, "memory_mb": 32768, "os": "Linux 6.1.0 x86_64",
                         "gpus": [{"name": "NVIDIA GeForce RTX 3070", "memory_mb": 8192}] * gpus},
            "versions": versions}).raise_for_status().json()
        out.append((body["node_id"], body["credential"], body["slot"], body["name"]))
    heartbeat_all(http, out, gpus)
    job = http.post("/api/v1/jobs", json={"config": {"steps": 1_000_000, "global_batch": 64 * nodes,
                                                     "fault": {"max_replicas": 4096}}})
    job_id = job.raise_for_status().json()["id"]
    heartbeat_all(http, out, gpus)  # every node gets its replica assigned
    allocation = full_allocation(out)
    total = sum(allocation.values())
    start = time.time() - steps - 5
    for node_id, credential, slot, name in out:
        # The history with a two-entry allocation (the same share, a fraction of the bytes to
        # store); the newest step with the whole one, so the job's shares name every node.
        other = str(out[1][2] if slot == out[0][2] else out[0][2])
        short = {str(slot): allocation[str(slot)], other: total - allocation[str(slot)]}
        records = [{"type": "step", "step": k, "committed": True, "local_batch": allocation[str(slot)],
                    "participants": nodes, "compute_s": 0.5 + slot % 7 / 10, "quorum_s": 0.004,
                    "allreduce_s": 0.2, "commit_s": 0.003, "wait_s": 0.1, "comm_s": 0.1,
                    "loss": round(2.3 / (1 + k / 50), 6), "samples_per_s": 4100.0 + k % 13,
                    "allocation": allocation if k == steps - 1 else short,
                    "t": start + k + slot / 1000, "replica": name, "slot": slot}
                   for k in range(steps)]
        for i in range(0, len(records), 1000):
            http.post(f"/api/v1/nodes/{node_id}/jobs/{job_id}/metrics", json={"records": records[i:i + 1000]},
                      headers={s.NODE_CREDENTIAL_HEADER: credential}).raise_for_status()
    heartbeat_all(http, out, gpus)
    return out


def full_allocation(nodes: list[tuple[int, str, int, str]]) -> dict[str, int]:
    return {str(slot): 40 + slot % 48 for _, _, slot, _ in nodes}


def heartbeat_all(http: httpx.Client, nodes: list[tuple[int, str, int, str]], gpus: int) -> None:
    for i, (node_id, credential, _, _) in enumerate(nodes):
        http.post(f"/api/v1/nodes/{node_id}/heartbeat", json={"telemetry": telemetry(i, gpus)},
                  headers={s.NODE_CREDENTIAL_HEADER: credential}).raise_for_status()


def caught_up(http: httpx.Client) -> None:
    """Wait until the host's charts hold every stored step (a snapshot folds in at most
    20,000 new rows, so a long history takes a few snapshots): the snapshot stops growing."""
    sizes = [-1]
    while True:
        sizes.append(len(http.get("/api/v1/dashboard").raise_for_status().content))
        if abs(sizes[-1] - sizes[-2]) < 0.01 * sizes[-1]:
            return
        time.sleep(0.6)  # past the snapshot cache


def transfer(args: argparse.Namespace) -> dict[str, Any]:
    with host() as (_, info, _state):
        http = httpx.Client(base_url=info["url"], headers={"Authorization": f"Bearer {info['token']}"},
                            trust_env=False, timeout=60)
        build_cluster(http, args.nodes, args.steps)
        caught_up(http)
        with chromium() as browser:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            blocked = local_only(page, info["url"])
            # Chromium's own count of the bytes each response took on the wire (headers and
            # body as sent, compressed or not): the DevTools protocol's encodedDataLength.
            cdp = page.context.new_cdp_session(page)
            seen: dict[str, dict[str, Any]] = {}
            cdp.on("Network.responseReceived", lambda e: seen.setdefault(e["requestId"], {}).update(
                path=e["response"]["url"].removeprefix(info["url"]), status=e["response"]["status"],
                encoding={k.lower(): v for k, v in e["response"]["headers"].items()}.get("content-encoding")))
            cdp.on("Network.loadingFinished", lambda e: seen.setdefault(e["requestId"], {}).update(
                wire=int(e["encodedDataLength"])))
            cdp.send("Network.enable")
            page.goto(f"{info['url']}/#t={info['token']}")
            page.wait_for_selector("article.node")
            page.wait_for_load_state("load")
            page.wait_for_timeout(1000)
            browser_rows = [r for r in seen.values() if "wire" in r and "path" in r
                            and not r["path"].startswith("/api/v1/dashboard/stream")]
            cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        # The same files over plain HTTP, asking for gzip: the bytes that crossed the wire.
        wire, raw_total, local_total = [], 0, 0
        with httpx.Client(base_url=info["url"], cookies=cookies, trust_env=False, timeout=60) as plain:
            for path in dict.fromkeys(r["path"] for r in browser_rows if r["path"] != "/api/v1/session"):
                resp = plain.get(path, headers={"Accept-Encoding": "gzip"})
                resp.raise_for_status()
                raw = resp.content
                local = len(gzip.compress(raw, 6))
                wire.append({"path": path, "encoding": resp.headers.get("content-encoding"),
                             "sent": resp.num_bytes_downloaded, "raw": len(raw), "gzip_local": local})
                raw_total += len(raw)
                local_total += local
        # What an open page receives every second, for the record.
        sse_bytes, t0 = 0, time.monotonic()
        with httpx.Client(base_url=info["url"], cookies=cookies, trust_env=False, timeout=30) as sse, \
                sse.stream("GET", "/api/v1/dashboard/stream", headers={"Accept-Encoding": "gzip"}) as stream:
            sse_encoding = stream.headers.get("content-encoding")
            for chunk in stream.iter_raw():
                sse_bytes += len(chunk)
                if time.monotonic() - t0 > 5:
                    break
        http.close()
    kb = lambda n: round(n / 1000, 1)  # noqa: E731
    in_browser = sum(r["wire"] for r in browser_rows)
    result = {
        "part": "transfer", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "nodes": args.nodes, "steps": args.steps,
        "browser_kb": kb(in_browser), "browser": browser_rows,
        "wire_kb": kb(sum(w["sent"] for w in wire)), "raw_kb": kb(raw_total), "gzip_local_kb": kb(local_total),
        "files": wire, "stream_kb_per_s": kb(sse_bytes / (time.monotonic() - t0)),
        "stream_content_encoding": sse_encoding, "blocked": blocked,
    }
    result["ok"] = in_browser < TRANSFER_GOAL_KB * 1000 and result["wire_kb"] < TRANSFER_GOAL_KB
    return result


# -- cpu ---------------------------------------------------------------------------------------

def host_cpu_s(proc: psutil.Process) -> float:
    """User + system seconds of the host and its live children."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def simulated_agent(i: int, conn: Connection, node: tuple[int, str, int, str], job_id: int,
                          allocation: dict[str, int], first_step: int, interval: float,
                          stop: asyncio.Event, errors: list[str]) -> None:
    """Each interval: the replica's committed step (with the whole allocation, as a real
    replica sends it), then a heartbeat with telemetry, as the agent's loop does."""
    node_id, credential, slot, name = node
    await asyncio.sleep(interval * (i % 100) / 100)  # spread over one interval
    step, next_t = first_step, time.monotonic()
    while not stop.is_set():
        step += 1
        record = {"type": "step", "step": step, "committed": True, "local_batch": allocation[str(slot)],
                  "participants": len(allocation),
                  "compute_s": 0.5, "comm_s": 0.1, "wait_s": 0.1, "quorum_s": 0.004, "allreduce_s": 0.2,
                  "commit_s": 0.003, "loss": 1.0 / step, "samples_per_s": 5000.0, "allocation": allocation,
                  "t": time.time(), "replica": name, "slot": slot}
        beat = {"replicas": [{"job_id": job_id, "state": "running", "step": step, "ready": True}],
                "telemetry": telemetry(i, 2)}
        for path, payload in ((f"/api/v1/nodes/{node_id}/jobs/{job_id}/metrics", {"records": [record]}),
                              (f"/api/v1/nodes/{node_id}/heartbeat", beat)):
            try:
                status, _ = await conn.post(path, payload, credential)
                if status != 200:
                    errors.append(f"{path.rsplit('/', 1)[-1]} {status}")
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors.append(type(exc).__name__)
                conn.writer = None
        next_t += interval
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))


async def get(port: int, path: str, auth: str) -> int:
    """One GET on a fresh connection, read to the end; returns the bytes received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Accept-Encoding: gzip\r\n"
                 "Connection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return len(data)


async def watcher(port: int, cookie: str, scrape: str, stop: asyncio.Event, seen: dict[str, int]) -> None:
    """One open dashboard (the page, its first snapshot, then its stream) and a Prometheus
    scraper every SCRAPE_EVERY_S, until ``stop``."""
    auth = f"Cookie: potluck_session={cookie}\r\n"
    for path in ("/", "/ui/app.css", "/ui/charts.js", "/ui/views.js", "/ui/app.js", "/api/v1/dashboard"):
        seen["page_bytes"] += await get(port, path, auth)

    async def stream() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /api/v1/dashboard/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
        try:
            while chunk := await reader.read(1 << 16):
                seen["stream_bytes"] += len(chunk)
                seen["snapshots"] += chunk.count(b"event: snapshot")
        finally:
            writer.close()

    async def scraper() -> None:
        while True:
            seen["metrics_bytes"] += await get(port, "/metrics", f"Authorization: Bearer {scrape}\r\n")
            seen["scrapes"] += 1
            await asyncio.sleep(SCRAPE_EVERY_S)

    tasks = [asyncio.create_task(stream()), asyncio.create_task(scraper())]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def cpu_phases(proc: psutil.Process, info: dict[str, Any], nodes: list[tuple[int, str, int, str]],
                     job_id: int, cookie: str, scrape: str, args: argparse.Namespace) -> dict[str, Any]:
    port = int(info["port"])
    stop = asyncio.Event()
    errors: list[str] = []
    conns = [Connection("127.0.0.1", port, info["token"]) for _ in nodes]
    allocation = full_allocation(nodes)
    agents = [asyncio.create_task(simulated_agent(i, conns[i], node, job_id, allocation, args.steps,
                                                  args.interval, stop, errors))
              for i, node in enumerate(nodes)]
    await asyncio.sleep(args.warmup)
    phases: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for watched in (False, True):
            seen = dict.fromkeys(("page_bytes", "stream_bytes", "snapshots", "metrics_bytes", "scrapes"), 0)
            watch_stop = asyncio.Event()
            task = asyncio.create_task(watcher(port, cookie, scrape, watch_stop, seen)) if watched else None
            await asyncio.sleep(1.0 if watched else 0.0)  # the page has loaded; its stream is open
            c0, t0, e0 = host_cpu_s(proc), time.monotonic(), len(errors)
            await asyncio.sleep(args.seconds)
            cpu = (host_cpu_s(proc) - c0) / (time.monotonic() - t0)
            if task is not None:
                watch_stop.set()
                await task
            phases.append({"phase": "b" if watched else "a", "host_cpu_pct": round(cpu * 100, 2),
                           "errors": len(errors) - e0, **(seen if watched else {})})
    stop.set()
    await asyncio.gather(*agents)
    for conn in conns:
        conn.close()
    return {"phases": phases, "errors": errors[:20]}


def cpu(args: argparse.Namespace) -> dict[str, Any]:
    with host() as (proc, info, state):
        http = httpx.Client(base_url=info["url"], headers={"Authorization": f"Bearer {info['token']}"},
                            trust_env=False, timeout=60)
        nodes = build_cluster(http, args.agents, args.steps)
        job_id = http.get("/api/v1/jobs").raise_for_status().json()[-1]["id"]
        cookie = http.post("/api/v1/session").raise_for_status().cookies["potluck_session"]
        http.close()
        scrape = (state / "metrics-token").read_text().strip()
        raw = asyncio.run(cpu_phases(proc, info, nodes, job_id, cookie, scrape, args))
    a = [p["host_cpu_pct"] for p in raw["phases"] if p["phase"] == "a"]
    b = [p["host_cpu_pct"] for p in raw["phases"] if p["phase"] == "b"]
    added = statistics.fmean(b) - statistics.fmean(a)
    result = {
        "part": "cpu", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "load_average": os.getloadavg(), "agents": args.agents, "interval_s": args.interval,
        "seconds_per_phase": args.seconds, **raw,
        "a_mean_pct": round(statistics.fmean(a), 2), "b_mean_pct": round(statistics.fmean(b), 2),
        "added_pct_of_a_core": round(added, 2),
    }
    result["ok"] = added < CPU_GOAL_PCT and not raw["errors"]
    return result


PARTS = {"latency": latency, "transfer": transfer, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", help=f"which goals: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="latency: seconds observed (60); cpu: seconds per phase (30)")
    parser.add_argument("--sample-ms", type=float, default=4.0, help="latency: emulated ms per sample")
    parser.add_argument("--batch", type=int, default=64, help="latency: global batch")
    parser.add_argument("--nodes", type=int, default=200, help="transfer: nodes in the snapshot")
    parser.add_argument("--steps", type=int, default=300, help="transfer, cpu: committed steps per node already stored")
    parser.add_argument("--agents", type=int, default=200, help="cpu: simulated agents")
    parser.add_argument("--interval", type=float, default=1.0, help="cpu: heartbeat interval (the host's default)")
    parser.add_argument("--warmup", type=float, default=10.0, help="cpu: unmeasured seconds first")
    parser.add_argument("--rounds", type=int, default=2, help="cpu: a/b phase pairs")
    args = parser.parse_args()
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}: choose from {', '.join(PARTS)}")
    ok = True
    for name in args.parts or list(PARTS):
        part_args = argparse.Namespace(**vars(args))
        if part_args.seconds is None:
            part_args.seconds = 60.0 if name == "latency" else 30.0
        result = PARTS[name](part_args)
        print(json.dumps(result, indent=1), flush=True)
        ok = ok and result["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
