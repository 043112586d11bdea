"""Tier 3: every TCP listener of a running replica is on the chosen address or loopback.

Read like ``ss -ltnp``: LISTEN sockets from /proc/net/tcp and /proc/net/tcp6, matched to the
replica processes through the socket inodes in /proc/<pid>/fd. A wildcard listener (0.0.0.0
or ::, what torchft and torch use by default) fails the test.
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest

from potluck.contracts.jobspec import JobSpec
from potluck.launcher import LocalCluster

CHOSEN = "127.0.0.2"  # not 127.0.0.1, so that "bound to the chosen address" is visible
LOOPBACK = {"127.0.0.1", "::1"}


def _hex_ip(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc writes an IPv6 address as four host-order 32-bit words
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped or addr)


def listeners() -> dict[int, tuple[str, int]]:
    """``{inode: (ip, port)}`` of every TCP socket in LISTEN state on this machine."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            ip, port = fields[1].split(":")
            out[int(fields[9])] = (_hex_ip(ip), int(port, 16))
    return out


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_replica_listeners_bind_the_chosen_address_only(tmp_path: Path) -> None:
    job = JobSpec.parse({"steps": 60, "global_batch": 32, "policy": "equal",
                         "emulation": {"sample_s": 5e-3}})
    before = socket_inodes(os.getpid())  # earlier tests in this process may leave sockets
    with LocalCluster(job, [1.0, 1.0], tmp_path / "run", host=CHOSEN) as cluster:
        deadline = time.monotonic() + 120
        while not any(r["type"] == "step" and r["committed"] and r["step"] >= 3
                      for r in cluster.records(1)):
            assert time.monotonic() < deadline, "replicas did not train"
            time.sleep(0.1)
        table = listeners()
        found = {slot: [table[i] for i in socket_inodes(p.pid) if i in table]
                 for slot, p in cluster.procs.items()}
        host = [table[i] for i in socket_inodes(os.getpid()) - before if i in table]
        codes = cluster.wait(240)
    assert codes == {0: 0, 1: 0}
    for slot, socks in found.items():
        # torchft's Manager gRPC server, the TCPStore, the checkpoint server, gloo's listener
        assert len(socks) >= 4, f"replica {slot} listens on {socks}: expected its four servers"
        stray = [s for s in socks if s[0] != CHOSEN and s[0] not in LOOPBACK]
        assert not stray, f"replica {slot} listens beyond {CHOSEN} and loopback: {stray}"
        assert any(ip == CHOSEN for ip, _ in socks)
    # The test process hosts the Lighthouse: the real one on loopback, the guard on CHOSEN.
    assert host and all(ip == CHOSEN or ip in LOOPBACK for ip, _ in host), host
