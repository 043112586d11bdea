"""The web dashboard: a real coordinator on loopback, real HTTP, and the page in a real headless
Chromium (Debian's ``chromium``; the tests skip, saying why, where it is not installed) with
every request to anything but the local server blocked.

Data reaches the host the way a cluster sends it: nodes register and heartbeat, and their
replicas' events arrive through the metrics API with the nodes' credentials; one test runs a
real ``potluck host`` with its local agent and trains a real job.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cluster_helpers import serve_coordinator, wait_until

from conftest import Cluster
from potluck.contracts import wire as s
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.dashboard import MAX_POINTS, JobDetail
from potluck.contracts.events import AllocationEvent, StepEvent
from potluck.contracts.versions import local_versions
from potluck.dashboard import routes
from potluck.dashboard.recorder import JobRecorder
from potluck.dashboard.report import report_html
from potluck.dashboard.routes import dashboard_router
from potluck.dashboard.snapshot import csv_cell, marker_kind

TOKEN = "t0ken-for-the-dashboard-0123456789"
SCRAPE = "scrape-token-for-the-dashboard-0123"
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RED = "rgb(214, 59, 48)"
"""``--bad`` in app.css: lost and left nodes, late heartbeats."""

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's `chromium` is not installed (`make test` installs it as "
    "root; else `sudo apt-get install chromium`)")


# -- a coordinator with the dashboard, and what reached it -------------------------------------

class Recorder:
    """ASGI middleware that notes every request's method, path, query and headers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append({"method": scope["method"], "path": scope["path"],
                              "query": scope["query_string"].decode("latin-1"),
                              "headers": {k.decode("latin-1"): v.decode("latin-1")
                                          for k, v in scope["headers"]}})
        await self.app(scope, receive, send)


class Node:
    """A registered node whose agent heartbeats (until stopped) and posts its replica's events."""

    def __init__(self, url: str, name: str, slot_hint: int) -> None:
        self.client = CoordinatorClient(url, TOKEN)
        self.name = name
        self.reg = self.client.register(s.RegisterRequest(
            name=name, node_key=f"{name}-key-0123456789abcdef", address=f"192.168.7.{10 + slot_hint}",
            hardware=s.Hardware(cpu_cores=4, memory_mb=8192, os="Linux 6.1.0 x86_64",
                                gpus=[s.Gpu(name="NVIDIA GeForce RTX 3070", memory_mb=8192)]),
            versions=local_versions()))
        self.beating = threading.Event()
        self.beating.set()
        self.telemetry = s.NodeTelemetry(cpu_percent=40.0, memory_used_bytes=3 * 2**30,
                                         memory_total_bytes=8 * 2**30)

    def heartbeat(self) -> s.HeartbeatResponse:
        return self.client.heartbeat(self.reg.node_id, s.HeartbeatRequest(telemetry=self.telemetry))

    def steps(self, job_id: int, steps: range, alloc: dict[str, int]) -> None:
        mine = alloc[str(self.reg.slot)]
        self.client.metrics(self.reg.node_id, job_id, [
            StepEvent(t=time.time(), replica=self.name, slot=self.reg.slot, step=i, committed=True,
                      participants=len(alloc), local_batch=mine, compute_s=0.002 * mine,
                      quorum_s=0.001, allreduce_s=0.02, commit_s=0.001, wait_s=0.01, comm_s=0.01,
                      loss=2.0 / (i + 1), allocation=alloc, samples_per_s=400.0)
            for i in steps])


