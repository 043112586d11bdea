"""Real network faults built with namespaces, each reported as the right finding with the right fix.

Tier 3: the probe listener and the prober run as separate processes in separate network
namespaces joined by veth links; the faults are real kernel configuration (no route, a
blackhole policy rule standing in for a DROP firewall rule, a tbf rate limit, an MTU black
hole). The measured results are classified by ``link_from_probe``.
"""

from __future__ import annotations

import pytest

from potluck.doctor.network import FIREWALL_FIX, MTU_FIX, NO_ROUTE_FIX, link_from_probe
from potluck.doctor.report import Status
from potluck.net.probe import LinkProbe

from .conftest import Lab, sh

pytestmark = pytest.mark.netns

FAST = {"bandwidth_bytes": 4 * 1024 * 1024, "bandwidth_seconds": 0.5, "stall_s": 1.5,
        "messages_seconds": 3.0, "connect_timeout_s": 2.0, "pings": 3}


def classify(lab: Lab, ns: str, source: str, target: str, host: str, port: int,
             source_address: str | None = None):
    raw = lab.probe(ns, host, port, **FAST)
    return link_from_probe(source, target, LinkProbe.from_dict(raw), source_address)


def test_healthy_link_is_green_both_ways(lab: Lab) -> None:
    a, b = lab.ns("A"), lab.ns("B")
    addr_a, addr_b, _, _ = lab.link(a, b)
    port_b = lab.listener(b, addr_b)
    port_a = lab.listener(a, addr_a)
    ab = classify(lab, a, "a", "b", addr_b, port_b)
    ba = classify(lab, b, "b", "a", addr_a, port_a)
    for link in (ab, ba):
        assert link.status is Status.OK, link.summary
        assert link.rtt_ms is not None and link.mbit_s is not None
        assert link.largest_message == 8 * 1024 * 1024
        assert link.fix is None


def test_no_route_is_reported_as_no_route(lab: Lab) -> None:
    # C sits behind B on a second link; A has no route to C's network.
    a, b, c = lab.ns("A"), lab.ns("B"), lab.ns("C")
    lab.link(a, b)
    _, addr_c, _, _ = lab.link(b, c)
    port_c = lab.listener(c, addr_c)
    link = classify(lab, a, "a", "c", addr_c, port_c)
    assert link.status is Status.FAIL
    assert link.error == "unreachable"
    assert "no route" in link.summary
    assert link.fix is not None and "ip route get" in link.fix.linux
    assert "route get" in link.fix.macos and "Find-NetRoute" in link.fix.windows
    assert link.fix.linux != NO_ROUTE_FIX.linux  # formatted with the real names


def test_dropped_inbound_fails_one_way_and_names_firewall(lab: Lab) -> None:
    a, b = lab.ns("A"), lab.ns("B")
    addr_a, addr_b, _, ib = lab.link(a, b)
    port_b = lab.listener(b, addr_b)
    port_a = lab.listener(a, addr_a)
    # A firewall on B that silently drops inbound TCP to the listener's port: a policy rule
    # ahead of the local table (this kernel has no iptables), so SYNs vanish without a reply.
    sh("ip", "-n", b, "rule", "add", "pref", "100", "lookup", "local")
    sh("ip", "-n", b, "rule", "del", "pref", "0")
    sh("ip", "-n", b, "rule", "add", "pref", "10", "iif", ib, "ipproto", "tcp",
       "dport", str(port_b), "blackhole")
    ab = classify(lab, a, "a", "b", addr_b, port_b, source_address=addr_a)
    ba = classify(lab, b, "b", "a", addr_a, port_a)
    assert ab.status is Status.FAIL and ab.error == "timeout", ab.summary
    assert "dropped" in ab.summary and "firewall" in ab.summary
    assert ab.fix is not None and f"ufw allow from {addr_a}" in ab.fix.linux
    assert "New-NetFirewallRule" in ab.fix.windows and "Firewall" in ab.fix.macos
    assert FIREWALL_FIX.linux != ab.fix.linux  # names the target
    assert ba.status is Status.OK, ba.summary  # the other direction stays green


def test_refused_port_is_not_mistaken_for_a_drop(lab: Lab) -> None:
    a, b = lab.ns("A"), lab.ns("B")
    _, addr_b, _, _ = lab.link(a, b)
    port_b = lab.listener(b, addr_b, ttl=0.5)  # closes itself: the port then refuses
    link = classify(lab, a, "a", "b", addr_b, port_b)
    if link.status is Status.OK:  # listener still up on a very slow machine: wait it out
        lab.procs[-1].wait(timeout=20)
        link = classify(lab, a, "a", "b", addr_b, port_b)
    assert link.status is Status.FAIL and link.error == "refused", link.summary


def test_tbf_limited_link_is_slow_and_far_below_unlimited(lab: Lab) -> None:
    a, b = lab.ns("A"), lab.ns("B")
    addr_a, addr_b, ia, _ = lab.link(a, b)
    port_b = lab.listener(b, addr_b)
    port_a = lab.listener(a, addr_a)
    # Only A's egress is limited: A -> B carries the probe data at 8 Mbit/s, B -> A does not.
    sh("ip", "netns", "exec", a, "tc", "qdisc", "add", "dev", ia, "root", "tbf",
       "rate", "8mbit", "burst", "32kbit", "latency", "50ms")
    slow = classify(lab, a, "a", "b", addr_b, port_b)
    fast = classify(lab, b, "b", "a", addr_a, port_a)
    assert slow.mbit_s is not None and fast.mbit_s is not None
    assert slow.mbit_s < 20, slow.summary  # tbf allows 8 Mbit/s; generous bound
    assert fast.mbit_s > 10 * slow.mbit_s
    assert slow.status is Status.WARN and "slow link" in slow.summary
    assert slow.fix is not None and "wired" in slow.fix.all
    assert fast.status is Status.OK
    # A slow link is not a black hole: messages keep moving (or are skipped for time).
    assert slow.error is None


def test_mtu_black_hole_is_found_by_large_messages(lab: Lab) -> None:
    a, b = lab.ns("A"), lab.ns("B")
    _, addr_b, ia, ib = lab.link(a, b)
    port_b = lab.listener(b, addr_b)
    # B's link takes at most 1400-byte frames but B advertises an MSS for 1500 and A sends
    # unsegmented full-size frames: small packets pass, full ones vanish without an ICMP.
    sh("ip", "-n", b, "link", "set", ib, "mtu", "1400")
    net = addr_b.rsplit(".", 1)[0] + ".0/24"
    sh("ip", "-n", b, "route", "replace", net, "dev", ib, "advmss", "1460")
    sh("ip", "-n", a, "link", "set", ia, "gso_max_size", "1500", "gso_max_segs", "1")
    link = classify(lab, a, "a", "b", addr_b, port_b)
    assert link.status is Status.FAIL and link.error == "stall", link.summary
    assert "MTU black hole" in link.summary
    assert link.rtt_ms is not None  # small messages (pings) did pass
    assert link.fix == MTU_FIX and "mtu 1280" in link.fix.linux
