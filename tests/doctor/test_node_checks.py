"""Node-local checks run for real: the `potluck doctor` command in namespaces and subprocesses.

The hostname fault is real: inside a network namespace with a veth address, a private mount
namespace bind-mounts a hosts file over /etc/hosts that maps this machine's hostname to
127.0.1.1 (the Debian/Ubuntu default that breaks gloo). The healthy variant maps it to the
namespace's address. Open-files and disk problems are real limits and a real tiny tmpfs.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from potluck.doctor import local
from potluck.doctor.node import NodeOptions, check_node
from potluck.doctor.report import Status

from .conftest import PY, Lab

DOCTOR = [PY, "-m", "potluck", "doctor"]


def _doctor_in_ns(lab: Lab, ns: str, host_arg: str, hosts_text: str, tmp_path: Path,
                  state: Path) -> tuple[int, dict]:
    hosts = tmp_path / "hosts"
    hosts.write_text(hosts_text)
    result = lab.run(ns, *DOCTOR, host_arg, "--json", "--state-dir", str(state),
                     "--experiments-dir", str(tmp_path / "exp"),
                     unshare_mount=f"mount --bind {hosts} /etc/hosts",
                     env={"POTLUCK_LOG_LEVEL": "ERROR"})
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def _by_id(report: dict) -> dict[str, dict]:
    return {c["id"]: c for c in report["checks"]}


@pytest.mark.netns
def test_hostname_resolving_to_loopback_is_the_gloo_failure(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.ns("A"), lab.ns("B")
    addr_a, addr_b, ia, _ = lab.link(a, b)
    hostname = socket.gethostname()
    hosts = f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n{addr_b} peer\n"
    code, report = _doctor_in_ns(lab, a, addr_b, hosts, tmp_path, tmp_path / "state")
    checks = _by_id(report)
    bad = checks["hostname"]
    # potluck's agent pins its replicas to the interface (GLOO_SOCKET_IFNAME), so this is a
    # warning for potluck jobs; the FAIL variant (nothing to pin) is checked below.
    assert bad["status"] == "warn", bad
    assert f"pins its replicas to {ia}" in bad["summary"]
    assert "127.0.1.1" in bad["summary"] and "connectFullMesh" in bad["summary"]
    assert "/etc/hosts:2" in bad["summary"]  # points at the offending line
    assert f"map {hostname} to {addr_a}" in bad["fix"]["linux"]
    assert f"GLOO_SOCKET_IFNAME={ia}" in bad["fix"]["linux"]
    assert "drivers\\etc\\hosts" in bad["fix"]["windows"]
    # The healthy checks stay green; a warning alone does not fail the command.
    assert checks["address"]["status"] == "ok"
    assert checks["address"]["data"] == {"address": addr_a, "interface": ia, "kind": "private",
                                         "reason": f"route to {addr_b} goes via {ia}"}
    assert checks["versions"]["status"] == "ok" and checks["cuda"]["status"] == "ok"
    # Only the host check fails (no `potluck host` runs at that address in this test).
    assert [c["id"] for c in report["checks"] if c["status"] == "fail"] == ["host.coordinator"]
    # Without an interface to pin, the same resolution is a failure of the data plane.
    pinned_off = lab.run(a, PY, "-c", (
        "from potluck.doctor.network import check_hostname;import json;"
        f"print(json.dumps(check_hostname('n', data_plane='{addr_a}').to_dict()))"),
        unshare_mount=f"mount --bind {tmp_path / 'hosts'} /etc/hosts")
    unpinned = json.loads(pinned_off.stdout)
    assert unpinned["status"] == "fail" and "/etc/hosts:2" in unpinned["summary"]


@pytest.mark.netns
def test_hostname_mapped_to_data_plane_address_is_green(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.ns("A"), lab.ns("B")
    addr_a, addr_b, _, _ = lab.link(a, b)
    hosts = f"127.0.0.1 localhost\n{addr_a} {socket.gethostname()}\n"
    code, report = _doctor_in_ns(lab, a, addr_b, hosts, tmp_path, tmp_path / "state")
    checks = _by_id(report)
    assert checks["hostname"]["status"] == "ok"
    assert checks["hostname"]["data"]["resolves_to"] == addr_a
    failed = [c["id"] for c in report["checks"] if c["status"] == "fail"]
    assert failed == ["host.coordinator"]  # no host runs there; every node check is green


@pytest.mark.netns
def test_host_without_route_fails_address_check(lab: Lab, tmp_path: Path) -> None:
    a = lab.ns("A")  # only loopback: no route anywhere
    hosts = f"127.0.0.1 localhost\n10.250.0.9 {socket.gethostname()}\n"
    code, report = _doctor_in_ns(lab, a, "10.250.1.1:7077", hosts, tmp_path, tmp_path / "state")
    check = _by_id(report)["address"]
    assert check["status"] == "fail" and "no network route" in check["summary"]
    assert "ip route get" in check["fix"]["linux"]
    assert code == 1


@pytest.mark.netns
def test_vpn_host_without_vpn_here_says_connect_the_vpn(lab: Lab, tmp_path: Path) -> None:
    # The host is a Tailscale (100.64/10) address, reachable only through a default route on
    # a LAN link: the route exists, but this node's VPN is not up.
    a, b = lab.ns("A"), lab.ns("B")
    _, addr_b, ia, _ = lab.link(a, b)
    subprocess.run(["ip", "-n", a, "route", "add", "default", "via", addr_b], check=True)
    hosts = f"127.0.0.1 localhost\n10.250.0.9 {socket.gethostname()}\n"
    code, report = _doctor_in_ns(lab, a, "100.101.1.2:7077", hosts, tmp_path, tmp_path / "state")
    check = _by_id(report)["address"]
    assert check["status"] == "fail", check
    assert "VPN" in check["summary"] and "tailscale up" in check["fix"]["linux"]
    assert "Tailscale" in check["fix"]["windows"]


def test_open_files_below_65536_warns_with_per_os_fix(tmp_path: Path) -> None:
    code = (
        "from potluck.doctor.local import check_open_files;"
        "import json;print(json.dumps(check_open_files('n').to_dict()))"
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         preexec_fn=limit, timeout=30, check=True)
    check = json.loads(out.stdout)
    assert check["status"] == "warn" and "1024" in check["summary"]
    assert "ulimit -n 65536" in check["fix"]["linux"]
    assert "launchctl limit maxfiles" in check["fix"]["macos"]
    assert check["data"]["soft"] == 1024
    # With the limit at the minimum, it is green.
    ok = local.check_open_files("n", minimum=min(soft, hard) if soft > 0 else 1)
    assert ok.status is Status.OK


@pytest.mark.netns
def test_tiny_and_read_only_disks_fail(lab: Lab, tmp_path: Path) -> None:
    ns = lab.ns("A")
    tiny, ro = tmp_path / "tiny", tmp_path / "ro"
    tiny.mkdir()
    ro.mkdir()
    mounts = (f"mount -t tmpfs -o size=1m tmpfs {tiny} && "
              f"mount -t tmpfs -o size=64m,ro tmpfs {ro}")
    result = lab.run(ns, *DOCTOR, "--json", "--state-dir", str(tiny / "state"),
                     "--experiments-dir", str(ro / "exp"), unshare_mount=mounts)
    checks = _by_id(json.loads(result.stdout))
    state, exp = checks["disk.state"], checks["disk.experiments"]
    assert state["status"] == "fail" and "GiB free" in state["summary"], state
    assert state["data"]["free_gib"] < 0.01
    assert exp["status"] == "fail" and "not writable" in exp["summary"], exp
    assert "chown" in exp["fix"]["linux"] and "Security" in exp["fix"]["windows"]
    assert result.returncode == 1


def test_local_report_on_this_machine_has_every_check(tmp_path: Path) -> None:
    report = check_node(NodeOptions(name="me", state_dir=tmp_path / "s",
                                    experiments_dir=tmp_path / "e"))
    ids = [c.id for c in report.checks]
    assert ids == ["versions", "cuda", "address", "hostname", "open_files", "disk.state",
                   "disk.experiments"]
    assert all(c.node == "me" for c in report.checks)
    for check in report.checks:
        if check.status is not Status.OK:
            assert check.fix is not None, check
    cuda = report.find("cuda")
    assert cuda is not None and cuda.status is Status.OK  # CPU-only is fine; GPU runs a kernel


def test_bad_host_argument_is_exit_2_one_line() -> None:
    result = subprocess.run([*DOCTOR, "10.0.0.1:99999"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "bad port" in result.stderr
