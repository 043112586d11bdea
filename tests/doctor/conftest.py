"""Fixtures for the doctor tests: real network namespaces, veth links, processes inside them.

Every namespace and link is created by the test that uses it, with a unique name, and removed
at teardown even when the test fails (deleting a namespace deletes its veth ends too).
Addresses are in 10.240.0.0/12 inside those namespaces only; nothing leaves the machine.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

PY = sys.executable
_counter = itertools.count()


def netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


needs_netns = pytest.mark.skipif(not netns_available(), reason="needs root and iproute2")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


@dataclass
class Lab:
    """Namespaces and veth links of one test; ``close()`` removes them all."""

    prefix: str
    subnet_base: int = field(default_factory=lambda: random.randint(0, 15 * 256 - 1))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    _links: int = 0

    def ns(self, name: str) -> str:
        full = f"{self.prefix}{name}"
        sh("ip", "netns", "add", full)
        self.namespaces.append(full)
        sh("ip", "-n", full, "link", "set", "lo", "up")
        return full

    def link(self, a: str, b: str) -> tuple[str, str, str, str]:
        """A veth pair between namespaces a and b on a fresh /24.

        Returns (a's address, b's address, a's interface, b's interface).
        """
        index = self._links
        self._links += 1
        net = self.subnet_base + index
        octet2, octet3 = 240 + net // 256, net % 256
        ia, ib = f"{self.prefix}a{index}", f"{self.prefix}b{index}"
        sh("ip", "link", "add", ia, "type", "veth", "peer", "name", ib)
        sh("ip", "link", "set", ia, "netns", a)
        sh("ip", "link", "set", ib, "netns", b)
        addr_a, addr_b = f"10.{octet2}.{octet3}.1", f"10.{octet2}.{octet3}.2"
        sh("ip", "-n", a, "addr", "add", f"{addr_a}/24", "dev", ia)
        sh("ip", "-n", b, "addr", "add", f"{addr_b}/24", "dev", ib)
        sh("ip", "-n", a, "link", "set", ia, "up")
        sh("ip", "-n", b, "link", "set", ib, "up")
        return addr_a, addr_b, ia, ib

    def run(self, ns: str, *argv: str, timeout: float = 60, env: dict[str, str] | None = None,
            unshare_mount: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``ns``; with ``unshare_mount`` (a shell snippet) in a private
        mount namespace first (for bind-mounting a hosts file)."""
        cmd = ["ip", "netns", "exec", ns]
        if unshare_mount is not None:
            quoted = " ".join(_quote(a) for a in argv)
            cmd += ["unshare", "-m", "sh", "-c", f"{unshare_mount} && exec {quoted}"]
        else:
            cmd += list(argv)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        return proc

    def listener(self, ns: str, host: str, ttl: float = 60, clock_offset: float = 0.0) -> int:
        """Start ``python -m potluck.net.probe serve`` in ``ns``; return its port."""
        proc = self.spawn(ns, PY, "-m", "potluck.net.probe", "serve", "--host", host,
                          "--ttl", str(ttl), "--clock-offset", str(clock_offset))
        line = read_line(proc, timeout=20)
        assert line.startswith("PORT "), line
        return int(line.split()[1])

    def probe(self, ns: str, host: str, port: int, **settings: object) -> dict:
        """Run ``python -m potluck.net.probe link`` in ``ns``; the LinkProbe as a dict."""
        result = self.run(ns, PY, "-m", "potluck.net.probe", "link", host, str(port),
                          "--settings", json.dumps(settings))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of the process's stdout, polling up to ``timeout`` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            return proc.stdout.readline().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before printing a line")
    raise TimeoutError("no line from the process in time")


@pytest.fixture
def lab() -> Iterator[Lab]:
    if not netns_available():
        pytest.skip("needs root and iproute2 for network namespaces")
    lab = Lab(prefix=f"pd{os.getpid() % 10000}{next(_counter)}")
    try:
        yield lab
    finally:
        lab.close()
