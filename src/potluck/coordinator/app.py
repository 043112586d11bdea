"""The HTTP API: FastAPI routes mapping requests to :class:`Coordinator` methods.

Every ``/api/v1`` route needs the bearer token (see ``auth.TokenMiddleware``). Errors are
JSON ``{"detail": "<one line>"}``; a malformed request is a 422 whose detail names the field.
The handlers are ``async`` and call the coordinator directly: its methods are short SQLite
transactions, cheaper than a hop through a thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from potluck.contracts import wire as s
from potluck.contracts.errors import PotluckError
from potluck.coordinator.auth import TokenMiddleware
from potluck.coordinator.service import Coordinator
from potluck.log import get_logger

log = get_logger("coordinator.api")


def _field_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"field {loc or '(body)'!r}: {err.get('msg', 'invalid')}")
    return "malformed request: " + "; ".join(parts)


Router = Callable[[Coordinator], APIRouter]
"""An extension of the API from a layer above the coordinator (e.g. the doctor's rounds)."""

Id = Annotated[int, Path(ge=0, le=2**62)]
NodeCredential = Annotated[str | None, Header(alias=s.NODE_CREDENTIAL_HEADER, max_length=256)]
"""The credential of the node a call acts for (see ``Membership.authenticate``)."""
"""A node or job id in a path: bounded, so no integer SQLite cannot hold reaches it."""


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": s.ApiError, "description": what}
    for status, what in (
        (401, "missing or wrong token"),
        (403, "the node credential is not this node's"),
        (404, "no such node, job or doctor round"),
        (409, "the request clashes with the cluster's state (a version mismatch adds diffs)"),
        (413, "request body too large"),
        (422, "malformed request: the detail names the field"),
        (503, "the host's database cannot be used now (disk full, I/O error): the detail says why"),
    )
}
"""Every error status of the API, in the served schema; all share one shape, ApiError."""


def create_app(coordinator: Coordinator, token: str, *, tick_s: float = 1.0,
               routers: Sequence[Router] = ()) -> Any:
    """The ASGI app (FastAPI wrapped in the token middleware), with the housekeeping task.

    ``routers`` are mounted behind the same token check; they raise PotluckErrors like the
    core routes do."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def housekeeping() -> None:
            while True:
                await asyncio.sleep(tick_s)
                try:
                    coordinator.tick()
                except Exception:  # keep the cluster alive; the next tick retries
                    log.exception("housekeeping failed")

        task = asyncio.create_task(housekeeping())
        # Checking a submitted job needs the kernel's registries, which import torch
        # (seconds): load them in the background now, not on the first submission.
        warm = asyncio.create_task(asyncio.to_thread(importlib.import_module, "potluck.recipes"))
        yield
        task.cancel()
        warm.cancel()

    api = FastAPI(title="potluck coordinator", lifespan=lifespan, docs_url=None, redoc_url=None,
                  responses=ERROR_RESPONSES)

    @api.exception_handler(PotluckError)
    async def _api_error(_: Request, exc: PotluckError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), **exc.payload()}, status_code=exc.http_status)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _field_error(exc)}, status_code=422)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/api/v1/info")
    async def info() -> s.ClusterInfo:
        return coordinator.info()

    @api.post("/api/v1/nodes")
    async def register(req: s.RegisterRequest) -> s.RegisterResponse:
        return coordinator.register(req)

    @api.get("/api/v1/nodes")
    async def nodes() -> list[s.NodeInfo]:
        return coordinator.nodes()

    @api.post("/api/v1/nodes/{node_id}/heartbeat")
    async def heartbeat(node_id: Id, req: s.HeartbeatRequest, node: NodeCredential = None) -> s.HeartbeatResponse:
        return coordinator.heartbeat(node_id, req, node)

    @api.post("/api/v1/nodes/{node_id}/leave")
    async def leave(node_id: Id, node: NodeCredential = None) -> dict[str, str]:
        coordinator.leave(node_id, node)
        return {"status": "left"}

    @api.post("/api/v1/nodes/{node_id}/jobs/{job_id}/metrics")
    async def metrics(node_id: Id, job_id: Id, req: s.MetricsRequest, node: NodeCredential = None) -> dict[str, int]:
        return {"stored": coordinator.metrics(node_id, job_id, req, node)}

    @api.post("/api/v1/jobs", status_code=201)
    async def submit(req: s.JobSubmit) -> s.JobInfo:
        return coordinator.submit(req)

    @api.get("/api/v1/jobs")
    async def jobs() -> list[s.JobInfo]:
        return coordinator.jobs()

    @api.get("/api/v1/jobs/{job_id}")
    async def job(job_id: Id) -> s.JobInfo:
        return coordinator.job_info(job_id)

    @api.post("/api/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: Id) -> s.JobInfo:
        return coordinator.cancel(job_id)

    @api.get("/api/v1/jobs/{job_id}/events")
    async def events(job_id: Id, after: Annotated[int, Query(ge=0, le=2**62)] = 0) -> list[s.LogEntry]:
        return coordinator.events(job_id, after)

    for router in routers:
        api.include_router(router(coordinator))
    return TokenMiddleware(api, token)
