"""Machines on emulated links: one network namespace per replica, rate-limited like a WAN.

The tests' and benchmarks' cluster for slow links (tests/cluster/test_slow_link.py,
benchmarks/slow_link.py). A host namespace holds a bridge and the Lighthouse; each member
namespace is joined to the bridge by a veth pair, and ``limit()`` puts a token bucket (``tc
qdisc ... tbf``) on every member's egress, so each machine sends at most that rate, as on a
home uplink::

    host ns: br0 .1, Lighthouse ─┬─ veth ── member 0: eth0 .2   (tbf on eth0's egress)
                                 ├─ veth ── member 1: eth0 .3
                                 └─ ...

Needs root and iproute2 (``ip netns``, ``tc``; netem is not required). Every namespace is
made here with a unique name, and ``close()`` deletes them (their veth ends with them);
traffic never leaves them.
"""

from __future__ import annotations

import itertools
import os
import random
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potluck.contracts.addressing import http_url
from potluck.contracts.errors import TrainingError
from potluck.contracts.jobspec import JobSpec
from potluck.launcher.local import LocalCluster

_names = itertools.count()

TBF_BURST = "32kbit"
TBF_LATENCY = "400ms"
"""The token bucket's burst and queue (400 ms of queue at the rate: a deep home-router buffer)."""


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise OSError(f"`ip {' '.join(args)}` failed: {out.stderr.strip()}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2), or None when they can."""
    probe = f"plprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` is not permitted here ({exc}); run as root with iproute2"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@dataclass(frozen=True)
class Member:
    ns: str
    addr: str
    iface: str
    """The member's end of its veth pair (where its egress is limited)."""


class Namespaces:
    """A host namespace with a bridge and ``members`` namespaces linked to it.

    ``with Namespaces(3) as net: net.limit(20)`` limits each member's egress to 20 Mbit/s;
    ``net.limit(None)`` removes the limit. Raises OSError when ``ip`` refuses (see
    :func:`unavailable`)."""

    def __init__(self, members: int) -> None:
        tag = f"{os.getpid() % 10000}{next(_names)}"
        subnet = f"10.{random.randrange(150, 200)}.{random.randrange(1, 250)}"
        self.created: list[str] = []
        try:
            self.host = self._ns(f"plsh{tag}")
            self.host_addr = f"{subnet}.1"
            _ip("-n", self.host, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.host, "addr", "add", f"{self.host_addr}/24", "dev", "br0")
            _ip("-n", self.host, "link", "set", "br0", "up")
            self.members: list[Member] = []
            for i in range(members):
                ns = self._ns(f"plsm{tag}x{i}")
                outer = f"vsl{tag}x{i}"[:15]
                _ip("-n", self.host, "link", "add", outer, "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
                _ip("-n", self.host, "link", "set", outer, "master", "br0")
                _ip("-n", self.host, "link", "set", outer, "up")
                addr = f"{subnet}.{i + 2}"
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                self.members.append(Member(ns, addr, "eth0"))
        except BaseException:
            self.close()
            raise
        self.rate_mbit: float | None = None

    def _ns(self, name: str) -> str:
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def limit(self, rate_mbit: float | None, members: tuple[int, ...] | None = None) -> None:
        """Limit every member's egress (or only that of ``members``, by index) to
        ``rate_mbit`` (None: unlimited, a veth's speed)."""
        for i, m in enumerate(self.members):
            if members is not None and i not in members:
                continue
            subprocess.run(["ip", "netns", "exec", m.ns, "tc", "qdisc", "del", "dev", m.iface, "root"],
                           capture_output=True, timeout=30)  # none yet: fine
            if rate_mbit is not None:
                out = subprocess.run(
                    ["ip", "netns", "exec", m.ns, "tc", "qdisc", "add", "dev", m.iface, "root", "tbf",
                     "rate", f"{rate_mbit:g}mbit", "burst", TBF_BURST, "latency", TBF_LATENCY],
                    capture_output=True, text=True, timeout=30)
                if out.returncode != 0:
                    raise OSError(f"tc tbf on {m.ns}: {out.stderr.strip()}")
        self.rate_mbit = rate_mbit

    @staticmethod
    def prefix(ns: str) -> list[str]:
        """Run a command inside ``ns`` (``ip netns exec`` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", ns]

    def close(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.created.clear()

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LIGHTHOUSE = (
    "import sys\n"
    "from potluck.trainer.ft import lighthouse_port, start_lighthouse\n"
    "server = start_lighthouse(sys.argv[1], 0, min_replicas=1)\n"
    "print(lighthouse_port(server), flush=True)\n"
    "sys.stdin.read()\n"  # serve until the parent closes our stdin (or dies)
    "server.shutdown()\n"
)


class LighthouseProcess:
    """A torchft Lighthouse in its own process inside namespace ``ns``, bound to ``host``."""

    def __init__(self, ns: str, host: str, timeout: float = 60.0) -> None:
        self.host = host
        self.proc = subprocess.Popen([*Namespaces.prefix(ns), sys.executable, "-c", _LIGHTHOUSE, host],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while not line and time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline().strip()
                break
            if self.proc.poll() is not None:
                break
        if not line.isdigit():
            self.shutdown()
            raise TrainingError(f"the Lighthouse in namespace {ns} did not start (said {line!r})")
        self.port = int(line)

    def address(self) -> str:
        return http_url(self.host, self.port)

    def shutdown(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class NetnsCluster(LocalCluster):
    """:class:`LocalCluster` with replica ``slot`` in ``net.members[slot]``'s namespace and the
    Lighthouse in the host namespace: every collective crosses the (limited) veth links."""

    def __init__(self, job: JobSpec, speeds: list[float], run_dir: str | Path, net: Namespaces,
                 **kwargs: Any) -> None:
        if len(speeds) > len(net.members):
            raise ValueError(f"{len(speeds)} replicas but only {len(net.members)} namespaces")
        super().__init__(job, speeds, run_dir, host=net.host_addr, **kwargs)
        self.net = net

    def advertise(self, slot: int) -> str:
        return self.net.members[slot].addr

    def prefix(self, slot: int) -> list[str]:
        return self.net.prefix(self.net.members[slot].ns)

    def _start_lighthouse(self) -> Any:
        return LighthouseProcess(self.net.host, self.net.host_addr)
