"""The probe library over real loopback sockets (tier 2: listener bound to port 0, read back)."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from potluck.net.probe import (
    LinkProbe,
    ProbeListener,
    ProbeSettings,
    check_connect,
    measure_bandwidth,
    measure_latency,
    probe_large_messages,
    probe_link,
)


@pytest.fixture
def listener():
    with ProbeListener("127.0.0.1") as lst:
        yield lst


def test_listener_binds_port_zero_and_reads_it_back(listener: ProbeListener) -> None:
    assert listener.port > 0
    assert check_connect("127.0.0.1", listener.port).ok


def test_closed_listener_refuses_at_once() -> None:
    lst = ProbeListener("127.0.0.1").start()
    port = lst.port
    lst.close()
    result = check_connect("127.0.0.1", port)
    assert not result.ok and result.error == "refused"


def test_ttl_closes_listener_by_itself() -> None:
    lst = ProbeListener("127.0.0.1", ttl=0.3).start()
    assert lst.wait_closed(timeout=10)
    assert check_connect("127.0.0.1", lst.port).error == "refused"


def test_latency_and_clock_offset_of_a_skewed_listener() -> None:
    with ProbeListener("127.0.0.1", clock=lambda: time.time() + 42.0) as lst:
        result = measure_latency("127.0.0.1", lst.port, count=4)
    assert len(result.rtt_ms) == 4 and result.median_ms >= 0
    assert 41.0 < result.clock_offset_s < 43.0


def test_bandwidth_is_bounded_by_bytes(listener: ProbeListener) -> None:
    result = measure_bandwidth("127.0.0.1", listener.port, max_bytes=2 * 1024 * 1024, max_seconds=5)
    assert result.bytes == 2 * 1024 * 1024
    assert result.mbit_s > 0


def test_large_messages_all_pass_on_loopback(listener: ProbeListener) -> None:
    sizes = [64 * 1024, 1024 * 1024]
    result = probe_large_messages("127.0.0.1", listener.port, sizes, stall_s=5, seconds=20)
    assert result.passed == sizes and result.stalled_at is None and result.skipped_from is None


def test_probe_link_round_trips_through_json(listener: ProbeListener) -> None:
    settings = ProbeSettings(bandwidth_bytes=1024 * 1024, message_sizes=(64 * 1024,))
    probe = probe_link("127.0.0.1", listener.port, settings)
    assert probe.connect.ok and probe.error is None
    assert probe.bandwidth is not None and probe.bandwidth.bytes == 1024 * 1024
    again = LinkProbe.from_dict(probe.to_dict())
    assert again == probe


def test_listener_that_never_answers_shows_as_stall() -> None:
    # A server that accepts and reads nothing: nothing is confirmed, so the message stalls
    # (the same signature as an MTU black hole, which the netns test builds for real).
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = probe_large_messages("127.0.0.1", port, [8 * 1024 * 1024], stall_s=0.5, seconds=10)
    assert result.stalled_at == 8 * 1024 * 1024 and result.passed == []


def test_oversized_request_is_refused(listener: ProbeListener) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
        sock.sendall(struct.pack("!cQd", b"M", 1 << 40, 1.0))
        assert sock.recv(1) == b""  # the listener hangs up instead of reading a terabyte


def test_probe_link_to_nothing_reports_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        probe = probe_link("127.0.0.1", port)
    assert not probe.connect.ok and probe.connect.error == "refused"
    assert probe.latency is None and probe.bandwidth is None
