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
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import wait_until

from conftest import Cluster
from potluck.net.address import AddressKind, parse_ip_addr

pytestmark = pytest.mark.netns
JOBS = Path(__file__).parent.parent / "jobs"


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

    # A user's job folder (job file, helper module, data file, a requirement) is shipped to
    # the agents in their namespaces, trains there, and its model comes back.
    folder = cluster.tmp / "myjob"
    folder.mkdir()
    for f in ("chargpt.py", "helpers.py", "corpus.txt"):
        shutil.copy(JOBS / f, folder / f)
    yaml.write_text("fault: {step_timeout_s: 8}\nrequirements: ['numpy>=1.20']\n")
    out = cluster.cli("train", str(folder / "chargpt.py"), "--steps", "4", "--config", str(yaml),
                      "--json", prefix=in_host, timeout=150)
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout)
    assert summary["state"] == "succeeded" and summary["nodes"] == ["a", "b"] and summary["model"]
    for name in topo["agents"]:
        (bundle,) = [p for p in (cluster.tmp / f"agent-{name}" / "bundles").iterdir() if not p.name.startswith(".")]
        assert (bundle / "helpers.py").is_file() and (bundle / "corpus.txt").is_file()
    pulled = cluster.cli("pull", str(summary["job_id"]), str(cluster.tmp / "m.safetensors"), prefix=in_host)
    assert pulled.returncode == 0, pulled.stderr
    assert (cluster.tmp / "m.safetensors").stat().st_size > 10_000


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


def build_v6(net: Net, agents: list[str]) -> dict[str, Any]:
    """An "ordinary machine" host: its only IPv4 is outside RFC 1918 (192.0.2.x, TEST-NET-1)
    plus an IPv6 unique-local address; agents have IPv6 only (and loopback)."""
    prefix = f"fd77:{random.randrange(0x1000, 0xffff):x}:{random.randrange(1, 0xffff):x}"
    host = net.ns("h")
    ip("link", "add", "br0", "type", "bridge", ns=host)
    ip("addr", "add", "192.0.2.10/24", "dev", "br0", ns=host)
    ip("addr", "add", f"{prefix}::1/64", "dev", "br0", "nodad", ns=host)
    ip("link", "set", "br0", "up", ns=host)
    out: dict[str, Any] = {"host": host, "host_addr": f"{prefix}::1", "agents": {}}
    for i, name in enumerate(agents, start=2):
        ns = net.ns(name)
        outer, inner = f"v{name}{net.tag}"[:15], f"eth-{name}"
        ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns, ns=host)
        ip("link", "set", outer, "master", "br0", ns=host)
        ip("link", "set", outer, "up", ns=host)
        ip("addr", "add", f"{prefix}::{i}/64", "dev", inner, "nodad", ns=ns)
        ip("link", "set", inner, "up", ns=ns)
        out["agents"][name] = {"ns": ns, "addr": f"{prefix}::{i}", "iface": inner}
    return out


LOOPBACK_GET = (
    "import http.client, sys\n"
    "c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]), timeout=5)\n"
    "c.request('GET', '/api/v1/info', headers={'Authorization': 'Bearer ' + sys.argv[2]})\n"
    "print(c.getresponse().status)\n"
)


def test_public_ipv4_plus_ula_host_trains_over_ipv6_end_to_end(cluster: Cluster, net: Net) -> None:
    """No flag names an address: the host skips its public IPv4 and says so, advertises the
    IPv6 ULA, still answers on 127.0.0.1, and a whole job runs over IPv6 (join line, URLs,
    Lighthouse, torchft managers, stores, gloo)."""
    topo = build_v6(net, ["b"])
    in_host = netns(topo["host"])
    host = cluster.start_host("", "--name", "a", "--emulate-speed", "1.0", local_agent=True, prefix=in_host)
    assert host["advertise"] == topo["host_addr"]
    assert host["url"] == f"http://[{topo['host_addr']}]:{host['port']}"
    # the banner follows host.json (a script may read --json's line and go on at once)
    wait_until(lambda: "Ctrl-C stops the host" in host["proc"].log.read_text(), 30, "the banner")
    said = host["proc"].log.read_text()
    assert "192.0.2.10" in said and "public" in said, said  # the reason names what it skipped

    # The host's own machine reaches the coordinator on loopback.
    out = subprocess.run([*in_host, sys.executable, "-c", LOOPBACK_GET, str(host["port"]), host["token"]],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "200", out.stderr

    b = topo["agents"]["b"]
    cluster.start_agent(host, "b", None, 0.5, prefix=netns(b["ns"]), target=f"[{topo['host_addr']}]:{host['port']}")
    wait_until(lambda: len(cluster.nodes(prefix=in_host)) == 2, 60, "both nodes to join")
    nodes = cluster.nodes(prefix=in_host)
    assert nodes["b"]["address"] == b["addr"] and nodes["a"]["address"] == topo["host_addr"]

    yaml = cluster.tmp / "job.yaml"
    yaml.write_text("emulation: {sample_s: 0.0003}\nfault: {step_timeout_s: 8}\n")
    out = subprocess.run([*in_host, sys.executable, "-m", "potluck", "train", "--steps", "20",
                          "--global-batch", "128", "--config", str(yaml), "--json",
                          "--state-dir", str(cluster.host_dir)],
                         capture_output=True, text=True, timeout=150, env=cluster.env())
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout)
    assert summary["state"] == "succeeded" and sorted(summary["nodes"]) == ["a", "b"], summary
    run = next((cluster.tmp / "agent-b" / "runs").glob("job-*/attempt-*"))
    spec = json.loads((run / "spec.json").read_text())
    assert spec["advertise_host"] == b["addr"]
    assert spec["lighthouse"] == f"http://[{topo['host_addr']}]:{host['lighthouse_port']}"


