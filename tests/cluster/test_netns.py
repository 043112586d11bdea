"""Machines in network namespaces: the host and two agents each in their own namespace, linked
by veth pairs to a bridge in the host's namespace. Every agent namespace also has a decoy
interface with another private address (created first, so a naive "first private address"
pick would take it): the agent must pick the veth, because that is where the route to the
host goes. No flags name any address: everything is chosen automatically.

All traffic stays inside the namespaces this test creates (and deletes)."""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_helpers import wait_until

from conftest import Cluster
from potluck.net.address import AddressKind, parse_ip_addr

pytestmark = pytest.mark.netns


def ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)


class Net:
    """Namespaces for one test, with unique names; :meth:`close` deletes them all."""

    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 1000:03d}{random.randrange(1000):03d}"
        self.subnet = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
        self.created: list[str] = []

    def ns(self, role: str) -> str:
        name = f"pl{role}{self.tag}"
        ip("netns", "add", name)
        self.created.append(name)
        ip("link", "set", "lo", "up", ns=name)
        return name

    def close(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def net() -> Iterator[Net]:
    probe = f"plprobe{os.getpid() % 100000}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"`ip netns` is not permitted here ({exc}); run as root with iproute2")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    n = Net()
    try:
        yield n
    finally:
        n.close()


def decoy(ns: str, name: str, cidr: str) -> None:
    """An extra interface (a veth pair with both ends in ``ns``) carrying ``cidr``."""
    ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p", ns=ns)
    ip("addr", "add", cidr, "dev", name, ns=ns)
    ip("link", "set", name, "up", ns=ns)
    ip("link", "set", f"{name}p", "up", ns=ns)


def build(net: Net, agents: list[str]) -> dict[str, Any]:
    """Host namespace with bridge ``br0`` at .1; one namespace per agent at .2, .3, ..."""
    host = net.ns("h")
    ip("link", "add", "br0", "type", "bridge", ns=host)
    ip("addr", "add", f"{net.subnet}.1/24", "dev", "br0", ns=host)
    ip("link", "set", "br0", "up", ns=host)
    out: dict[str, Any] = {"host": host, "host_addr": f"{net.subnet}.1", "agents": {}}
    for i, name in enumerate(agents, start=2):
        ns = net.ns(name)
        # The decoy first: a private address on an interface that does not lead to the host.
        decoy(ns, "decoy0", f"192.168.{200 + i}.{i}/24")
        outer, inner = f"v{name}{net.tag}"[:15], f"eth-{name}"
        ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns, ns=host)
        ip("link", "set", outer, "master", "br0", ns=host)
        ip("link", "set", outer, "up", ns=host)
        ip("addr", "add", f"{net.subnet}.{i}/24", "dev", inner, ns=ns)
        ip("link", "set", inner, "up", ns=ns)
        out["agents"][name] = {"ns": ns, "addr": f"{net.subnet}.{i}", "iface": inner}
    return out


def netns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def test_agents_in_namespaces_pick_the_route_interface_and_train(cluster: Cluster, net: Net) -> None:
    topo = build(net, ["a", "b"])
    in_host = netns(topo["host"])
    host = cluster.start_host("", prefix=in_host)  # no --advertise: the host chooses
    assert host["advertise"] == topo["host_addr"]
    for name, info in topo["agents"].items():
        cluster.start_agent(host, name, None, 1.0 if name == "a" else 0.5, prefix=netns(info["ns"]))
    wait_until(lambda: len(cluster.nodes(prefix=in_host)) == 2, 60, "both agents to join")

    nodes = cluster.nodes(prefix=in_host)
    for name, info in topo["agents"].items():
        assert (nodes[name]["address"], nodes[name]["interface"]) == (info["addr"], info["iface"])

    yaml = cluster.tmp / "job.yaml"
    yaml.write_text("emulation: {sample_s: 0.0003}\nfault: {step_timeout_s: 8}\n")
    out = cluster.cli("train", "--steps", "30", "--global-batch", "128", "--config", str(yaml), "--json",
                      prefix=in_host, timeout=150)
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout)
    assert summary["state"] == "succeeded" and summary["nodes"] == ["a", "b"]
    assert summary["test_accuracy"] > 0.8

    for name, info in topo["agents"].items():
        run = next((cluster.tmp / f"agent-{name}" / "runs").glob("job-*/attempt-*"))
        assert json.loads((run / "spec.json").read_text())["advertise_host"] == info["addr"]
        pins = json.loads((run / "network.json").read_text())
        assert pins == {v: info["iface"] for v in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME")}


def test_decoy_comes_first_so_a_naive_pick_would_be_wrong(net: Net) -> None:
    topo = build(net, ["a"])
    listing = subprocess.run(["ip", "-n", topo["agents"]["a"]["ns"], "-o", "addr"], capture_output=True,
                             text=True, check=True).stdout
    private = [i for i in parse_ip_addr(listing) if i.kind is AddressKind.PRIVATE]
    assert [i.name for i in private] == ["decoy0", "eth-a"]


def test_host_with_only_a_public_address_refuses_to_start(cluster: Cluster, net: Net) -> None:
    ns = net.ns("p")
    decoy(ns, "pub0", "203.0.113.10/24")
    out = cluster.run("host", "--state-dir", str(cluster.tmp / "pub"), "--no-local-agent", prefix=netns(ns))
    assert out.returncode == 1
    assert "only public addresses (203.0.113.10 (pub0))" in out.stderr
    assert "not encrypted" in out.stderr or "neither encrypted" in out.stderr
    assert not (cluster.tmp / "pub" / "potluck.db").exists()
