"""Settings of one coordinator."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from potluck.contracts import wire as s
from potluck.contracts.addressing import http_url
from potluck.contracts.errors import ConfigError

TIMEOUTS_ENV = "POTLUCK_HOST_TIMEOUTS"
"""Overrides of :class:`Timeouts` for ``potluck host``: ``name=seconds`` pairs separated by
commas (``node_timeout_s=3,orphan_grace_s=2``). Meant for tests and experiments that cannot
wait the defaults out; docs/cluster.md."""


@dataclass(kw_only=True, frozen=True)
class Timeouts:
    """How long the coordinator waits on nodes and jobs. The defaults suit real clusters; a
    test shortens them through ``POTLUCK_HOST_TIMEOUTS`` (:meth:`from_env`)."""

    heartbeat_interval_s: float = 1.0
    """How often agents heartbeat (they are told so when they register)."""
    node_timeout_s: float = 6.0
    """A node silent for this long is marked lost (unless its replica still commits steps)."""
    housekeeping_interval_s: float = 1.0
    """How often the host marks silent nodes lost, ends finished jobs and starts queued ones."""
    straggler_grace_s: float = 60.0
    """After the first replica finishes, how long the others get to finish before the job ends."""
    barrier_timeout_s: float = 90.0
    """The first step starts when every first replica is ready, or after this long anyway."""
    orphan_timeout_s: float = 120.0
    """A running job with no active replica for this long fails (every node lost for good)."""
    orphan_grace_s: float = 20.0
    """... or for this long when none of its nodes is lost (they left, failed or were
    forgotten); a restarted host's own agent rejoins within it."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{f.name} must be a positive number of seconds, got {value!r}")
        if self.node_timeout_s < 2 * self.heartbeat_interval_s:
            raise ConfigError(f"node_timeout_s must be at least twice heartbeat_interval_s "
                              f"({self.heartbeat_interval_s:g} s), got {self.node_timeout_s:g}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Timeouts:
        """The defaults with ``POTLUCK_HOST_TIMEOUTS``'s overrides. Raises ConfigError naming
        an unknown setting or a bad value."""
        raw = environ.get(TIMEOUTS_ENV, "").strip()
        if not raw:
            return cls()
        names = {f.name for f in fields(cls)}
        overrides: dict[str, float] = {}
        for item in raw.split(","):
            name, sep, value = (part.strip() for part in item.partition("="))
            if not sep or name not in names:
                raise ConfigError(f"{TIMEOUTS_ENV}: {item.strip()!r} is not NAME=SECONDS with NAME one "
                                  f"of {', '.join(sorted(names))}")
            try:
                overrides[name] = float(value)
            except ValueError:
                raise ConfigError(f"{TIMEOUTS_ENV}: {name} must be a number of seconds, got "
                                  f"{value!r}") from None
        try:
            return replace(cls(), **overrides)
        except ConfigError as exc:
            raise ConfigError(f"{TIMEOUTS_ENV}: {exc}") from None


@dataclass(kw_only=True)
class CoordinatorConfig:
    """Settings of one coordinator."""

    state_dir: Path
    """Holds ``potluck.db``, ``token``, ``host.json`` and ``experiments/``."""
    advertise: str
    """Address agents and replicas use to reach the host."""
    port: int
    """HTTP API port."""
    lighthouse_port: int
    """torchft Lighthouse port."""
    versions: s.Versions
    """The host's versions; joining nodes must match them."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """Heartbeats, lost nodes and the waits of a job's life cycle."""

    @property
    def lighthouse(self) -> str:
        return http_url(self.advertise, self.lighthouse_port)
