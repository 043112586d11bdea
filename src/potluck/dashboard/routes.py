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
event ``snapshot`` every ``SNAPSHOT_EVERY_S``. A stream ends after ``MAX_STREAM_S`` or when
the host stops; the browser then reconnects by itself with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query
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
POLL_S = 0.25
"""How often the stream looks for new log lines."""
PAGE = 500
"""Log lines read per query while catching up."""
MAX_STREAM_S = 300.0
RETRY_MS = 1000
"""How long the browser waits before reconnecting a stream that ended."""


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


def _json(model: d.Strict) -> Response:
    return Response(model.model_dump_json(), media_type="application/json", headers=_headers())


def dashboard_router(coordinator: Coordinator) -> APIRouter:
    """The page, its files and the read-only ``/api/v1/dashboard`` routes."""
    router = APIRouter()
    board = Board(coordinator)
    files = static_files()

    def _file(name: str) -> Response:
        if name not in files:
            raise NotFoundError(f"no file {name!r} in the dashboard")
        body, kind = files[name]
        return Response(body, media_type=kind, headers=_headers(**{"cache-control": "no-cache"}))

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        return _file("index.html")

    @router.get("/ui/{name}", include_in_schema=False)
    async def static(name: Annotated[str, Path(max_length=100)]) -> Response:
        return _file(name)

    @router.get("/api/v1/dashboard", response_model=d.Snapshot)
    async def snapshot() -> Response:
        return _json(board.snapshot())

    @router.get("/api/v1/dashboard/jobs/{job_id}", response_model=d.JobDetail)
    async def job(job_id: Id) -> Response:
        return _json(board.job(job_id))

    @router.get("/api/v1/dashboard/jobs/{job_id}/steps.csv", response_class=Response)
    async def steps_csv(job_id: Id) -> Response:
        text = board.steps_csv(job_id)
        return Response(text, media_type="text/csv; charset=utf-8", headers=_headers(
            **{"content-disposition": f'attachment; filename="potluck-job-{job_id}-steps.csv"'}))

    @router.get("/api/v1/dashboard/logs.txt", response_class=Response)
    async def logs(q: Annotated[str, Query(max_length=200)] = "") -> Response:
        return Response(board.log_text(q), media_type="text/plain; charset=utf-8", headers=_headers(
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
    """The stream's text: log lines after ``after``, and a snapshot every second."""
    yield f"retry: {RETRY_MS}\n\n"
    last = after
    next_snapshot = 0.0
    ends = time.monotonic() + MAX_STREAM_S
    while not coordinator.closing and time.monotonic() < ends:
        try:
            rows = coordinator.store.log_after(last, PAGE)
            for row in rows:
                last = row["id"]
                yield f"id: {last}\nevent: log\ndata: {log_line(row).model_dump_json()}\n\n"
            if len(rows) == PAGE:
                continue  # catching up: no pause
            if time.monotonic() >= next_snapshot:
                next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
                yield f"event: snapshot\ndata: {board.snapshot().model_dump_json()}\n\n"
        except StorageError as exc:  # the disk is full or gone: say so, keep the stream
            yield f": {str(exc)[:200]}\n\n"
        await asyncio.sleep(POLL_S)
