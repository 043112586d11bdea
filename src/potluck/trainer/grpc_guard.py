"""A TCP forwarder that lets only gRPC calls to allowed service paths through.

torchft's servers accept more than a cluster member needs and ask for no credential:

- the Lighthouse serves its gRPC API and an HTML status page on one port, and the page's
  ``POST /replica/<id>/kill`` kills a replica;
- every replica's Manager serves ``/torchft.ManagerService/Kill`` beside the calls its peers
  make (``Quorum``, ``CheckpointMetadata``, ``ShouldCommit``): one gRPC call ends the replica.

:class:`GrpcGuard` is what the network sees instead. The real server listens on loopback; the
guard listens on the advertised address and, per connection:

1. requires the HTTP/2 client preface (``PRI * HTTP/2.0...``): HTTP/1.x (the status page, the
   kill form, an ``Upgrade: h2c`` attempt) gets ``403`` and the connection is closed;
2. reads the client's frames one by one and decodes every header block with HPACK (in order,
   so the decoder's dynamic table stays in step with the client's encoder). A request stream
   passes only as ``POST`` with ``content-type: application/grpc...`` to one of ``paths``;
   anything else (another path, a missing content type, a pushed promise, a malformed frame)
   closes the connection before the frame reaches the server;
3. forwards every accepted frame byte for byte; the server's answers are copied back unread.

Usage (:class:`GuardedLighthouse` does this and quacks like the Lighthouse server)::

    lighthouse = GuardedLighthouse(start_lighthouse("127.0.0.1", 0),   # the real one, loopback
                                   listen=("100.64.0.1", 7078))         # what the network sees
    lighthouse.address()  # http://100.64.0.1:7078, for the replicas
    lighthouse.shutdown()

For a Manager (``trainer.ft.make_manager``), the guard takes a free port on the advertised
address and the Manager's server binds the same port on loopback (``upstream=(host, 0)``):
torchft advertises ``http://<hostname>:<its bound port>``, so the two ports must be equal. A
one-process replica group talks to its own server on loopback, so its guard passes only what
peers need (:data:`PEER_MANAGER_PATHS`).

Limits: it checks what is asked for, not who asks (gRPC stays open to the cluster network,
see docs/security.md); header blocks are capped at 64 KiB and frames at 16 MiB.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterable
from typing import Any

from potluck.contracts.addressing import host_port, http_url
from potluck.log import get_logger

log = get_logger("trainer.grpc_guard")

LIGHTHOUSE_PATHS = frozenset({
    "/torchft.LighthouseService/Quorum",
    "/torchft.LighthouseService/Heartbeat",
})
"""The Lighthouse's gRPC methods a torchft Manager calls."""

MANAGER_PATHS = frozenset({
    "/torchft.ManagerService/Quorum",
    "/torchft.ManagerService/CheckpointMetadata",
    "/torchft.ManagerService/ShouldCommit",
})
"""The Manager's gRPC methods its own ranks and its peers call: everything but ``Kill``."""

PEER_MANAGER_PATHS = frozenset({"/torchft.ManagerService/CheckpointMetadata"})
"""The one Manager method other replica groups call (a healing peer asks where to fetch the
checkpoint); ``Quorum`` and ``ShouldCommit`` come from the group's own ranks."""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _PRIORITY, _RST, _SETTINGS, _PUSH, _PING, _GOAWAY, _WINDOW, _CONT = range(10)
_END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x4, 0x8, 0x20
_MAX_FRAME = 1 << 24
_MAX_BLOCK = 64 * 1024
_PREFACE_TIMEOUT_S = 10.0
_REFUSAL_BODY = b"only gRPC to this torchft API is served\n"
_REFUSAL = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY))


class Refused(Exception):
    """The client asked for something the guard does not pass."""


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def header_fragment(flags: int, payload: bytes) -> bytes:
    """The header block fragment of a HEADERS frame (padding and priority removed). Pure."""
    start, end = 0, len(payload)
    if flags & _PADDED:
        if not payload:
            raise Refused("empty padded HEADERS frame")
        end -= payload[0]
        start = 1
    if flags & _PRIORITY_FLAG:
        start += 5
    if start > end:
        raise Refused("HEADERS padding longer than the frame")
    return payload[start:end]


def check_request(headers: Iterable[tuple[str, str]], paths: frozenset[str]) -> None:
    """Raise Refused unless ``headers`` open a gRPC call to one of ``paths``. Pure."""
    got: dict[str, str] = {}
    for name, value in headers:
        got.setdefault(name.lower(), value)
    if got.get(":method") != "POST":
        raise Refused(f"method {got.get(':method')!r} is not POST")
    if got.get(":path", "") not in paths:
        raise Refused(f"path {got.get(':path')!r} is not an allowed gRPC method")
    if not got.get("content-type", "").startswith("application/grpc"):
        raise Refused(f"content-type {got.get('content-type')!r} is not gRPC")