@pytest.fixture
def cluster_api(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A served coordinator with the dashboard and three heartbeating nodes."""
    recorder: list[Recorder] = []

    def wrap(app: Any) -> Recorder:
        recorder.append(Recorder(app))
        return recorder[0]

    with serve_coordinator(tmp_path, TOKEN, routers=[dashboard_router], metrics_token=SCRAPE,
                           wrap=wrap) as (url, store):
        nodes = {name: Node(url, name, i) for i, name in enumerate(("ada", "bob", "cy"))}
        stop = threading.Event()

        def beat() -> None:
            while not stop.is_set():
                for node in nodes.values():
                    if node.beating.is_set():
                        node.heartbeat()
                stop.wait(0.5)

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        yield {"url": url, "store": store, "nodes": nodes, "seen": recorder[0].seen}
        stop.set()
        thread.join(5)
        for node in nodes.values():
            node.client.close()


MARKUP = '<img src="/x" onerror="alert(1)"></script>'
"""A job name that would run if the page ever inserted data as HTML."""


def start_job(api: dict[str, Any], steps: int = 400) -> int:
    nodes = api["nodes"]
    job = nodes["ada"].client.submit({"steps": steps, "global_batch": 96}, name=MARKUP)
    for node in nodes.values():
        assert node.heartbeat().assignment.job_id == job.id
    return job.id


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def session(url: str) -> httpx.Cookies:
    resp = httpx.post(f"{url}/api/v1/session", headers=bearer())
    assert resp.status_code == 200, resp.text
    return resp.cookies


# -- HTTP: auth, headers, files ----------------------------------------------------------------

def test_page_files_and_api_carry_the_csp_and_refuse_strangers(cluster_api: dict[str, Any]) -> None:
    url = cluster_api["url"]
    for path in ("/", "/ui/app.js", "/ui/app.css", "/ui/charts.js", "/ui/views.js", "/ui/icon.svg"):
        resp = httpx.get(url + path)
        assert resp.status_code == 200, path
        assert "default-src 'self'" in resp.headers["content-security-policy"], path
        assert resp.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(url + "/").text
    assert "<script>" not in page and "style=" not in page  # CSP: nothing inline
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from elsewhere
    assert httpx.get(url + "/ui/nope.js").status_code == 404
    for path in ("/api/v1/dashboard", "/api/v1/dashboard/stream", "/api/v1/dashboard/logs.txt"):
        resp = httpx.get(url + path)
        assert resp.status_code == 401 and "token" in resp.json()["detail"], path
    resp = httpx.get(url + "/api/v1/dashboard", headers=bearer())
    assert resp.status_code == 200 and "default-src 'self'" in resp.headers["content-security-policy"]
    assert [n["name"] for n in resp.json()["nodes"]] == ["ada", "bob", "cy"]


def test_the_page_comes_gzipped_in_under_250_kb_and_the_stream_stays_plain(cluster_api: dict[str, Any]) -> None:
    """Issue 11: the page's whole transfer (HTML, scripts, styles, icon and the first
    snapshot) is under 250 KB gzipped; the event stream is never compressed or buffered."""
    url, nodes = cluster_api["url"], cluster_api["nodes"]
    job_id = start_job(cluster_api)
    alloc = {str(n.reg.slot): b for n, b in zip(nodes.values(), (48, 32, 16))}
    for node in nodes.values():
        node.steps(job_id, range(30), alloc)
    jar = session(url)
    page = httpx.get(url + "/").text
    paths = list(dict.fromkeys(["/", *re.findall(r'(?:src|href)="(/ui/[^"]+)"', page), "/api/v1/dashboard"]))
    assert len(paths) == 7  # the page, 3 scripts, the styles, the icon, the snapshot
    sent = 0
    for path in paths:
        plain = httpx.get(url + path, cookies=jar, headers={"Accept-Encoding": "identity"})
        packed = httpx.get(url + path, cookies=jar, headers={"Accept-Encoding": "gzip"})
        refused = httpx.get(url + path, cookies=jar, headers={"Accept-Encoding": "gzip;q=0"})
        assert plain.status_code == packed.status_code == refused.status_code == 200, path
        assert "content-encoding" not in plain.headers and "content-encoding" not in refused.headers, path
        if len(plain.content) >= routes.GZIP_MIN_BYTES:
            assert packed.headers["content-encoding"] == "gzip", path
            assert packed.headers["vary"] == "Accept-Encoding", path
            assert packed.num_bytes_downloaded < len(plain.content) / 2, path
        if path != "/api/v1/dashboard":  # a snapshot's heartbeat ages move between two reads
            assert packed.content == plain.content, path
        assert "default-src 'self'" in packed.headers["content-security-policy"], path
        sent += packed.num_bytes_downloaded
    assert sent < 250_000
    # The stream: not compressed even when asked, and each event arrives as it happens.
    with httpx.stream("GET", f"{url}/api/v1/dashboard/stream", cookies=jar, timeout=10,
                      headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in resp.headers
        lines = resp.iter_lines()
        read_events(lines, lambda ev: any(e.get("event") == "snapshot" for e in ev))
        cluster_api["store"].event("notice", "written while the stream is open")
        live = read_events(lines, lambda ev: any("written while" in e.get("data", "") for e in ev))
    assert json.loads(live[-1]["data"])["message"] == "written while the stream is open"


def test_gzip_is_taken_only_when_the_client_accepts_it() -> None:
    assert routes.accepts_gzip("gzip, deflate, br")
    assert routes.accepts_gzip("br;q=1.0, GZIP;q=0.5")
    assert routes.accepts_gzip("*")
    assert not routes.accepts_gzip("")
    assert not routes.accepts_gzip("identity")
    assert not routes.accepts_gzip("gzip;q=0")
    assert not routes.accepts_gzip("gzip;q=0.0, deflate")
    assert not routes.accepts_gzip("x-gzip")


def test_the_session_cookie_only_reads_the_dashboard(cluster_api: dict[str, Any]) -> None:
    url = cluster_api["url"]
    resp = httpx.post(f"{url}/api/v1/session", headers=bearer())
    cookie = resp.headers["set-cookie"]
    attrs = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= attrs and "SameSite=Strict" in cookie
    assert "Path=/" in cookie and TOKEN not in cookie
    value = resp.cookies["potluck_session"]
    assert len(value) >= 32 and value != TOKEN
    jar = httpx.Cookies({"potluck_session": value})
    assert httpx.get(f"{url}/api/v1/dashboard", cookies=jar).status_code == 200
    assert httpx.get(f"{url}/api/v1/dashboard/logs.txt", cookies=jar).status_code == 200
    # Not the rest of the API, and never a write.
    assert httpx.get(f"{url}/api/v1/nodes", cookies=jar).status_code == 401
    assert httpx.get(f"{url}/metrics", cookies=jar).status_code == 401
    for method, path in (("POST", "/api/v1/jobs"), ("POST", "/api/v1/session"),
                         ("POST", "/api/v1/jobs/1/cancel"), ("DELETE", "/api/v1/dashboard")):
        resp = httpx.request(method, url + path, cookies=jar, json={"config": {"steps": 5}})
        assert resp.status_code == 403 and "only reads" in resp.json()["detail"], (method, path)
    assert cluster_api["store"].jobs() == []
    forged = httpx.Cookies({"potluck_session": "x" * 43})
    assert httpx.get(f"{url}/api/v1/dashboard", cookies=forged).status_code == 401
    # The metrics token cannot open a session.
    assert httpx.post(f"{url}/api/v1/session", headers=bearer(SCRAPE)).status_code == 403


def test_snapshot_logs_and_csv_follow_the_posted_events(cluster_api: dict[str, Any]) -> None:
    url, nodes = cluster_api["url"], cluster_api["nodes"]
    job_id = start_job(cluster_api)
    alloc = {str(n.reg.slot): b for n, b in zip(nodes.values(), (48, 32, 16))}
    for node in nodes.values():
        node.steps(job_id, range(10), alloc)
    snap = httpx.get(f"{url}/api/v1/dashboard", headers=bearer()).json()
    job = snap["job"]
    assert (job["id"], job["state"], job["step"], job["total_steps"]) == (job_id, "running", 9, 400)
    assert job["samples_per_s"] == 400.0 and job["eta_s"] == pytest.approx(390 * 96 / 400, rel=0.01)
    assert job["node_samples"] == {"ada": 480, "bob": 320, "cy": 160}
    assert job["shares"] == {"ada": 0.5, "bob": 0.3333, "cy": 0.1667}
    assert 0 < job["compute_fraction"] < 1 and 0 < job["efficiency"] <= 1.01
    assert len(job["series"]["t"]) >= 1 and set(job["series"]["node_share"]) == {"ada", "bob", "cy"}
    assert {r["node"] for r in job["stragglers"]} == {"ada", "bob", "cy"}
    ada = snap["nodes"][0]
    assert (ada["name"], ada["network"], ada["os"], ada["version_mismatch"]) == ("ada", "LAN", "Linux 6.1.0 x86_64", [])
    assert ada["samples_fraction"] == 0.5 and ada["telemetry"]["cpu_percent"] == 40.0
    text = httpx.get(f"{url}/api/v1/dashboard/logs.txt", params={"q": "JOINED"}, headers=bearer()).text
    assert [line.split(": ", 1)[1] for line in text.splitlines()] == [
        "ada joined from 192.168.7.10 (slot 0)", "bob joined from 192.168.7.11 (slot 1)",
        "cy joined from 192.168.7.12 (slot 2)"]
    rows = httpx.get(f"{url}/api/v1/dashboard/jobs/{job_id}/steps.csv", headers=bearer()).text.splitlines()
    assert rows[0].startswith("t,step,node,slot,committed") and len(rows) == 1 + 30


# -- the event stream -------------------------------------------------------------------------

def read_events(lines: Iterator[str], until: Any) -> list[dict[str, str]]:
    """Parse server-sent events from a response's lines until ``until(events)`` is true."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in lines:
        if line == "":
            if current:
                events.append(current)
                current = {}
                if until(events):
                    return events
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        current[field] = current.get(field, "") + value.removeprefix(" ")
    return events


