"""What ``potluck doctor`` found: checks grouped by node, links between nodes, an exit code.

Plain dataclasses inside the process; :meth:`Report.to_dict` is the ``--json`` schema:

.. code-block:: text

    {"ok": bool, "exit_code": 0|1, "counts": {"ok": n, "warn": n, "fail": n},
     "checks": [{"id", "node", "status", "summary", "fix": {"linux", "macos", "windows"}|null,
                 "data": {...}}],
     "links": [{"source", "target", "address", "status", "summary", "rtt_ms", "mbit_s",
                "largest_message", "error"}]}
"""

from __future__ import annotations

import enum
import platform
from dataclasses import dataclass, field
from typing import Any


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, kw_only=True)
class Fix:
    """How to fix a problem, per operating system. ``all`` is used where one is not given."""

    all: str = ""
    linux: str = ""
    macos: str = ""
    windows: str = ""

    def for_os(self, system: str) -> str:
        """The fix for ``system`` (``linux``, ``macos``, ``windows``)."""
        return getattr(self, system, "") or self.all

    def per_os(self) -> dict[str, str]:
        """``{"linux": ..., "macos": ..., "windows": ...}``, every key filled."""
        return {name: self.for_os(name) for name in ("linux", "macos", "windows")}


@dataclass(kw_only=True)
class Check:
    """One finding on one node."""

    id: str
    """Stable identifier, e.g. ``open_files``, ``host.token``; see docs/doctor.md."""
    node: str
    """Node the finding is about (its name, or this machine's hostname)."""
    status: Status
    summary: str
    """One line: what was found and what it means."""
    fix: Fix | None = None
    """Set for every WARN and FAIL."""
    data: dict[str, Any] = field(default_factory=dict)
    """Measured values, for ``--json``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "status": self.status.value,
            "summary": self.summary,
            "fix": self.fix.per_os() if self.fix else None,
            "data": self.data,
        }


@dataclass(kw_only=True)
class Link:
    """One direction of one pair: can ``source`` reach ``target``'s data-plane address."""

    source: str
    target: str
    address: str
    """``host:port`` of the probe listener on ``target``."""
    status: Status
    summary: str
    fix: Fix | None = None
    rtt_ms: float | None = None
    mbit_s: float | None = None
    largest_message: int | None = None
    """Largest large-message size that arrived whole."""
    error: str | None = None
    """``refused`` / ``timeout`` / ``unreachable`` / ``stall`` / ``error`` when it failed."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "address": self.address,
            "status": self.status.value,
            "summary": self.summary,
            "fix": self.fix.per_os() if self.fix else None,
            "rtt_ms": self.rtt_ms,
            "mbit_s": self.mbit_s,
            "largest_message": self.largest_message,
            "error": self.error,
        }


@dataclass(kw_only=True)
class Report:
    checks: list[Check] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def extend(self, other: Report) -> None:
        self.checks.extend(other.checks)
        self.links.extend(other.links)

    @property
    def nodes(self) -> list[str]:
        """Node names in the order they first appear."""
        seen: dict[str, None] = {}
        for check in self.checks:
            seen.setdefault(check.node, None)
        for link in self.links:
            seen.setdefault(link.source, None)
            seen.setdefault(link.target, None)
        return list(seen)

    def statuses(self) -> list[Status]:
        return [c.status for c in self.checks] + [link.status for link in self.links]

    @property
    def failed(self) -> bool:
        return Status.FAIL in self.statuses()

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (warnings allowed), 1 when something failed."""
        return 1 if self.failed else 0

    def problems(self) -> list[Check | Link]:
        """Every WARN and FAIL, failures first."""
        items: list[Check | Link] = [*self.checks, *self.links]
        bad = [i for i in items if i.status is not Status.OK]
        return sorted(bad, key=lambda i: i.status is not Status.FAIL)

    def find(self, check_id: str, node: str | None = None) -> Check | None:
        """The first check with this id (on this node), or None."""
        for check in self.checks:
            if check.id == check_id and (node is None or check.node == node):
                return check
        return None

    def link(self, source: str, target: str) -> Link | None:
        for link in self.links:
            if link.source == source and link.target == target:
                return link
        return None

    def to_dict(self) -> dict[str, Any]:
        statuses = self.statuses()
        return {
            "ok": not self.failed,
            "exit_code": self.exit_code,
            "counts": {s.value: statuses.count(s) for s in Status},
            "checks": [c.to_dict() for c in self.checks],
            "links": [link.to_dict() for link in self.links],
        }


def this_os() -> str:
    """``linux``, ``macos`` or ``windows`` (anything else counts as linux)."""
    system = platform.system()
    return {"Darwin": "macos", "Windows": "windows"}.get(system, "linux")