class _Connection:
    """One client connection: a checked client->server pump and a plain server->client one."""

    def __init__(self, client: socket.socket, upstream: tuple[str, int],
                 paths: frozenset[str]) -> None:
        self.client = client
        self.paths = paths
        self.upstream_addr = upstream
        self.server: socket.socket | None = None

    def run(self) -> None:
        from hpack import Decoder  # type: ignore[import-untyped]
        from hpack.exceptions import HPACKError  # type: ignore[import-untyped]

        peer = "?"
        try:
            host, port = self.client.getpeername()[:2]
            peer = f"{host}:{port}"
            # A client that connects and says nothing must not hold a thread for ever.
            self.client.settimeout(_PREFACE_TIMEOUT_S)
            first = _read_exact(self.client, len(PREFACE))
            self.client.settimeout(None)  # gRPC streams may idle between heartbeats
            if first != PREFACE:
                self.client.sendall(_REFUSAL)
                raise Refused("not an HTTP/2 gRPC client (HTTP/1.x request)")
            self.server = socket.create_connection(self.upstream_addr, timeout=10)
            self.server.settimeout(None)
            self.server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.server.sendall(PREFACE)
            threading.Thread(target=self._copy_back, daemon=True, name="grpc-guard-back").start()
            decoder = Decoder()
            # We check, the server enforces: accept any table size the server may allow.
            decoder.max_allowed_table_size = _MAX_BLOCK
            opened: set[int] = set()
            block = bytearray()
            block_stream: int | None = None
            pending = bytearray()  # frames of an unfinished header block wait for its end
            while True:
                head = _read_exact(self.client, 9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = struct.unpack(">I", head[5:9])[0] & 0x7FFFFFFF
                if length > _MAX_FRAME:
                    raise Refused(f"frame of {length} bytes")
                payload = _read_exact(self.client, length)
                if block_stream is not None and (kind != _CONT or stream != block_stream):
                    raise Refused("header block interrupted")
                if kind == _PUSH:
                    raise Refused("PUSH_PROMISE from a client")
                if kind == _HEADERS:
                    block, block_stream = bytearray(header_fragment(flags, payload)), stream
                elif kind == _CONT:
                    if block_stream is None:
                        raise Refused("CONTINUATION without HEADERS")
                    block += payload
                if len(block) > _MAX_BLOCK:
                    raise Refused("header block too large")
                pending += head + payload
                if block_stream is not None:
                    if not flags & _END_HEADERS:
                        continue
                    try:
                        headers = [(str(k), str(v))
                                   for k, v in decoder.decode(bytes(block), raw=False)]
                    except HPACKError as exc:
                        raise Refused(f"bad header block ({exc})") from exc
                    if block_stream in opened:
                        # trailers: must not smuggle a new request line
                        if any(name.startswith(":") for name, _ in headers):
                            raise Refused("pseudo-headers in trailers")
                    else:
                        check_request(headers, self.paths)
                        opened.add(block_stream)
                    block, block_stream = bytearray(), None
                self.server.sendall(pending)
                pending.clear()
        except Refused as exc:
            log.warning("refused a gRPC connection from %s to %s: %s", peer,
                        host_port(*self.upstream_addr), exc)
        except (OSError, ConnectionError):
            pass
        finally:
            self._close()

    def _copy_back(self) -> None:
        assert self.server is not None
        try:
            while True:
                data = self.server.recv(65536)
                if not data:
                    break
                self.client.sendall(data)
        except OSError:
            pass
        finally:
            self._close()

    def _close(self) -> None:
        for sock in (self.client, self.server):
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class GrpcGuard:
    """Listens on ``listen`` (port 0: a free one, see :attr:`port`) and forwards checked gRPC
    calls to ``upstream`` (port 0 there: the guard's own port, on the upstream host). Raises
    OSError if ``listen`` cannot be bound."""

    def __init__(self, *, listen: tuple[str, int], upstream: tuple[str, int],
                 paths: frozenset[str] = LIGHTHOUSE_PATHS) -> None:
        host, port = listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host.strip("[]"), port))
            self._sock.listen(256)
        except OSError:
            self._sock.close()
            raise
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        self.upstream = (upstream[0], upstream[1] or self.port)
        self.paths = paths
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="grpc-guard")
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(client, self.upstream, self.paths)
            threading.Thread(target=conn.run, daemon=True, name="grpc-guard-conn").start()

    def close(self) -> None:
        """Stop accepting; open connections end when either side closes."""
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5)


class GuardedLighthouse:
    """A started torchft ``LighthouseServer`` on loopback behind a :class:`GrpcGuard` on
    ``listen``. Quacks like the server for potluck's callers: ``address()`` names the guard
    (so ``trainer.ft.lighthouse_port`` reads the guard's port) and ``shutdown()`` stops both.
    ``upstream_port`` is the real server's loopback port (its status page stays reachable
    there for local users only).

    Wiring: ``GuardedLighthouse(start_lighthouse(loopback_for(host), 0), listen=(host, port))``.
    """

    def __init__(self, server: Any, *, listen: tuple[str, int],
                 paths: frozenset[str] = LIGHTHOUSE_PATHS) -> None:
        self.server = server
        upstream_host = loopback_for(listen[0])
        self.upstream_port = int(str(server.address()).rstrip("/").rsplit(":", 1)[1])
        try:
            self.guard = GrpcGuard(listen=listen, upstream=(upstream_host, self.upstream_port),
                                   paths=paths)
        except OSError:
            server.shutdown()
            raise

    @property
    def port(self) -> int:
        return self.guard.port

    def address(self) -> str:
        return http_url(self.guard.host, self.guard.port)

    def shutdown(self) -> None:
        self.guard.close()
        self.server.shutdown()


def loopback_for(host: str) -> str:
    """The loopback address of ``host``'s family: where the guarded server listens. Pure."""
    return "::1" if ":" in host else "127.0.0.1"


__all__ = ["GrpcGuard", "GuardedLighthouse", "loopback_for", "LIGHTHOUSE_PATHS", "MANAGER_PATHS",
           "PEER_MANAGER_PATHS",           "Refused", "check_request", "header_fragment"]