def log_ids(events: list[dict[str, str]]) -> list[int]:
    return [int(e["id"]) for e in events if e.get("event") == "log"]


def test_the_stream_resumes_after_last_event_id_without_duplicates_or_gaps(cluster_api: dict[str, Any]) -> None:
    url, store = cluster_api["url"], cluster_api["store"]
    for i in range(30):
        store.event("notice", f"line {i}")
    every = [r["id"] for r in store.events(None, 0)]
    stream = f"{url}/api/v1/dashboard/stream"
    with httpx.stream("GET", stream, headers=bearer(), timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "default-src 'self'" in resp.headers["content-security-policy"]
        first = read_events(resp.iter_lines(), lambda ev: len(log_ids(ev)) >= 12)
    got = log_ids(first)[:12]
    assert got == every[:12]
    # Reconnect as a browser does: Last-Event-ID wins over ?after=.
    with httpx.stream("GET", stream, params={"after": 1}, timeout=10,
                      headers={**bearer(), "Last-Event-ID": str(got[-1])}) as resp:
        def caught_up(ev: list[dict[str, str]]) -> bool:
            return bool(log_ids(ev)) and log_ids(ev)[-1] >= every[-1] and any(
                e.get("event") == "snapshot" for e in ev)
        lines = resp.iter_lines()
        second = read_events(lines, caught_up)
        store.event("notice", "while connected")  # arrives live
        live = read_events(lines, lambda ev: bool(log_ids(ev)))
    assert got + log_ids(second) == every  # nothing twice, nothing skipped
    snapshot = json.loads(next(e["data"] for e in second if e.get("event") == "snapshot"))
    assert snapshot["last_event_id"] >= every[-1]
    line = json.loads(next(e["data"] for e in live if e.get("event") == "log"))
    assert (line["id"], line["message"]) == (every[-1] + 1, "while connected")
    with httpx.stream("GET", stream, params={"after": every[-3]}, headers=bearer(), timeout=10) as resp:
        tail = read_events(resp.iter_lines(), lambda ev: len(log_ids(ev)) >= 3)
    assert log_ids(tail)[:3] == [every[-2], every[-1], every[-1] + 1]


# -- the page in Chromium ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Debian's `chromium` is not installed (`make test` installs it as root; "
                    "else `sudo apt-get install chromium`)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (dev extras) is not installed")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


