"""schemathesis against the schema the coordinator serves: generated requests (valid and
invalid) for every operation, sent to a real uvicorn server on loopback with the token and a
node's credential. Zero server errors: every bad input is refused at the edge (422/4xx)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from potluck.contracts import wire as s
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.versions import local_versions
from potluck.coordinator.app import create_app
from potluck.coordinator.service import Coordinator, CoordinatorConfig
from potluck.coordinator.store import Store
from potluck.doctor.rounds import doctor_router

TOKEN = "t0ken-for-fuzzing-0123456789abcdef"
EXAMPLES = 25
"""Generated requests per operation (about 25 operations: well under a minute on 2 cores)."""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    import uvicorn

    coord = Coordinator(Store(tmp_path / "potluck.db"),
                        CoordinatorConfig(state_dir=tmp_path, advertise="127.0.0.1", port=0,
                                          lighthouse_port=1, versions=local_versions()))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(coord, TOKEN, routers=[doctor_router])
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def test_no_generated_request_makes_a_server_error(served: str) -> None:
    with CoordinatorClient(served, TOKEN) as client:  # a real node, so node routes get past auth
        reg = client.register(s.RegisterRequest(
            name="fuzz", node_key="f" * 32, address="127.0.0.3",
            hardware=s.Hardware(cpu_cores=2, memory_mb=1024), versions=local_versions()))
    headers = {"Authorization": f"Bearer {TOKEN}", s.NODE_CREDENTIAL_HEADER: reg.credential}
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    errors: list[str] = []
    calls = 0
    for op in operations:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def call(case: schemathesis.Case) -> None:
            nonlocal calls
            if case.path_parameters and case.path_parameters.get("node_id") is not None:
                case.path_parameters["node_id"] = reg.node_id  # the node whose credential we hold
            if op.path.endswith("/tasks/{node_id}") and case.query:
                case.query["wait"] = 0  # the long poll would make every example wait
            response = case.call(base_url=served, headers=headers, timeout=10)
            calls += 1
            if response.status_code >= 500:
                errors.append(f"{op.method.upper()} {op.path} -> {response.status_code}: "
                              f"{response.text[:200]} (body {str(case.body)[:200]})")

        call()
    assert calls >= len(operations) * 5
    assert not errors, "\n".join(errors[:20])