def test_tailscale_like_vpn_wins_over_the_lan_without_flags(cluster: Cluster, net: Net) -> None:
    """Host and friend share a LAN (the host's default route) and a Tailscale-like link
    (``tailscale0``, 100.64.0.0/10). Without flags the host advertises the VPN address and
    the friend's agent reaches it over ``tailscale0``."""
    host_ns, friend_ns = net.ns("h"), net.ns("f")
    lan = f"192.168.{random.randrange(10, 250)}"
    vpn = f"100.{random.randrange(64, 127)}.{random.randrange(1, 250)}"
    for (a, b, a_addr, b_addr) in (("eth0", "eth0", f"{lan}.1/24", f"{lan}.2/24"),
                                   ("tailscale0", "tailscale0", f"{vpn}.1/24", f"{vpn}.2/24")):
        ip("link", "add", a, "type", "veth", "peer", "name", f"{b}x", "netns", friend_ns, ns=host_ns)
        ip("link", "set", f"{b}x", "name", b, ns=friend_ns)
        ip("addr", "add", a_addr, "dev", a, ns=host_ns)
        ip("addr", "add", b_addr, "dev", b, ns=friend_ns)
        for ns, name in ((host_ns, a), (friend_ns, b)):
            ip("link", "set", name, "up", ns=ns)
    ip("route", "add", "default", "via", f"{lan}.2", ns=host_ns)

    host = cluster.start_host("", prefix=netns(host_ns))
    assert host["advertise"] == f"{vpn}.1"
    wait_until(lambda: "VPN address on tailscale0" in host["proc"].log.read_text(), 20,
               "the host to say why it chose the VPN address")
    cluster.start_agent(host, "f", None, prefix=netns(friend_ns))
    wait_until(lambda: "f" in cluster.nodes(prefix=netns(host_ns)), 60, "the friend to join")
    node = cluster.nodes(prefix=netns(host_ns))["f"]
    assert (node["address"], node["interface"]) == (f"{vpn}.2", "tailscale0")


def test_joining_a_vpn_host_with_the_vpn_down_says_the_vpn_is_down(cluster: Cluster, net: Net) -> None:
    """A friend whose Tailscale is down joins the host's 100.x address: the error names the
    VPN (and how to bring it up), not only a firewall; with no route at all, the same."""
    friend = net.ns("v")
    lan = f"192.168.{random.randrange(10, 250)}"
    # A LAN whose gateway never answers: like a home router asked for 100.64.0.0/10.
    decoy(friend, "eth0", f"{lan}.2/24")
    ip("route", "add", "default", "via", f"{lan}.1", ns=friend)
    target = f"100.{random.randrange(64, 127)}.{random.randrange(1, 250)}.1:7077"
    args = ("join", "--yes", target, "--state-dir", str(cluster.tmp / "agent-v"))
    out = cluster.run(*args, prefix=netns(friend), POTLUCK_TOKEN="t" * 16)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, out.stderr
    assert "is the VPN up on this machine?" in lines[0] and f"via eth0 ({lan}.2)" in lines[0], lines
    assert "tailscale up" in lines[0]

    ip("route", "del", "default", ns=friend)
    out = cluster.run(*args, prefix=netns(friend), POTLUCK_TOKEN="t" * 16)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, out.stderr
    assert "has no route to it: is the VPN up on this machine?" in lines[0], lines