class Page:
    """A page in a fresh context, recording requests, console errors and blocked requests."""

    def __init__(self, browser: Any, origin: str, width: int = 390, height: int = 844) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []
        allowed = urlsplit(origin).netloc if origin.startswith("http") else None

        def route(r: Any) -> None:
            parts = urlsplit(r.request.url)
            if (allowed and parts.scheme == "http" and parts.netloc == allowed) or (
                    allowed is None and parts.scheme == "file"):
                r.continue_()
            else:
                self.blocked.append(r.request.url)
                r.abort()

        self.page.route("**/*", route)
        self.page.on("request", lambda req: self.requests.append(req.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def view(self, name: str) -> None:
        self.page.click(f"#tabs a[data-view={name}]")
        self.page.wait_for_selector(f"#view-{name}:not([hidden])")

    def scroll_width(self) -> int:
        return self.page.evaluate("document.documentElement.scrollWidth")

    def close(self) -> None:
        self.context.close()


@needs_chromium
def test_the_live_page_follows_a_job_on_a_phone_sized_screen(browser: Any, cluster_api: dict[str, Any]) -> None:
    url, nodes, seen = cluster_api["url"], cluster_api["nodes"], cluster_api["seen"]
    job_id = start_job(cluster_api)
    alloc = {str(n.reg.slot): b for n, b in zip(nodes.values(), (32, 32, 32))}
    for node in nodes.values():
        node.steps(job_id, range(5), alloc)
    tab = Page(browser, url)
    page = tab.page
    page.goto(f"{url}/#t={TOKEN}")
    page.wait_for_selector("#tabs:not([hidden])")
    # Signed in with a session cookie; the token is out of the address bar.
    assert page.evaluate("location.hash") == "" and TOKEN not in page.url
    cookie = next(c for c in tab.context.cookies() if c["name"] == "potluck_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != TOKEN
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it

    for view in ("cluster", "job", "stragglers", "network", "logs", "history"):
        tab.view(view)
        assert tab.scroll_width() <= 390, f"{view} scrolls sideways at 390 px"

    # The step counter moves as steps are committed, without a reload.
    tab.view("job")
    page.evaluate("window.notReloaded = true")
    step = page.locator("[data-testid=step]")
    page.wait_for_function("() => document.querySelector('[data-testid=step]').textContent === '5'")
    for node in nodes.values():
        node.steps(job_id, range(5, 12), alloc)
    page.wait_for_function("() => document.querySelector('[data-testid=step]').textContent === '12'")
    assert step.text_content() == "12" and page.evaluate("window.notReloaded === true")
    assert page.locator("#view-job .job-name").text_content() == MARKUP  # text, never HTML
    assert page.locator("#view-job img").count() == 0

    # A rebalance and a node leaving are markers on the charts, and listed.
    new = {str(nodes["ada"].reg.slot): 48, str(nodes["bob"].reg.slot): 32, str(nodes["cy"].reg.slot): 16}
    nodes["ada"].client.metrics(nodes["ada"].reg.node_id, job_id, [AllocationEvent(
        t=time.time(), replica="ada", slot=0, step=12, allocation=new,
        reason="rebalance: predicted step 300.0 ms -> 200.0 ms", members=[0, 1, 2])])
    nodes["cy"].beating.clear()
    nodes["cy"].client.leave(nodes["cy"].reg.node_id)
    for node in (nodes["ada"], nodes["bob"]):
        node.steps(job_id, range(12, 15), new)
    for kind in ("start", "rebalance", "leave"):
        page.wait_for_selector(f"#view-job svg.chart .marker[data-kind={kind}]", state="attached")
        page.wait_for_selector(f".markers-list li[data-kind={kind}]")
    assert page.locator("#view-job svg.chart").count() == 3

    # The node that left is red in the Cluster view; the others are not.
    tab.view("cluster")
    page.wait_for_selector("article.node[data-node=cy].down")
    border = "el => getComputedStyle(el).borderLeftColor"
    assert page.eval_on_selector("article.node[data-node=cy]", border) == RED
    assert page.eval_on_selector("article.node[data-node=cy] .node-name", "el => getComputedStyle(el).color") == RED
    assert page.eval_on_selector("article.node[data-node=ada]", border) != RED
    assert page.locator("article.node").evaluate_all("els => els.map(e => e.dataset.node)") == ["ada", "bob", "cy"]

    # Stragglers: one bar per node, split in compute / communication / waiting.
    tab.view("stragglers")
    bars = page.locator("svg.bars g.bar")
    assert bars.count() == 3
    assert set(page.locator("svg.bars rect").evaluate_all("els => els.map(e => e.dataset.part)")) >= {"compute", "comm", "wait"}

    # Logs: the filter narrows the list, and the download link follows it.
    tab.view("logs")
    page.fill("#log-filter", "cy left")
    page.wait_for_function("() => document.querySelectorAll('#log-lines li').length === 1")
    assert "cy left the cluster" in page.locator("#log-lines li").text_content()
    assert page.get_attribute("#log-download", "href") == "/api/v1/dashboard/logs.txt?q=cy%20left"

    for view in ("cluster", "job", "stragglers", "network", "logs", "history"):
        tab.view(view)
        assert tab.scroll_width() <= 390, f"{view} scrolls sideways at 390 px"
    tab.close()

    assert tab.errors == []
    assert tab.blocked == []  # nothing but the host was even asked for
    assert all(TOKEN not in urlsplit(u)._replace(fragment="").geturl() for u in tab.requests), tab.requests
    # What reached the server: the token in no URL, and in a header only to open the session.
    assert all(TOKEN not in r["path"] + r["query"] for r in seen)
    with_token = {(r["method"], r["path"]) for r in seen if TOKEN in r["headers"].get("authorization", "")
                  and "python-httpx" not in r["headers"].get("user-agent", "")}
    assert with_token == {("POST", "/api/v1/session")}


@needs_chromium
def test_the_page_resumes_the_log_across_reconnects(browser: Any, cluster_api: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "MAX_STREAM_S", 1.0)  # the server ends each stream after 1 s
    monkeypatch.setattr(routes, "RETRY_MS", 200)  # and the browser comes back 0.2 s later
    url, store, seen = cluster_api["url"], cluster_api["store"], cluster_api["seen"]
    tab = Page(browser, url, width=1280, height=800)
    tab.page.goto(f"{url}/#t={TOKEN}")
    tab.view("logs")
    def resumed() -> list[dict[str, Any]]:
        return [r for r in seen if r["path"] == "/api/v1/dashboard/stream" and "last-event-id" in r["headers"]]

    deadline = time.monotonic() + 30
    i = 0
    while len(resumed()) < 3 or i < 20:  # lines written while the browser reconnects
        assert time.monotonic() < deadline, "the browser did not reconnect with Last-Event-ID"
        store.event("notice", f"line {i}")
        i += 1
        tab.page.wait_for_timeout(100)  # not time.sleep: the page's routing runs in these calls
    last = store.last_event_id()
    tab.page.wait_for_selector(f"#log-lines li[data-id='{last}']")
    shown = [int(x) for x in tab.page.locator("#log-lines li").evaluate_all("els => els.map(e => e.dataset.id)")]
    assert shown == [r["id"] for r in store.events(None, 0)]  # each line once, none missing
    # Each reconnect asked for what followed the last line shown before it.
    assert all(int(r["headers"]["last-event-id"]) in shown for r in resumed())
    tab.close()
    assert tab.errors == [] and tab.blocked == []


@needs_chromium
def test_without_the_link_the_page_says_how_to_get_in(browser: Any, cluster_api: dict[str, Any]) -> None:
    url = cluster_api["url"]
    tab = Page(browser, url)
    tab.page.goto(url + "/")
    tab.page.wait_for_selector("#login:not([hidden])")
    text = tab.page.locator("#login").text_content()
    assert "potluck host" in text and "potluck dashboard" in text and "#t=" in text
    assert tab.page.locator("#tabs").is_hidden() and tab.scroll_width() <= 390
    tab.page.goto(f"{url}/#t=not-the-right-token-0123456789")
    tab.page.wait_for_selector("#login-reason:not([hidden])")
    assert "refused" in tab.page.locator("#login-reason").text_content()
    assert tab.page.evaluate("location.hash") == ""
    tab.close()
    assert tab.blocked == []


# -- the real thing: `potluck host`, its local agent, a job, `potluck dashboard`, `potluck report`

@needs_chromium
def test_a_real_host_serves_the_dashboard_of_a_real_job(browser: Any, cluster: Cluster) -> None:
    host = cluster.start_host("127.0.0.2", "--emulate-speed", "1.0", local_agent=True)
    wait_until(lambda: "Dashboard:" in host["proc"].log.read_text(), 30, "the dashboard line")
    printed = host["proc"].log.read_text()
    assert f"Dashboard: {host['url']}/ (sign in with the link `potluck dashboard` prints" in printed
    assert host["token"] not in printed  # a log, not a terminal: no secret in it
    link = cluster.cli("dashboard").stdout.strip()
    assert link == f"{host['url']}/#t={host['token']}"
    api = CoordinatorClient(host["url"], host["token"])
    wait_until(lambda: [n.state for n in api.nodes()] == ["alive"], 60, "the local agent to join")
    job_id = api.submit({"model": {"name": "mlp"}, "data": {"name": "digits"}, "global_batch": 64,
                         "steps": 100000}).id

    tab = Page(browser, host["url"], width=1280, height=800)
    tab.page.goto(link)
    tab.view("job")

    def step() -> int:
        text = tab.page.locator("[data-testid=step]").text_content() or "–"
        return int(text.replace(",", "")) if text.strip("–") else 0

    first = wait_until(step, 90, "the first committed step on the page")
    wait_until(lambda: step() > first, 30, "the step counter to move")
    assert tab.page.locator("[data-testid=job-state]").text_content() == "running"
    tab.close()
    assert tab.errors == [] and tab.blocked == []
    assert api.cancel(job_id).state == "cancelled"
    api.close()

    report = cluster.tmp / "report" / "job.html"
    report.parent.mkdir()
    out = cluster.cli("report", str(job_id), str(report))
    assert out.returncode == 0, out.stderr
    rows = (report.parent / "job-steps.csv").read_text().splitlines()
    assert rows[0].startswith("t,step,node") and len(rows) > 2
    offline = Page(browser, "file://")
    offline.page.goto(report.as_uri())
    offline.page.wait_for_selector("#report-job svg.chart path.series")
    assert offline.page.locator("#report-job h2").text_content().startswith(f"Job {job_id}")
    assert offline.page.locator("#report-stragglers svg.bars g.bar").count() == 1
    assert "job-steps.csv" in offline.page.locator("#report-meta").text_content()
    offline.close()
    assert offline.errors == [] and offline.blocked == []
    assert offline.requests == [report.as_uri()]  # one file: nothing else loaded


# -- pure parts -------------------------------------------------------------------------------

def test_series_stay_bounded_and_keep_their_means() -> None:
    rec = JobRecorder(1)
    for i in range(3000):  # 50 minutes of steps, one a second, two nodes
        for node, batch in (("a", 48), ("b", 16)):
            rec.add(node, {"t": 1000.0 + i, "step": i, "local_batch": batch, "compute_s": 0.1,
                           "comm_s": 0.02, "wait_s": 0.0 if node == "a" else 0.05,
                           "quorum_s": 0.001, "commit_s": 0.001, "loss": 1.0, "samples_per_s": 640.0,
                           "allocation": {"0": 48, "1": 16}})
    series = rec.series(["a", "b", "c"])
    assert MAX_POINTS // 2 <= len(series.t) <= MAX_POINTS
    assert series.t == sorted(series.t) and series.step[-1] == 2999
    assert set(series.samples_per_s) == {640.0}
    assert set(series.node_samples_per_s["a"]) == {480.0} and set(series.node_share["b"]) == {0.25}
    assert series.node_share["c"] == [None] * len(series.t)
    assert rec.node_samples == {"a": 3000 * 48, "b": 3000 * 16}
    times = {r.node: r for r in rec.stragglers(["b", "a"])}
    assert list(times) == ["b", "a"] and times["b"].wait_s == 0.05 and times["a"].steps == 50
    assert rec.compute_fraction == pytest.approx((0.1 / 0.12 + 0.1 / 0.17) / 2, abs=1e-6)


@pytest.mark.parametrize(("kind", "message", "marker"), [
    ("node", "ada joined from 10.0.0.2 (slot 0)", "join"),
    ("node", "ada rejoined from 10.0.0.2", "join"),
    ("node", "ada left the cluster", "leave"),
    ("node", "ada lost (no heartbeat for 6 s)", "lost"),
    ("node", "ada is back", "back"),
    ("node", "ada's agent is silent, but its replica still commits steps: kept alive", None),
    ("allocation", "step 20: ada 48 / bob 16 (rebalance: ...)", "rebalance"),
    ("job", "started on 2 node(s): ada, bob", "start"),
    ("job", "training restarted from step 0: every replica was lost after step 9", "restart"),
    ("job", "succeeded: finished on 2 node(s)", "end"),
    ("job", "submitted", None),
    ("progress", "step 25: loss 1.0", None),
])
def test_log_lines_that_are_chart_markers(kind: str, message: str, marker: str | None) -> None:
    assert marker_kind(kind, message) == marker


def test_csv_cells_are_quoted_and_defused() -> None:
    assert [csv_cell(v) for v in (None, True, 3, 0.25, -1.5)] == ["", "1", "3", "0.25", "-1.5"]
    assert csv_cell('=HYPERLINK("x")') == '"\'=HYPERLINK(""x"")"'
    assert csv_cell("a,b") == '"a,b"' and csv_cell("@sum") == "'@sum"


def test_the_report_embeds_its_data_inertly() -> None:
    detail = JobDetail(id=3, name=MARKUP, state="succeeded", model="mlp/digits", global_batch=64,
                       policy="dynamic", sync="allreduce", created_at=1.0, started_at=2.0,
                       finished_at=3.0, message=None, step=9, total_steps=10, eta_s=None, loss=0.5,
                       samples_per_s=100.0, participants=1, efficiency=None, compute_fraction=0.9)
    page = report_html(detail, csv_name="x-steps.csv")
    assert page.count("</script>") == page.count("<script") == 4  # three scripts, one data block
    assert "<img" not in page and not re.search(r"(src|href)=\"?(https?:)?//", page)
    data = page.split('id="potluck-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data)["job"]["name"] == MARKUP


# -- packaging --------------------------------------------------------------------------------

def test_the_dashboard_files_are_package_data() -> None:
    """Every file the page serves is matched by pyproject's package-data (so a wheel ships it;
    docs/dashboard.md shows the check on a built wheel)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["potluck"]
    static = ROOT / "src" / "potluck" / "dashboard" / "static"
    files = [p.relative_to(ROOT / "src" / "potluck").as_posix() for p in static.iterdir()]
    assert {"dashboard/static/index.html", "dashboard/static/app.js", "dashboard/static/app.css"} <= set(files)
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in patterns), f"{name} is not package data"
    assert set(routes.static_files()) == {Path(f).name for f in files}
