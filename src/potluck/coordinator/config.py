"""Settings of one coordinator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from potluck.contracts import wire as s
from potluck.contracts.addressing import http_url


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
    heartbeat_interval_s: float = 1.0
    """How often agents heartbeat."""
    node_timeout_s: float = 6.0
    """A node silent for this long is marked lost."""

    @property
    def lighthouse(self) -> str:
        return http_url(self.advertise, self.lighthouse_port)
