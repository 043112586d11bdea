"""The dashboard's routes, plugged into the host's API (``potluck host`` passes
:func:`dashboard_router` in the app's ``routers``, like the doctor's).

- ``GET /`` and ``GET /ui/<file>``: the page and its scripts, styles and icon, shipped in the
  package (``static/``); no token needed, they hold no data. Every response of the
  dashboard carries ``Content-Security-Policy: default-src 'self'`` (so no inline script or
  style runs, and nothing is loaded from elsewhere).
- ``GET /api/v1/dashboard`` (a :class:`~potluck.contracts.dashboard.Snapshot`),
  ``.../jobs/{id}`` (a :class:`~potluck.contracts.dashboard.JobDetail`),
  ``.../jobs/{id}/steps.csv``, ``.../logs.txt`` and ``.../stream`` (server-sent events):
  read-only, behind the token or the dashboard's session cookie (``coordinator/auth.py``).

The stream sends each new log line as an event ``log`` whose ``id`` is the line's id (it
resumes after ``Last-Event-ID``, else after ``?after=``: no line twice, none skipped) and an
event ``snapshot`` every ``SNAPSHOT_EVERY_S``, sooner (but not within ``SNAPSHOT_SOON_S`` of
the previous one) when a job commits a new step. A stream ends after ``MAX_STREAM_S`` or when
the host stops; the browser then reconnects by itself with ``Last-Event-ID``.

Everything but the stream goes gzip-compressed to a client that asks for it (the page's
files are compressed once, at start): with 200 nodes the first snapshot is about 800 KB of
JSON and 33 KB gzipped. The stream is never compressed or buffered: each event leaves as
soon as it is written.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from potluck.contracts import dashboard as d
from potluck.contracts.errors import NotFoundError, StorageError
from potluck.coordinator.app import Id
from potluck.coordinator.service import Coordinator
from potluck.dashboard.snapshot import Board, log_line
from potluck.log import get_logger

log = get_logger("dashboard")

CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
SNAPSHOT_EVERY_S = 1.0
SNAPSHOT_SOON_S = 0.9
"""A committed step is streamed at the next poll, but a stream sends a new step at most once
per this long (so a job whose steps arrive all the time costs one snapshot a second)."""
POLL_S = 0.25
"""How often the stream looks for new log lines."""
PAGE = 500
"""Log lines read per query while catching up."""
MAX_STREAM_S = 300.0
RETRY_MS = 1000
"""How long the browser waits before reconnecting a stream that ended."""
GZIP_MIN_BYTES = 1000
"""Smaller bodies are sent as they are (compressing them saves less than its framing)."""
GZIP_LEVEL = 6


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def static_files() -> dict[str, tuple[bytes, str]]:
    """``name -> (bytes, content type)`` of every file in ``static/`` (read once)."""
    out = {}
    for entry in resources.files("potluck.dashboard").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in TYPES:
            out[entry.name] = (entry.read_bytes(), TYPES[suffix])
    return out


def _headers(**extra: str) -> dict[str, str]:
    return {**SECURITY_HEADERS, "cache-control": "no-store", **extra}


def _send(request: Request, body: bytes, media_type: str, headers: dict[str, str],
          gzipped: bytes | None = None) -> Response:
    """``body``, gzipped (``gzipped`` if given, else compressed now) when the client takes it
    and it is worth it."""
    if len(body) >= GZIP_MIN_BYTES:
        headers = {**headers, "vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("accept-encoding", "")):
            body = gzipped if gzipped is not None else gzip.compress(body, GZIP_LEVEL)
            headers["content-encoding"] = "gzip"
    return Response(body, media_type=media_type, headers=headers)


def _json(request: Request, model: d.Strict) -> Response:
    return _send(request, model.model_dump_json().encode(), "application/json", _headers())


def dashboard_router(coordinator: Coordinator) -> APIRouter:
    """The page, its files and the read-only ``/api/v1/dashboard`` routes."""
    router = APIRouter()
    board = Board(coordinator)
    files = static_files()
    gzipped = {name: gzip.compress(body, 9, mtime=0) for name, (body, _) in files.items()}

    def _file(request: Request, name: str) -> Response:
        if name not in files:
            raise NotFoundError(f"no file {name!r} in the dashboard")
        body, kind = files[name]
        return _send(request, body, kind, _headers(**{"cache-control": "no-cache"}), gzipped[name])

    @router.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        return _file(request, "index.html")

    @router.get("/ui/{name}", include_in_schema=False)
    async def static(request: Request, name: Annotated[str, Path(max_length=100)]) -> Response:
        return _file(request, name)

    @router.get("/api/v1/dashboard", response_model=d.Snapshot)
    async def snapshot(request: Request) -> Response:
        return _json(request, board.snapshot())

    @router.get("/api/v1/dashboard/jobs/{job_id}", response_model=d.JobDetail)
    async def job(request: Request, job_id: Id) -> Response:
        return _json(request, board.job(job_id))

    @router.get("/api/v1/dashboard/jobs/{job_id}/steps.csv", response_class=Response)
    async def steps_csv(request: Request, job_id: Id) -> Response:
        text = board.steps_csv(job_id)
        return _send(request, text.encode(), "text/csv; charset=utf-8", _headers(
            **{"content-disposition": f'attachment; filename="potluck-job-{job_id}-steps.csv"'}))

    @router.get("/api/v1/dashboard/logs.txt", response_class=Response)
    async def logs(request: Request, q: Annotated[str, Query(max_length=200)] = "") -> Response:
        return _send(request, board.log_text(q).encode(), "text/plain; charset=utf-8", _headers(
            **{"content-disposition": 'attachment; filename="potluck-log.txt"'}))

    @router.get("/api/v1/dashboard/stream", include_in_schema=False)
    async def stream(after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
                     ) -> StreamingResponse:
        if last_event_id is not None and last_event_id.strip().isdigit():
            after = int(last_event_id.strip())
        return StreamingResponse(_events(coordinator, board, after), media_type="text/event-stream",
                                 headers=_headers(**{"x-accel-buffering": "no"}))

    return router


async def _events(coordinator: Coordinator, board: Board, after: int) -> AsyncIterator[str]:
    """The stream's text: log lines after ``after``, and a snapshot every second (or as soon
    as a step is committed, at most one per ``SNAPSHOT_SOON_S``)."""
    yield f"retry: {RETRY_MS}\n\n"
    last = after
    sent_at = stepped_at = -SNAPSHOT_EVERY_S
    sent_steps = -1
    ends = time.monotonic() + MAX_STREAM_S
    while not coordinator.closing and time.monotonic() < ends:
        try:
            rows = coordinator.store.log_after(last, PAGE)
            for row in rows:
                last = row["id"]
                yield f"id: {last}\nevent: log\ndata: {log_line(row).model_dump_json()}\n\n"
            if len(rows) == PAGE:
                continue  # catching up: no pause
            # The one-second snapshot does not hold back a new step: that waits only for the
            # previous snapshot that brought one (agents forward steps once a second, so a
            # step goes out at the first poll after it arrives, whatever the two phases).
            now, steps = time.monotonic(), board.steps_seen
            new_step = steps != sent_steps and now >= stepped_at + SNAPSHOT_SOON_S
            if new_step or now >= sent_at + SNAPSHOT_EVERY_S:
                if steps != sent_steps:
                    stepped_at = now
                sent_at, sent_steps = now, steps
                yield f"event: snapshot\ndata: {board.snapshot().model_dump_json()}\n\n"
        except StorageError as exc:  # the disk is full or gone: say so, keep the stream
            yield f": {str(exc)[:200]}\n\n"
        await asyncio.sleep(POLL_S)
