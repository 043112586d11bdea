"""schemathesis against the schema the coordinator serves: generated requests (valid and
invalid) for every operation, sent to a real uvicorn server on loopback with the token and a
node's credential. Zero server errors: every bad input is refused at the edge (422/4xx).

Every answer must also conform to the served schema: a documented status, JSON, and a body
of the declared shape (errors included: ``ApiError``), and schema-invalid requests must be
refused. Not checked: that every schema-valid request is accepted, because some rules cannot
be said in JSON Schema (an IP address, not a host name; integers within 2^62 anywhere; slot
numbers as keys of ``balancer.profiles``), so the server rightly refuses some of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cluster_helpers import serve_coordinator
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi import checks as conformance

from potluck.contracts import wire as s
from potluck.contracts.client import CoordinatorClient
from potluck.contracts.versions import local_versions
from potluck.doctor.rounds import doctor_router

TOKEN = "t0ken-for-fuzzing-0123456789abcdef"
EXAMPLES = 25
"""Generated requests per operation (about 25 operations: well under a minute on 2 cores)."""
CHECKS = [conformance.status_code_conformance, conformance.content_type_conformance,
          conformance.response_schema_conformance, conformance.negative_data_rejection]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    with serve_coordinator(tmp_path, TOKEN, routers=[doctor_router]) as (url, _):
        yield url


def fuzz(op: Any, url: str, headers: dict[str, str], node_id: int, errors: list[str]) -> int:
    """Send ``EXAMPLES`` generated requests for one operation; record any 5xx and any answer
    that does not conform to the schema. Returns the count."""
    calls: list[tuple[schemathesis.Case, Any]] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def call(case: schemathesis.Case) -> None:
        nonlocal calls
        if case.path_parameters and case.path_parameters.get("node_id") is not None:
            case.path_parameters["node_id"] = node_id  # the node whose credential we hold
        if op.path.endswith("/tasks/{node_id}") and case.query:
            case.query["wait"] = 0  # the long poll would make every example wait
        response = case.call(base_url=url, headers=headers, timeout=10)
        calls.append((case, response))
        if response.status_code >= 500:
            errors.append(f"{op.method.upper()} {op.path} -> {response.status_code}: "
                          f"{response.text[:200]} (body {str(case.body)[:200]})")

    call()
    # Checked after the examples ran: a failure inside would make hypothesis shrink it, slowly.
    for case, response in calls:
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except BaseException as exc:  # schemathesis raises an exception group of failures
            if isinstance(exc, KeyboardInterrupt):
                raise
            first = str(exc).split("Reproduce with")[0].strip()
            errors.append(f"{op.method.upper()} {op.path} -> {response.status_code}: {first[:600]}")
    return len(calls)


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
    calls = sum(fuzz(op, served, headers, reg.node_id, errors) for op in operations)
    assert calls >= len(operations) * 5
    assert not errors, "\n".join(errors[:20])
