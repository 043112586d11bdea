"""Address selection: classification, `ip -o addr` parsing, the host's and the agent's choice."""

from __future__ import annotations

import pytest

from potluck.contracts.errors import NetworkConfigError
from potluck.net.address import (
    AddressKind,
    Interface,
    agent_address,
    choose_advertise,
    classify,
    interface_for,
    parse_ip_addr,
    route_source,
    split_host_port,
)

IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever
2: eth0    inet 203.0.113.7/24 brd 203.0.113.255 scope global eth0\\       valid_lft forever
3: wlan0    inet 192.168.1.20/24 brd 192.168.1.255 scope global dynamic wlan0\\       valid_lft 85000sec
4: tailscale0    inet 100.101.255.2/32 scope global tailscale0\\       valid_lft forever
5: veth-a@if6    inet 10.203.0.2/24 scope global veth-a\\       valid_lft forever
7: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever
"""


def iface(name: str, address: str, prefix: int = 24) -> Interface:
    return Interface(name=name, address=address, prefixlen=prefix)


@pytest.mark.parametrize(
    ("address", "interface", "kind"),
    [
        ("127.0.0.3", None, AddressKind.LOOPBACK),
        ("::1", None, AddressKind.LOOPBACK),
        ("100.64.0.1", None, AddressKind.VPN),
        ("100.127.255.254", "eth0", AddressKind.VPN),
        ("100.128.0.1", None, AddressKind.PUBLIC),  # just outside the CGNAT /10
        ("10.8.0.2", "wg0", AddressKind.VPN),
        ("172.22.1.5", "ztabcdef", AddressKind.VPN),
        ("10.8.0.2", "eth0", AddressKind.PRIVATE),
        ("172.31.255.1", None, AddressKind.PRIVATE),
        ("172.32.0.1", None, AddressKind.PUBLIC),
        ("192.168.1.20", "wlan0", AddressKind.PRIVATE),
        ("fd12::1", None, AddressKind.PRIVATE),
        ("fe80::1", None, AddressKind.LINK_LOCAL),
        ("8.8.8.8", None, AddressKind.PUBLIC),
    ],
)
def test_classify(address: str, interface: str | None, kind: AddressKind) -> None:
    assert classify(address, interface) is kind


def test_classify_rejects_a_hostname_with_a_fix() -> None:
    with pytest.raises(NetworkConfigError, match="not an IP address"):
        classify("myhost.local")


def test_parse_ip_addr_reads_names_addresses_and_prefixes() -> None:
    parsed = parse_ip_addr(IP_ADDR)
    assert [(i.name, i.address, i.prefixlen) for i in parsed] == [
        ("lo", "127.0.0.1", 8),
        ("lo", "::1", 128),
        ("eth0", "203.0.113.7", 24),
        ("wlan0", "192.168.1.20", 24),
        ("tailscale0", "100.101.255.2", 32),
        ("veth-a", "10.203.0.2", 24),
        ("eth0", "fe80::1", 64),
    ]


def test_host_prefers_vpn_then_private_and_refuses_public() -> None:
    every = parse_ip_addr(IP_ADDR)
    choice = choose_advertise(every)
    assert (choice.address, choice.interface, choice.kind) == ("100.101.255.2", "tailscale0", AddressKind.VPN)

    no_vpn = [i for i in every if i.name != "tailscale0"]
    # Two private addresses: the default route's interface wins.
    assert choose_advertise(no_vpn, default_interface="wlan0").address == "192.168.1.20"
    assert choose_advertise(no_vpn, default_interface="veth-a").address == "10.203.0.2"

    public_only = [i for i in every if i.name in ("lo", "eth0")]
    with pytest.raises(NetworkConfigError, match="only public addresses .*--allow-public"):
        choose_advertise(public_only)
    assert choose_advertise(public_only, allow_public=True).address == "203.0.113.7"


def test_public_ipv4_plus_ula_picks_the_ula_and_says_what_it_skipped() -> None:
    machine = [iface("lo", "127.0.0.1", 8), iface("eth0", "192.0.2.10"), iface("eth0", "fd77::10", 64),
               iface("eth0", "fe80::10", 64)]
    choice = choose_advertise(machine, default_interface="eth0")
    assert (choice.address, choice.kind) == ("fd77::10", AddressKind.PRIVATE)
    assert choice.reason.startswith("private IPv6 (unique-local) address on eth0")
    assert "not the public 192.0.2.10 (eth0)" in choice.reason and "--allow-public" in choice.reason
    # A private IPv4 beside the ULA wins.
    choice = choose_advertise([*machine, iface("eth1", "192.168.5.5")])
    assert (choice.address, choice.reason) == ("192.168.5.5", "private LAN address on eth1; not the public 192.0.2.10 (eth0): pass --allow-public --advertise ADDRESS to use a public address")


def test_advertise_override_must_be_local_and_not_public() -> None:
    every = parse_ip_addr(IP_ADDR)
    assert choose_advertise(every, override="192.168.1.20").interface == "wlan0"
    assert choose_advertise(every, override="127.0.0.5").interface == "lo"
    with pytest.raises(NetworkConfigError, match="no interface of this machine has that address"):
        choose_advertise(every, override="192.168.1.99")
    with pytest.raises(NetworkConfigError, match="refusing to use public address 203.0.113.7: gloo and torchft traffic is neither encrypted"):
        choose_advertise(every, override="203.0.113.7")
    assert choose_advertise(every, override="203.0.113.7", allow_public=True).kind is AddressKind.PUBLIC


def test_no_usable_address_says_how_to_run_single_machine() -> None:
    with pytest.raises(NetworkConfigError, match="--advertise 127.0.0.1"):
        choose_advertise([iface("lo", "127.0.0.1", 8)])


def test_agent_uses_the_route_source_and_its_interface() -> None:
    every = parse_ip_addr(IP_ADDR)
    choice = agent_address("10.203.0.1", every, source="10.203.0.2")
    assert (choice.address, choice.interface) == ("10.203.0.2", "veth-a")
    with pytest.raises(NetworkConfigError, match="refusing to use public address"):
        agent_address("198.51.100.1", every, source="203.0.113.7")


def test_route_source_on_loopback_is_a_loopback_address() -> None:
    # A UDP connect() is a route lookup only: nothing is sent.
    assert route_source("127.0.0.2").startswith("127.")
    assert interface_for("127.0.0.9", [iface("lo", "127.0.0.1", 8)]) == "lo"
    assert interface_for("10.1.1.1", [iface("lo", "127.0.0.1", 8)]) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100.64.1.2", ("100.64.1.2", 7077)),
        ("100.64.1.2:9000", ("100.64.1.2", 9000)),
        ("http://127.0.0.2:81/", ("127.0.0.2", 81)),
        ("[fd00::2]:7000", ("fd00::2", 7000)),
        ("fd00::2", ("fd00::2", 7077)),
        ("my-host", ("my-host", 7077)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, 7077) == expected


@pytest.mark.parametrize("text", ["host:0", "host:99999", "host:abc", ":7077"])
def test_split_host_port_rejects_bad_input(text: str) -> None:
    with pytest.raises(NetworkConfigError):
        split_host_port(text, 7077)
