"""The one HTTP client of the coordinator API, used by agents, the doctor and the CLI.

Transport and HTTP failures are translated into potluck errors once, here:

- connection refused / timeout / DNS -> :class:`HostUnreachableError`
- an error status -> the class whose ``http_status`` it is (401 :class:`AuthError`, 404
  :class:`NotFoundError`, 409 :class:`ConflictError` or :class:`VersionMismatchError` with
  its ``diffs``, 422 :class:`ConfigError`), anything else :class:`ApiResponseError`.

The token travels only in the ``Authorization`` header and never appears in a message.
Echoed error details are cut to one short line.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter

from potluck.contracts import wire as s
from potluck.contracts.dashboard import JobDetail
from potluck.contracts.errors import ApiResponseError, HostUnreachableError, error_for_status
from potluck.contracts.events import Event
from potluck.contracts.jobspec import JobSpec

MAX_DETAIL = 300
_EVENTS: TypeAdapter[list[Any]] = TypeAdapter(list[Event])  # built once: building costs ms


class CoordinatorClient:
    """Typed calls to one coordinator. Thread-safe (one httpx client with a pool)."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=timeout_s,
            trust_env=False,  # never route cluster traffic through an HTTP proxy
        )

    @property
    def host(self) -> str:
        """The host part of the coordinator URL (no brackets)."""
        return httpx.URL(self.url).host

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: BaseModel | None = None, *,
              params: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["content"] = body.model_dump_json()
            kwargs["headers"] = {"Content-Type": "application/json"}
        resp = self._send(method, path, params=params, timeout_s=timeout_s, **kwargs)
        try:
            return resp.json()
        except ValueError as exc:
            raise ApiResponseError(resp.status_code, f"host {self.url} answered with "
                                   "something that is not JSON: is this a potluck host?") from exc

    def _send(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              timeout_s: float | None = None, **kwargs: Any) -> httpx.Response:
        """One request; transport failures and error statuses become potluck errors."""
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        try:
            resp = self._http.request(method, path, params=params, **kwargs)
        except httpx.TimeoutException as exc:
            raise HostUnreachableError(
                f"host {self.url} did not answer in time ({type(exc).__name__}): is it overloaded, "
                "or is a firewall dropping packets to its port?"
            ) from exc
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            if "refused" in reason.lower():
                reason = "connection refused"
            raise HostUnreachableError(
                f"cannot reach host {self.url} ({reason}): is `potluck host` running there, and "
                "does its firewall allow this port?"
            ) from exc
        if resp.status_code < 400:
            return resp
        try:
            payload = resp.json()
            detail = str(payload.get("detail", resp.text))
        except (ValueError, AttributeError):
            payload, detail = {}, resp.text
        detail = " ".join(detail.split())[:MAX_DETAIL]
        raise error_for_status(resp.status_code, detail, payload if isinstance(payload, dict) else {})

    # cluster ------------------------------------------------------------------------------

    def info(self) -> s.ClusterInfo:
        return s.ClusterInfo(**self._call("GET", "/api/v1/info"))

    def register(self, req: s.RegisterRequest) -> s.RegisterResponse:
        """Register a node; later calls of this client act for it (its credential is sent)."""
        reg = s.RegisterResponse(**self._call("POST", "/api/v1/nodes", req))
        self.node_credential = reg.credential
        return reg

    @property
    def node_credential(self) -> str | None:
        return self._http.headers.get(s.NODE_CREDENTIAL_HEADER)

    @node_credential.setter
    def node_credential(self, value: str | None) -> None:
        if value:
            self._http.headers[s.NODE_CREDENTIAL_HEADER] = value
        else:
            self._http.headers.pop(s.NODE_CREDENTIAL_HEADER, None)

    def heartbeat(self, node_id: int, req: s.HeartbeatRequest) -> s.HeartbeatResponse:
        return s.HeartbeatResponse(**self._call("POST", f"/api/v1/nodes/{node_id}/heartbeat", req))

    def leave(self, node_id: int) -> None:
        self._call("POST", f"/api/v1/nodes/{node_id}/leave")

    def metrics(self, node_id: int, job_id: int, records: list[Any]) -> None:
        """Send events (typed, or their JSON dicts: validated here before they leave)."""
        events = _EVENTS.validate_python(records)
        self._call("POST", f"/api/v1/nodes/{node_id}/jobs/{job_id}/metrics",
                   s.MetricsRequest(records=events))

    def nodes(self) -> list[s.NodeInfo]:
        return [s.NodeInfo(**n) for n in self._call("GET", "/api/v1/nodes")]

    # jobs ---------------------------------------------------------------------------------

    def submit(self, config: JobSpec, name: str | None = None) -> s.JobInfo:
        return s.JobInfo(**self._call("POST", "/api/v1/jobs", s.JobSubmit(config=config, name=name)))

    def jobs(self) -> list[s.JobInfo]:
        return [s.JobInfo(**j) for j in self._call("GET", "/api/v1/jobs")]

    def job(self, job_id: int) -> s.JobInfo:
        return s.JobInfo(**self._call("GET", f"/api/v1/jobs/{job_id}"))

    def forget(self, name: str) -> s.NodeInfo:
        """Forget a node that is away (lost or left)."""
        return s.NodeInfo(**self._call("POST", f"/api/v1/nodes/by-name/{name}/forget"))

    def cancel(self, job_id: int) -> s.JobInfo:
        return s.JobInfo(**self._call("POST", f"/api/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: int, after: int = 0) -> list[s.LogEntry]:
        data = self._call("GET", f"/api/v1/jobs/{job_id}/events", params={"after": after})
        return [s.LogEntry(**e) for e in data]

    # files: code bundles, checkpoints, models ---------------------------------------------

    def _upload(self, method: str, path: str, data: bytes, timeout_s: float = 600.0) -> Any:
        headers = {"Content-Type": "application/octet-stream",
                   s.SHA256_HEADER: hashlib.sha256(data).hexdigest()}
        resp = self._send(method, path, content=data, headers=headers, timeout_s=timeout_s)
        return resp.json()

    def _download(self, path: str, timeout_s: float = 600.0) -> tuple[bytes, httpx.Headers]:
        """A file's bytes, checked against the sha256 the host sends with it."""
        resp = self._send("GET", path, timeout_s=timeout_s)
        want = resp.headers.get(s.SHA256_HEADER)
        if want and hashlib.sha256(resp.content).hexdigest() != want:
            raise ApiResponseError(resp.status_code, f"download of {path} was damaged in "
                                   "transit (sha256 mismatch): try again")
        return resp.content, resp.headers

    def upload_bundle(self, data: bytes) -> s.BundleInfo:
        return s.BundleInfo(**self._upload("POST", "/api/v1/bundles", data))

    def bundle(self, sha256: str) -> bytes:
        return self._download(f"/api/v1/bundles/{sha256}")[0]

    def put_checkpoint(self, node_id: int, job_id: int, step: int, data: bytes) -> None:
        self._upload("PUT", f"/api/v1/nodes/{node_id}/jobs/{job_id}/checkpoints/{step}", data)

    def put_model(self, node_id: int, job_id: int, data: bytes) -> None:
        self._upload("PUT", f"/api/v1/nodes/{node_id}/jobs/{job_id}/model", data)

    def checkpoint(self, job_id: int) -> tuple[int, bytes]:
        """``(step, bytes)`` of the job's newest checkpoint."""
        data, headers = self._download(f"/api/v1/jobs/{job_id}/checkpoint")
        return int(headers.get(s.STEP_HEADER, "0")), data

    def model(self, job_id: int) -> bytes:
        """The trained model of a job (safetensors bytes)."""
        return self._download(f"/api/v1/jobs/{job_id}/model")[0]

    def submit_resume(self, config: JobSpec, resume: int, name: str | None = None) -> s.JobInfo:
        return s.JobInfo(**self._call("POST", "/api/v1/jobs",
                                      s.JobSubmit(config=config, name=name, resume=resume)))

    # dashboard ----------------------------------------------------------------------------

    def dashboard_job(self, job_id: int) -> JobDetail:
        """A job with its charts' data, as the web dashboard shows it."""
        return JobDetail(**self._call("GET", f"/api/v1/dashboard/jobs/{job_id}", timeout_s=60))

    def steps_csv(self, job_id: int) -> str:
        """Every step event of a job as CSV (one row per replica and step)."""
        return self._send("GET", f"/api/v1/dashboard/jobs/{job_id}/steps.csv", timeout_s=120).text

    # doctor -------------------------------------------------------------------------------

    def doctor_time(self) -> float:
        return s.HostTime(**self._call("GET", "/api/v1/doctor/time")).time

    def doctor_start(self, mode: str) -> s.RunInfo:
        return s.RunInfo(**self._call("POST", "/api/v1/doctor/runs", s.RunRequest(mode=mode)))  # type: ignore[arg-type]

    def doctor_run(self, run_id: int) -> s.RunInfo:
        return s.RunInfo(**self._call("GET", f"/api/v1/doctor/runs/{run_id}"))

    def doctor_links(self) -> list[s.LinkFact]:
        return [s.LinkFact(**f) for f in self._call("GET", "/api/v1/doctor/links")]

    def doctor_task(self, node_id: int, wait_s: float) -> s.Task | None:
        """Long-poll for this node's next doctor task (None when there is none yet)."""
        data = self._call("GET", f"/api/v1/doctor/tasks/{node_id}", params={"wait": wait_s},
                          timeout_s=wait_s + 10)
        return s.TaskResponse(**data).task

    def doctor_listening(self, run_id: int, body: s.Listening) -> None:
        self._call("POST", f"/api/v1/doctor/runs/{run_id}/listening", body)

    def doctor_probed(self, run_id: int, body: s.Probed) -> None:
        self._call("POST", f"/api/v1/doctor/runs/{run_id}/probed", body)
