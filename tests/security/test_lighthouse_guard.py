"""The Lighthouse's advertised address passes torchft's gRPC and nothing else.

Before the guard, the advertised address was the Lighthouse itself, whose HTML status page
kills a replica on an unauthenticated ``POST /replica/<id>/kill``. These tests send that POST
(as HTTP/1.1 and as HTTP/2 with prior knowledge) to the advertised address and check that it
never reaches the Lighthouse, while a torchft quorum through the same address still works.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import time
from datetime import timedelta
from pathlib import Path

import pytest
from hpack import Encoder  # type: ignore[import-untyped]

from potluck.trainer.grpc_guard import (
    LIGHTHOUSE_PATHS,
    PREFACE,
    GuardedLighthouse,
    Refused,
    check_request,
    header_fragment,
)

# -- tier 1: pure ------------------------------------------------------------------------------


def test_only_grpc_posts_to_lighthouse_methods_pass() -> None:
    ok = [(":method", "POST"), (":path", "/torchft.LighthouseService/Quorum"),
          (":scheme", "http"), ("content-type", "application/grpc")]
    check_request(ok, LIGHTHOUSE_PATHS)
    for bad in (
        [(":method", "POST"), (":path", "/replica/a_0/kill"), ("content-type", "application/grpc")],
        [(":method", "GET"), (":path", "/torchft.LighthouseService/Quorum"),
         ("content-type", "application/grpc")],
        [(":method", "POST"), (":path", "/torchft.LighthouseService/Quorum"),
         ("content-type", "application/x-www-form-urlencoded")],
        [(":method", "POST"), (":path", "/torchft.ManagerService/Kill"),
         ("content-type", "application/grpc")],
        [(":method", "POST"), ("content-type", "application/grpc")],
    ):
        with pytest.raises(Refused):
            check_request(bad, LIGHTHOUSE_PATHS)


def test_header_fragment_strips_padding_and_priority() -> None:
    block = b"abc"
    assert header_fragment(0, block) == block
    assert header_fragment(0x8, bytes([2]) + block + b"\0\0") == block
    assert header_fragment(0x20, b"\0\0\0\1\7" + block) == block
    with pytest.raises(Refused):
        header_fragment(0x8, bytes([9]) + block)


# -- tier 2: a real Lighthouse behind the guard, in this process ----------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_request(addr: tuple[str, int], method: str, path: str, content_type: str,
               body: bytes = b"") -> bytes:
    """Send one HTTP/2 request with prior knowledge; return what came back within 2 s."""
    headers = [(":method", method), (":scheme", "http"), (":path", path),
               (":authority", f"{addr[0]}:{addr[1]}"), ("content-type", content_type)]
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(PREFACE + _frame(4, 0, 0, b"")  # SETTINGS (empty)
                     + _frame(1, 0x4 | (0 if body else 0x1), 1, Encoder().encode(headers))
                     + (_frame(0, 0x1, 1, body) if body else b""))
        got = b""
        sock.settimeout(2)
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except TimeoutError:
            pass
        return got


def _h1(addr: tuple[str, int], method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*addr, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def guarded() -> GuardedLighthouse:
    from potluck.trainer.ft import start_lighthouse

    lh = GuardedLighthouse(start_lighthouse("127.0.0.1", 0, min_replicas=1),
                           listen=("127.0.0.2", 0))
    yield lh
    lh.shutdown()


def test_quorum_passes_and_the_status_page_does_not(guarded: GuardedLighthouse) -> None:
    from torchft.coordination import LighthouseClient

    advertised = ("127.0.0.2", guarded.port)
    client = LighthouseClient(guarded.address(), connect_timeout=timedelta(seconds=5))
    quorum = client.quorum(replica_id="member_0", timeout=timedelta(seconds=10), address="x",
                           store_address="y", step=3, world_size=1)
    assert [p.replica_id for p in quorum.participants] == ["member_0"]
    client.heartbeat("member_0")

    # The real Lighthouse still shows its page on loopback (local users only) ...
    status, page = _h1(("127.0.0.1", guarded.upstream_port), "GET", "/status")
    assert status == 200 and b"member_0" in page
    # ... and the advertised address refuses every HTTP/1.x request, the kill form included.
    for method, path in (("GET", "/"), ("GET", "/status"), ("POST", "/replica/member_0/kill")):
        status, body = _h1(advertised, method, path)
        assert status == 403, (method, path, status, body)
    # HTTP/2 with prior knowledge to the kill path, or to a non-Lighthouse gRPC method: the
    # connection is closed before the request reaches the server; nothing comes back but the
    # server's SETTINGS at most (no HEADERS frame for stream 1).
    for method, path, ctype in (("POST", "/replica/member_0/kill", "application/x-www-form-urlencoded"),
                                ("POST", "/replica/member_0/kill", "application/grpc"),
                                ("POST", "/torchft.ManagerService/Kill", "application/grpc")):
        got = h2_request(advertised, method, path, ctype, body=b"\0\0\0\0\0")
        assert not _has_headers_frame(got, stream=1), (method, path, got[:200])
    # The member is still there: the kill never reached the Lighthouse.
    status, page = _h1(("127.0.0.1", guarded.upstream_port), "GET", "/status")
    assert b"member_0" in page


def test_guard_on_ipv6_loopback() -> None:
    """An IPv6 advertised address: the guard listens there, the Lighthouse on ``::1``."""
    import socket as _socket

    from torchft.coordination import LighthouseClient

    from potluck.trainer.ft import start_lighthouse

    try:
        with _socket.socket(_socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    lh = GuardedLighthouse(start_lighthouse("::1", 0, min_replicas=1), listen=("::1", 0))
    try:
        assert lh.address().startswith("http://[::1]:")
        client = LighthouseClient(lh.address(), connect_timeout=timedelta(seconds=5))
        client.heartbeat("member_0")
        assert _h1(("::1", lh.port), "POST", "/replica/member_0/kill")[0] == 403
    finally:
        lh.shutdown()


def _has_headers_frame(data: bytes, stream: int) -> bool:
    i = 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        if data[i + 3] == 1 and struct.unpack(">I", data[i + 5:i + 9])[0] & 0x7FFFFFFF == stream:
            return True
        i += 9 + length
    return False


# -- tier 3: a training job on real processes, attacked through the advertised address ----


def test_kill_through_the_advertised_lighthouse_does_nothing(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replicas train while an outsider POSTs kill for each of them to the Lighthouse's
    advertised address: every replica finishes, all steps commit, identical parameters."""
    import potluck.launcher.local as local
    from potluck.contracts.jobspec import JobSpec
    from potluck.launcher import LocalCluster

    if not hasattr(local, "GuardedLighthouse"):
        # Until LocalCluster guards its Lighthouse itself: put the guard in front here.
        plain = local.start_lighthouse

        def guarded_lighthouse(host: str, port: int = 0, **kw: object) -> GuardedLighthouse:
            return GuardedLighthouse(plain("127.0.0.1", 0, **kw), listen=(host, port))

        monkeypatch.setattr(local, "start_lighthouse", guarded_lighthouse)

    job = JobSpec.parse({"steps": 12, "global_batch": 32, "policy": "equal",
                         "emulation": {"sample_s": 5e-3}})
    with LocalCluster(job, [1.0, 1.0], tmp_path / "run", host="127.0.0.2") as cluster:
        lighthouse = cluster.lighthouse
        assert isinstance(lighthouse, GuardedLighthouse)
        advertised = ("127.0.0.2", lighthouse.port)
        ids: set[str] = set()
        refused = 0
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in cluster.procs.values()) and time.monotonic() < deadline:
            # What an outsider would do: kill everyone it can name (ids read from loopback,
            # where the page still is; an outsider could also guess or copy them).
            try:
                _, page = _h1(("127.0.0.1", lighthouse.upstream_port), "GET", "/status")
            except OSError:
                break
            ids |= {m.decode() for m in re.findall(rb"/replica/([^/\"'<>]+)/kill", page)}
            for rid in ids:
                status, _ = _h1(advertised, "POST", f"/replica/{rid}/kill")
                assert status == 403
                refused += 1
                h2_request(advertised, "POST", f"/replica/{rid}/kill", "application/grpc")
            time.sleep(0.2)
        codes = cluster.wait(120)
        records = [cluster.records(s) for s in range(2)]
    assert refused > 0, "the test never found a replica to attack"
    assert codes == {0: 0, 1: 0}
    done = [r[-1] for r in records]
    assert all(d["type"] == "done" for d in done)
    for recs in records:  # every step committed on every replica: the kills changed nothing
        assert sorted(r["step"] for r in recs if r["type"] == "step" and r["committed"]) \
            == list(range(job.steps))
    assert len({d["params_sha256"] for d in done}) == 1
