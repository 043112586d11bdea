"""`potluck doctor` against a real host and real agents in network namespaces (tier 3).

Topology: the host runs in namespace H (no local agent); agents ``a`` and ``b`` run in A and
B, each joined to H by its own veth link. Both reach the host's address (H's address on the
A link; B routes to it via H). Whether A and B reach each other depends on H forwarding:
off, A has no route to B and B's packets to A are dropped by H: the data plane between two
healthy nodes is broken while their control plane works, exactly the case the doctor exists
for.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import PY, Lab, sh

pytestmark = pytest.mark.netns
POTLUCK = [PY, "-m", "potluck"]


class Cluster:
    def __init__(self, lab: Lab, tmp: Path, forward: bool) -> None:
        self.lab = lab
        self.h, self.a, self.b = lab.ns("H"), lab.ns("A"), lab.ns("B")
        self.addr_a_h, self.addr_a, _, self.if_a = lab.link(self.h, self.a)
        self.addr_b_h, self.addr_b, _, _ = lab.link(self.h, self.b)
        net_a = self.addr_a.rsplit(".", 1)[0] + ".0/24"
        net_b = self.addr_b.rsplit(".", 1)[0] + ".0/24"
        sh("ip", "-n", self.b, "route", "add", net_a, "via", self.addr_b_h)
        if forward:
            sh("ip", "netns", "exec", self.h, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh("ip", "-n", self.a, "route", "add", net_b, "via", self.addr_a_h)
        self.tmp = tmp
        self.state = tmp / "host"
        host = lab.spawn(self.h, *POTLUCK, "host", "--advertise", self.addr_a_h, "--port", "0",
                         "--lighthouse-port", "0", "--state-dir", str(self.state),
                         "--no-local-agent")
        self.host_proc = host
        info = _poll(lambda: _read_json(self.state / "host.json"), 60, "host.json")
        self.port = int(info["port"])
        self.token = (self.state / "token").read_text().strip()
        self.hostport = f"{self.addr_a_h}:{self.port}"
        for ns, name in ((self.a, "a"), (self.b, "b")):
            lab.spawn(ns, *POTLUCK, "join", "--yes", self.hostport, "--token", self.token, "--name", name,
                      "--state-dir", str(tmp / name))
        _poll(lambda: self._alive() >= {"a", "b"} or None, 60, "both agents alive")

    def cli(self, ns: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.lab.run(ns, *POTLUCK, *args, timeout=timeout)

    def _alive(self) -> set[str]:
        out = self.cli(self.h, "status", "--state-dir", str(self.state), "--json")
        if out.returncode != 0:
            return set()
        return {n["name"] for n in json.loads(out.stdout) if n["state"] == "alive"}

    def doctor_cluster(self) -> tuple[int, dict[str, Any]]:
        out = self.cli(self.h, "doctor", "--cluster", "--state-dir", str(self.state), "--json")
        assert out.stdout, out.stderr
        return out.returncode, json.loads(out.stdout)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _poll(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def _links(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(lk["source"], lk["target"]): lk for lk in report["links"]}


def test_broken_data_plane_between_agents_is_named_and_blocks_training(lab: Lab, tmp_path: Path) -> None:
    c = Cluster(lab, tmp_path, forward=False)
    code, report = c.doctor_cluster()
    links = _links(report)
    ab, ba = links[("a", "b")], links[("b", "a")]
    assert ab["status"] == "fail" and ab["error"] == "unreachable", ab
    assert "ip route get" in ab["fix"]["linux"]
    assert ba["status"] == "fail" and ba["error"] == "timeout", ba  # H drops, like a firewall
    assert c.addr_b in ba["fix"]["linux"]  # the fix names the peer to allow
    # The control plane and the nodes themselves are healthy.
    checks = {(ch["node"], ch["id"]): ch for ch in report["checks"]}
    for node in ("a", "b"):
        assert checks[(node, "versions")]["status"] == "ok"
        assert checks[(node, "address")]["status"] == "ok"
    assert all(ch["status"] == "ok" for (_, cid), ch in checks.items() if cid.startswith("host."))
    assert code == 1 and report["exit_code"] == 1

    # Pre-flight: `potluck train` refuses to start and names the pair and the fix.
    train = c.cli(c.a, "train", "--host", c.hostport, "--token", c.token, "--steps", "100",
                  "--json")
    assert train.returncode == 1, train.stdout + train.stderr
    line = train.stderr.strip()
    assert len(line.splitlines()) == 1 and "pre-flight check failed" in line
    assert ("a -> b" in line or "b -> a" in line) and "fix:" in line
    assert "1 more problem" in line  # both directions are broken
    jobs = c.cli(c.h, "jobs", "--state-dir", str(c.state), "--json")
    assert json.loads(jobs.stdout) == []  # no job was submitted


def test_healthy_cluster_is_green_and_links_land_in_status(lab: Lab, tmp_path: Path) -> None:
    c = Cluster(lab, tmp_path, forward=True)
    # A's egress is rate limited: a -> b is slow, b -> a is not.
    sh("ip", "netns", "exec", c.a, "tc", "qdisc", "add", "dev", c.if_a, "root", "tbf",
       "rate", "8mbit", "burst", "32kbit", "latency", "50ms")
    code, report = c.doctor_cluster()
    links = _links(report)
    ab, ba = links[("a", "b")], links[("b", "a")]
    assert ba["status"] == "ok" and ba["error"] is None, ba
    assert ab["status"] == "warn" and "slow link" in ab["summary"], ab
    assert ab["mbit_s"] * 5 < ba["mbit_s"]
    assert [c_ for c_ in report["checks"] if c_["status"] == "fail"] == []
    assert code == 0
    # Stored on the host (SQLite) and exposed by `potluck status --json`.
    status = json.loads(c.cli(c.h, "status", "--state-dir", str(c.state), "--json").stdout)
    by_name = {n["name"]: n for n in status}
    stored = by_name["a"]["links"]["b"]
    assert stored["mbit_s"] == ab["mbit_s"] and stored["rtt_ms"] == ab["rtt_ms"]
    assert by_name["b"]["links"]["a"]["status"] == "ok"


def test_wrong_token_version_mismatch_and_stopped_host(lab: Lab, tmp_path: Path) -> None:
    c = Cluster(lab, tmp_path, forward=False)

    def host_checks(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict]]:
        out = lab.run(c.a, *POTLUCK, "doctor", c.hostport, "--json", *args, env=env)
        data = json.loads(out.stdout)
        return out.returncode, {ch["id"]: ch for ch in data["checks"]}

    code, checks = host_checks("--token", "not-the-token-of-this-cluster")
    assert code == 1 and checks["host.token"]["status"] == "fail"
    assert "refused the token" in checks["host.token"]["summary"]
    assert "POTLUCK_TOKEN" in checks["host.token"]["fix"]["linux"]
    assert checks["host.coordinator"]["status"] == "ok"

    code, checks = host_checks("--token", c.token, env={"POTLUCK_FAKE_VERSION_TORCH": "2.99.0"})
    versions = checks["host.versions"]
    assert code == 1 and versions["status"] == "fail" and "torch 2.99.0 here" in versions["summary"]
    assert 'pip install "torch==' in versions["fix"]["linux"]
    assert checks["host.lighthouse"]["status"] == "ok" and checks["clock"]["status"] == "ok"

    c.host_proc.send_signal(signal.SIGTERM)
    c.host_proc.wait(timeout=30)
    code, checks = host_checks("--token", c.token)
    assert code == 1 and checks["host.coordinator"]["status"] == "fail"
    assert "connection refused" in checks["host.coordinator"]["summary"]
    assert "potluck host" in checks["host.coordinator"]["fix"]["linux"]
    assert checks["versions"]["status"] == "ok"  # node checks stay green
