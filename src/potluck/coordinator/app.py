"""The HTTP API: FastAPI routes mapping requests to :class:`Coordinator` methods.

Every ``/api/v1`` route needs the bearer token (see ``auth.TokenMiddleware``); ``GET /metrics``
(Prometheus text format, ``prometheus.py``) takes it or the metrics token. ``POST
/api/v1/session`` trades the token for the web dashboard's read-only session cookie. Errors are
JSON ``{"detail": "<one line>"}``; a malformed request is a 422 whose detail names the field.
The handlers are ``async`` and call the coordinator directly: its methods are short SQLite
transactions, cheaper than a hop through a thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from potluck.contracts import wire as s
from potluck.contracts.bundle import MAX_BUNDLE_BYTES
from potluck.contracts.errors import ConfigError, NotFoundError, PotluckError
from potluck.coordinator.artifacts import MAX_ARTIFACT_BYTES
from potluck.coordinator.auth import METRICS_PATH, Sessions, TokenMiddleware
from potluck.coordinator.prometheus import CONTENT_TYPE
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
Sha256 = Annotated[str | None, Header(alias=s.SHA256_HEADER, pattern=r"^[0-9a-fA-F]{64}$")]
"""The sender's sha256 of an uploaded file; the host refuses a body that does not match."""


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Any) -> str:
    st = os.stat(path)
    return _sha256_of(str(path), st.st_mtime_ns, st.st_size)


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


def create_app(coordinator: Coordinator, token: str, *, metrics_token: str | None = None,
               tick_s: float = 1.0, routers: Sequence[Router] = ()) -> Any:
    """The ASGI app (FastAPI wrapped in the token middleware), with the housekeeping task.

    ``metrics_token`` (if given) is accepted by ``GET /metrics`` and refused everywhere else.
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
        yield
        task.cancel()

    api = FastAPI(title="potluck coordinator", lifespan=lifespan, docs_url=None, redoc_url=None,
                  responses=ERROR_RESPONSES)

    @api.exception_handler(PotluckError)
    async def _api_error(_: Request, exc: PotluckError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), **exc.payload()}, status_code=exc.http_status)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _field_error(exc)}, status_code=422)

    sessions = Sessions()

    @api.post("/api/v1/session")
    async def session() -> JSONResponse:
        """Begin a dashboard session (the caller has shown the token): the answer sets the
        session cookie, which reads the dashboard's routes and nothing else."""
        return JSONResponse({"expires_in_s": sessions.ttl_s},
                            headers={"set-cookie": sessions.cookie(sessions.new()),
                                     "cache-control": "no-store"})

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get(METRICS_PATH, include_in_schema=False)
    async def prometheus() -> Response:
        return Response(coordinator.prometheus(), media_type=CONTENT_TYPE)

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

    @api.post("/api/v1/nodes/by-name/{name}/forget")
    async def forget(name: Annotated[str, Path(max_length=64, pattern=s.NAME_PATTERN)]) -> s.NodeInfo:
        return coordinator.forget(name)

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

    # files: code bundles, checkpoints, trained models (raw bytes, sha256 in a header) ------

    async def _body(request: Request, limit: int) -> bytes:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit:
            raise ConfigError(f"upload of {int(size)} bytes is over the host's {limit} byte limit")
        data = await request.body()
        if len(data) > limit:
            raise ConfigError(f"upload of {len(data)} bytes is over the host's {limit} byte limit")
        return data

    def _file(path: Any, sha256: str | None = None, **headers: str) -> FileResponse:
        return FileResponse(path, media_type="application/octet-stream",
                            headers={s.SHA256_HEADER: sha256 or _sha256(path), **headers})

    @api.post("/api/v1/bundles", status_code=201)
    async def put_bundle(request: Request) -> s.BundleInfo:
        data = await _body(request, MAX_BUNDLE_BYTES)
        sha, files = await asyncio.to_thread(coordinator.artifacts.put_bundle, data)
        return s.BundleInfo(sha256=sha, files=files)

    @api.get("/api/v1/bundles/{sha256}")
    async def get_bundle(sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]) -> FileResponse:
        return _file(coordinator.artifacts.bundle_path(sha256))

    @api.put("/api/v1/nodes/{node_id}/jobs/{job_id}/checkpoints/{step}")
    async def put_checkpoint(node_id: Id, job_id: Id, step: Id, request: Request,
                             node: NodeCredential = None, sha256: Sha256 = None) -> dict[str, int]:
        data = await _body(request, MAX_ARTIFACT_BYTES)
        await coordinator.put_checkpoint(node_id, job_id, step, data, sha256, node)
        return {"stored": len(data)}

    @api.put("/api/v1/nodes/{node_id}/jobs/{job_id}/model")
    async def put_model(node_id: Id, job_id: Id, request: Request, node: NodeCredential = None,
                        sha256: Sha256 = None) -> dict[str, int]:
        data = await _body(request, MAX_ARTIFACT_BYTES)
        await coordinator.put_model(node_id, job_id, data, sha256, node)
        return {"stored": len(data)}

    @api.get("/api/v1/jobs/{job_id}/checkpoint")
    async def get_checkpoint(job_id: Id) -> FileResponse:
        coordinator.job_info(job_id)
        latest = coordinator.artifacts.latest_checkpoint(job_id)
        if latest is None:
            raise NotFoundError(f"job {job_id} has no checkpoint on the host yet")
        return _file(latest[1], coordinator.artifacts.checkpoint_sha256(latest[1]),
                     **{s.STEP_HEADER: str(latest[0])})

    @api.get("/api/v1/jobs/{job_id}/model")
    async def get_model(job_id: Id) -> FileResponse:
        job = coordinator.job_info(job_id)
        path = coordinator.artifacts.model_path(job_id)
        if path is None:
            raise NotFoundError(f"job {job_id} has no trained model on the host ({job.state}"
                                "; a model is stored when a job ends)")
        return _file(path)

    for router in routers:
        api.include_router(router(coordinator))
    return TokenMiddleware(api, token, metrics_token=metrics_token, sessions=sessions)
