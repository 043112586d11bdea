"""HTTP client of the coordinator API, used by agents and the CLI.

Translates transport and HTTP failures into potluck errors once, here:

- connection refused / timeout / DNS -> :class:`HostUnreachableError`
- 401 -> :class:`AuthError`; 409 with ``diffs`` -> :class:`VersionMismatchError`
- 422 -> :class:`ConfigError`; anything else -> :class:`ApiResponseError` (status kept)

The token travels only in the ``Authorization`` header and never appears in a message.
"""

from __future__ import annotations

from typing import Any

import httpx

from potluck.coordinator import schemas as s
from potluck.errors import (
    AuthError,
    ClusterError,
    ConfigError,
    HostUnreachableError,
    VersionMismatchError,
)


class ApiResponseError(ClusterError):
    """The coordinator answered with an error status (``status`` says which)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class VersionMismatch(VersionMismatchError):
    """A version mismatch with the per-component differences, for a table."""

    def __init__(self, message: str, diffs: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.diffs = diffs


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

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
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
            return resp.json()
        try:
            payload = resp.json()
            detail = str(payload.get("detail", resp.text))
        except ValueError:
            payload, detail = {}, resp.text[:200]
        if resp.status_code == 401:
            raise AuthError(f"host {self.url} refused the token: {detail}")
        if resp.status_code == 409 and isinstance(payload.get("diffs"), list):
            raise VersionMismatch(detail, payload["diffs"])
        if resp.status_code == 422:
            raise ConfigError(detail)
        raise ApiResponseError(resp.status_code, detail)

    # cluster ------------------------------------------------------------------------------

    def info(self) -> s.ClusterInfo:
        return s.ClusterInfo(**self._call("GET", "/api/v1/info"))

    def register(self, req: s.RegisterRequest) -> s.RegisterResponse:
        return s.RegisterResponse(**self._call("POST", "/api/v1/nodes", req.model_dump()))

    def heartbeat(self, node_id: int, req: s.HeartbeatRequest) -> s.HeartbeatResponse:
        data = self._call("POST", f"/api/v1/nodes/{node_id}/heartbeat", req.model_dump())
        return s.HeartbeatResponse(**data)

    def leave(self, node_id: int) -> None:
        self._call("POST", f"/api/v1/nodes/{node_id}/leave")

    def metrics(self, node_id: int, job_id: int, records: list[dict[str, Any]]) -> None:
        self._call(
            "POST", f"/api/v1/nodes/{node_id}/jobs/{job_id}/metrics", {"records": records}
        )

    def nodes(self) -> list[s.NodeInfo]:
        return [s.NodeInfo(**n) for n in self._call("GET", "/api/v1/nodes")]

    # jobs ---------------------------------------------------------------------------------

    def submit(self, config: dict[str, Any], name: str | None = None) -> s.JobInfo:
        return s.JobInfo(**self._call("POST", "/api/v1/jobs", {"config": config, "name": name}))

    def jobs(self) -> list[s.JobInfo]:
        return [s.JobInfo(**j) for j in self._call("GET", "/api/v1/jobs")]

    def job(self, job_id: int) -> s.JobInfo:
        return s.JobInfo(**self._call("GET", f"/api/v1/jobs/{job_id}"))

    def cancel(self, job_id: int) -> s.JobInfo:
        return s.JobInfo(**self._call("POST", f"/api/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: int, after: int = 0) -> list[s.Event]:
        data = self._call("GET", f"/api/v1/jobs/{job_id}/events?after={after}")
        return [s.Event(**e) for e in data]
