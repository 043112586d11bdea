"""The HTTP API on a real uvicorn server (loopback, port 0): auth, validation, error shapes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_helpers import serve_coordinator

from potluck.contracts.client import CoordinatorClient
from potluck.contracts.errors import AuthError, ConfigError, HostUnreachableError
from potluck.contracts.versions import local_versions
from potluck.contracts.wire import RegisterRequest
from potluck.coordinator.auth import load_or_create_token, token_matches

TOKEN = "t0ken-for-tests-0123456789abcdef"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with serve_coordinator(tmp_path, TOKEN) as (url, store):
        yield {"url": url, "store": store}


def register_body(name: str = "a") -> dict[str, Any]:
    return {"name": name, "node_key": "k" * 32, "address": "127.0.0.3",
            "hardware": {"cpu_cores": 2, "memory_mb": 1024}, "versions": local_versions().model_dump()}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_requests_without_the_right_token_get_401_and_store_nothing(api: dict[str, Any], headers: dict[str, str]) -> None:
    resp = httpx.post(f"{api['url']}/api/v1/nodes", json=register_body(), headers=headers)
    assert resp.status_code == 401
    detail = resp.json()["detail"]
    assert "token" in detail and TOKEN not in resp.text
    assert ("missing" in detail) == (not headers)
    assert api["store"].nodes() == []
    # A malformed body without a token is still a 401: auth comes before parsing.
    assert httpx.post(f"{api['url']}/api/v1/jobs", content=b"{not json", headers=headers).status_code == 401


def test_malformed_requests_get_422_naming_the_field(api: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = register_body()
    body["hardware"]["cpu_cores"] = "lots"
    resp = httpx.post(f"{api['url']}/api/v1/nodes", json=body, headers=auth)
    assert resp.status_code == 422
    assert "hardware.cpu_cores" in resp.json()["detail"]
    resp = httpx.post(f"{api['url']}/api/v1/nodes", json={**register_body(), "extra": 1}, headers=auth)
    assert resp.status_code == 422 and "'extra'" in resp.json()["detail"]
    resp = httpx.post(f"{api['url']}/api/v1/nodes", content=b"\x80\x04pickle", headers=auth)
    assert resp.status_code == 422
    assert api["store"].nodes() == []


def test_client_translates_errors_to_one_line_potluck_errors(api: dict[str, Any]) -> None:
    good = CoordinatorClient(api["url"], TOKEN)
    assert good.info().versions == local_versions()
    with pytest.raises(AuthError, match="wrong token"):
        CoordinatorClient(api["url"], "not-the-token-at-all").nodes()
    good.register(RegisterRequest(**register_body()))
    with pytest.raises(ConfigError, match="unknown model 'gpt5'"):
        good.submit({"model": "gpt5"})
    assert good.jobs() == []
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(HostUnreachableError, match=f"cannot reach host http://127.0.0.1:{port} \\(connection refused\\)"):
        CoordinatorClient(f"http://127.0.0.1:{port}", TOKEN).nodes()


def test_token_file_is_private_and_random(tmp_path: Path) -> None:
    first = load_or_create_token(tmp_path, None)
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    assert len(first) >= 32  # 24 random bytes, urlsafe base64
    assert load_or_create_token(tmp_path, None) == first
    (tmp_path / "other").mkdir()
    assert load_or_create_token(tmp_path / "other", None) != first
    assert token_matches(first, f"Bearer {first}") and not token_matches(first, f"Bearer {first}x")
    with pytest.raises(ConfigError, match="at least 16"):
        load_or_create_token(tmp_path, "short")


def test_bad_input_is_a_422_naming_the_field_never_a_500(api: dict[str, Any]) -> None:
    """Hand-made cases from a fuzz run: nothing unvalidated reaches SQLite or is stored."""
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=api["url"], headers=headers, trust_env=False, timeout=20) as http:
        node = http.post("/api/v1/nodes", json=register_body()).json()["node_id"]
        cases = [
            ("GET", f"/api/v1/jobs/{2**63}", None, "job_id"),
            ("POST", f"/api/v1/nodes/{2**70}/heartbeat", {}, "node_id"),
            ("GET", "/api/v1/jobs/1/events?after=-1", None, "after"),
            ("POST", "/api/v1/jobs", {"config": {"lr": "NaN"}}, "lr"),
            ("POST", "/api/v1/jobs", {"config": {"global_batch": 12.5}}, "global_batch"),
            ("POST", "/api/v1/jobs", {"config": {"fault": {"max_replicas": 0}}}, "max_replicas"),
            ("POST", "/api/v1/jobs", {"config": {"seed": -4}}, "seed"),
            ("POST", "/api/v1/jobs", {"config": {"balancer": {"profiles": []}}}, "profiles"),
            ("POST", "/api/v1/nodes", {**register_body(), "address": "evil.example"}, "address"),
            ("POST", f"/api/v1/nodes/{node}/jobs/1/metrics", {"records": [{"loss": "lots"}]}, "records"),
        ]
        for method, path, body, field in cases:
            resp = http.request(method, path, json=body)
            assert resp.status_code == 422, (path, body, resp.text)
            assert field in resp.json()["detail"], resp.text
            assert len(resp.text) < 1000
        huge = http.post("/api/v1/jobs", content=b"{" + b" " * (5 * 2**20) + b"}",
                         headers={"Content-Type": "application/json"})
        assert huge.status_code == 413
        assert http.get("/api/v1/jobs").json() == []  # nothing was stored
