"""The cluster's torchft Lighthouse, run inside the host process.

It is torchft's native module, loaded without torchft's Python package (which imports torch:
seconds on a small machine and 200 MB): the host process never imports torch
(``trainer/ft.py`` ``native``).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any

from potluck.contracts.errors import ClusterError, NetworkConfigError, PortInUseError
from potluck.trainer.ft import JOIN_TIMEOUT_S


@dataclass(kw_only=True)
class LighthouseSettings:
    """How the Lighthouse forms quorums."""

    min_replicas: int = 1
    """Smallest group that may train (1: a single survivor keeps going)."""
    join_timeout_ms: int = int(JOIN_TIMEOUT_S * 1000)
    """How long a forming quorum waits for known replicas that have not asked yet (the
    replicas' quorum requests are paced by it: trainer/ft.py ``start_quorum``)."""
    heartbeat_timeout_ms: int = 5000
    """A replica silent this long is dropped from the next quorum."""


def check_port_free(address: str, port: int, what: str, flag: str) -> None:
    """Raise PortInUseError if ``address:port`` (TCP) is taken, NetworkConfigError if the
    address cannot be bound for another reason (not this machine's, no permission)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"{what} port {port} on {address} is already in use: is another "
                    f"`potluck host` running? Stop it, or pass {flag} with a free port"
                ) from exc
            raise NetworkConfigError(
                f"cannot listen for the {what} on {address}:{port} ({exc.strerror}): is "
                f"{address} an address of this machine? Pass --advertise with one"
            ) from exc


class Lighthouse:
    """A running torchft ``LighthouseServer`` on loopback, reachable on ``address`` only
    through a gRPC-only guard (its status page, with the unauthenticated kill button, is not
    served to the network; see docs/security.md)."""

    def __init__(self, address: str, port: int, settings: LighthouseSettings) -> None:
        check_port_free(address, port, "lighthouse", "--lighthouse-port")
        from potluck.trainer.ft import lighthouse_port, start_lighthouse
        from potluck.trainer.grpc_guard import GuardedLighthouse, loopback_for

        try:
            server = start_lighthouse(
                loopback_for(address), 0,
                min_replicas=settings.min_replicas,
                join_timeout_ms=settings.join_timeout_ms,
                heartbeat_timeout_ms=settings.heartbeat_timeout_ms,
            )
            self._server: Any = GuardedLighthouse(server, listen=(address, port))
        except (RuntimeError, OSError) as exc:  # the Rust side raises a plain RuntimeError
            # The port was free a moment ago (checked above), so this is not "in use" unless
            # the error says so.
            in_use = "in use" in str(exc).lower() or getattr(exc, "errno", None) == errno.EADDRINUSE
            raise (PortInUseError if in_use else ClusterError)(
                f"cannot start the torchft lighthouse on {address}:{port} ({exc}); "
                "see the host log, or pass --lighthouse-port with another port"
            ) from exc
        self.port = lighthouse_port(self._server)

    def shutdown(self) -> None:
        self._server.shutdown()
