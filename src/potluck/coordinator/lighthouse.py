"""The cluster's torchft Lighthouse, run inside the host process.

Importing torchft imports torch (seconds on a small machine), so the import happens here, once,
when the host starts, never on the API's request path.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from potluck.errors import PortInUseError


@dataclass(kw_only=True)
class LighthouseSettings:
    """How the Lighthouse forms quorums."""

    min_replicas: int = 1
    """Smallest group that may train (1: a single survivor keeps going)."""
    join_timeout_ms: int = 2000
    """How long a forming quorum waits for known replicas that have not asked yet."""
    heartbeat_timeout_ms: int = 5000
    """A replica silent this long is dropped from the next quorum."""


def check_port_free(address: str, port: int, what: str, flag: str) -> None:
    """Raise PortInUseError if ``address:port`` (TCP) cannot be bound now."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            raise PortInUseError(
                f"{what} port {port} on {address} is already in use ({exc.strerror}): is another "
                f"`potluck host` running? Stop it, or pass {flag} with a free port"
            ) from exc


class Lighthouse:
    """A running torchft ``LighthouseServer`` bound to one address."""

    def __init__(self, address: str, port: int, settings: LighthouseSettings) -> None:
        check_port_free(address, port, "lighthouse", "--lighthouse-port")
        # torchft's Rust side logs every quorum tick at INFO; keep the host's terminal readable.
        os.environ.setdefault("RUST_LOG", "warn")
        from torchft.coordination import LighthouseServer  # heavy: imports torch

        bind = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        try:
            self._server: Any = LighthouseServer(
                bind=bind,
                min_replicas=settings.min_replicas,
                join_timeout_ms=settings.join_timeout_ms,
                heartbeat_timeout_ms=settings.heartbeat_timeout_ms,
            )
        except Exception as exc:  # the Rust side raises a plain RuntimeError
            raise PortInUseError(
                f"cannot start the torchft lighthouse on {bind} ({exc}): pass --lighthouse-port "
                "with a free port"
            ) from exc
        match = re.search(r":(\d+)/?$", self._server.address())
        self.port = int(match[1]) if match else port

    def shutdown(self) -> None:
        self._server.shutdown()
