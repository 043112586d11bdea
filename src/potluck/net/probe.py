"""Small TCP probes between two machines: can they connect, how fast, and do big messages pass.

A :class:`ProbeListener` is a short-lived TCP server (bound to port 0 unless told otherwise;
read the port back from ``.port``). The client functions below talk to it:

- :func:`check_connect`: one TCP connect, the error classified (refused / timeout / no route).
- :func:`measure_latency`: round trips of a few bytes; also the clock offset between the two.
- :func:`measure_bandwidth`: stream at most ``max_bytes`` for at most ``max_seconds``; the
  listener times what it received (goodput, first to last byte).
- :func:`probe_large_messages`: messages of growing size (64 KiB .. 8 MiB). The listener
  reports progress every 64 KiB, so a link where small packets pass but full-size ones vanish
  (an MTU black hole, common on VPN links) shows as a stall, distinct from a slow link.
- :func:`probe_link` runs them in order and stops at the first that cannot go on.

Everything is bounded in bytes and seconds. Wire format, one connection carrying requests
in sequence: request ``!cQd`` (op, size, seconds); ``P`` ping -> ``!cd`` (b"P", the
listener's wall clock); ``M`` message of ``size`` bytes -> a ``!Q`` byte count every 64 KiB
and at the end; ``B`` bandwidth -> ``!Qd`` (bytes received, seconds first to last byte),
then the listener closes the connection.

``python -m potluck.net.probe serve --host ADDR --ttl SECONDS`` runs a listener in its own
process and prints ``PORT <n>`` once it listens; ``python -m potluck.net.probe link HOST PORT``
probes one and prints the :class:`LinkProbe` as JSON (both used by the tests, and handy when
debugging a link by hand).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from potluck.log import get_logger

log = get_logger("net.probe")

_REQUEST = struct.Struct("!cQd")
_PONG = struct.Struct("!cd")
_PROGRESS = struct.Struct("!Q")
_BANDWIDTH = struct.Struct("!Qd")
_PROGRESS_EVERY = 64 * 1024
_CHUNK = 256 * 1024
_MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""A request larger than this is refused: the listener is open to anyone who can reach it."""
_MAX_CONNECTIONS = 32

DEFAULT_MESSAGE_SIZES = (64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024, 8 * 1024 * 1024)


class ProbeListener:
    """A TCP server answering probe requests, in background threads of this process.

    Use as a context manager, or ``start()`` / ``close()``. ``ttl`` closes it by itself after
    that many seconds (so an agent that opened one on request never leaks it). ``clock`` is
    the wall clock reported to pings (tests pass a skewed one to fake clock offset).
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._sock.listen(16)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._ttl = ttl
        self._clock = clock
        self._closed = threading.Event()
        self._slots = threading.BoundedSemaphore(_MAX_CONNECTIONS)
        self._thread = threading.Thread(target=self._serve, name=f"probe-{self.port}", daemon=True)

    def start(self) -> ProbeListener:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening now (new connects are refused from here on); idempotent."""
        try:
            # shutdown() first: a thread polling the socket keeps it alive past close().
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._closed.set()  # only now: wait_closed() promises that connects are refused
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(1.0)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def __enter__(self) -> ProbeListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        deadline = None if self._ttl is None else time.monotonic() + self._ttl
        try:
            self._sock.settimeout(0.2)
        except OSError:  # closed before this thread got going
            return
        while not self._closed.is_set():
            if deadline is not None and time.monotonic() > deadline:
                break
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
        self.close()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(10.0)
            while not self._closed.is_set():
                head = _recv_exact(conn, _REQUEST.size)
                if head is None:
                    return
                op, size, seconds = _REQUEST.unpack(head)
                if size > _MAX_REQUEST_BYTES or not 0 <= seconds <= 60:
                    return
                if op == b"P":
                    conn.sendall(_PONG.pack(b"P", self._clock()))
                elif op == b"M":
                    if not self._receive_message(conn, size, seconds):
                        return
                elif op == b"B":
                    self._receive_bandwidth(conn, size, seconds)
                    return
                else:
                    return
        except OSError:
            return
        finally:
            conn.close()
            self._slots.release()

    def _receive_message(self, conn: socket.socket, size: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        got = 0
        next_report = min(_PROGRESS_EVERY, size)
        while got < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            conn.settimeout(remaining)
            data = conn.recv(min(_CHUNK, size - got))
            if not data:
                return False
            got += len(data)
            if got >= next_report:
                conn.sendall(_PROGRESS.pack(got))
                next_report = min(got + _PROGRESS_EVERY, size)
        return True

    def _receive_bandwidth(self, conn: socket.socket, size: int, seconds: float) -> None:
        got = 0
        first = last = 0.0
        conn.settimeout(max(seconds, 0.1) + 5.0)
        while got < size:
            if got and time.monotonic() - first >= seconds:
                break
            if got:
                conn.settimeout(max(0.01, seconds - (time.monotonic() - first)))
            try:
                data = conn.recv(min(_CHUNK, size - got))
            except TimeoutError:
                break
            if not data:
                break
            last = time.monotonic()
            if not got:
                first = last
            got += len(data)
        conn.settimeout(5.0)
        conn.sendall(_BANDWIDTH.pack(got, last - first))
        # Drain what the client still has in flight until it closes, so closing here does not
        # reset the connection before the client has read the result.
        conn.settimeout(2.0)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            try:
                if not conn.recv(_CHUNK):
                    break
            except OSError:
                break


# ---------------------------------------------------------------------------------------------
# Client side


@dataclass(kw_only=True)
class ConnectResult:
    """Outcome of one TCP connect."""

    ok: bool
    error: str | None = None
    """``refused`` (reachable, nothing listening or a REJECT rule), ``timeout`` (packets
    dropped: firewall, or the machine is off), ``unreachable`` (no route), or ``error``."""
    detail: str = ""
    seconds: float = 0.0


@dataclass(kw_only=True)
class LatencyResult:
    rtt_ms: list[float]
    """Round-trip times of the pings that came back, in milliseconds."""
    clock_offset_s: float
    """Listener's wall clock minus ours, from the fastest round trip (NTP style)."""

    @property
    def median_ms(self) -> float:
        ordered = sorted(self.rtt_ms)
        return ordered[len(ordered) // 2]


@dataclass(kw_only=True)
class BandwidthResult:
    bytes: int
    """Bytes the listener received."""
    seconds: float
    """Listener's time from first to last byte."""

    @property
    def mbit_s(self) -> float:
        return self.bytes * 8 / max(self.seconds, 1e-6) / 1e6


@dataclass(kw_only=True)
class LargeMessageResult:
    passed: list[int] = field(default_factory=list)
    """Sizes (bytes) that arrived whole, in order."""
    stalled_at: int | None = None
    """First size during which nothing more arrived for ``stall_s``: an MTU black hole."""
    stalled_after: int = 0
    """Bytes of the stalled message that did arrive."""
    skipped_from: int | None = None
    """First size not tried because the overall deadline ran out (a slow, not a broken, link)."""


@dataclass(kw_only=True)
class LinkProbe:
    """Everything :func:`probe_link` learned about one direction of one link."""

    target: str
    connect: ConnectResult
    latency: LatencyResult | None = None
    bandwidth: BandwidthResult | None = None
    messages: LargeMessageResult | None = None
    error: str | None = None
    """Set when a probe after connect broke off (connection reset, timeout)."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LinkProbe:
        """Inverse of :meth:`to_dict` (derived fields are dropped)."""

        def part(kind: type, key: str) -> Any:
            value = raw.get(key)
            if value is None:
                return None
            names = {f.name for f in fields(kind)}
            return kind(**{k: v for k, v in value.items() if k in names})

        return cls(
            target=raw["target"],
            connect=part(ConnectResult, "connect"),
            latency=part(LatencyResult, "latency"),
            bandwidth=part(BandwidthResult, "bandwidth"),
            messages=part(LargeMessageResult, "messages"),
            error=raw.get("error"),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.latency is not None:
            out["latency"]["median_ms"] = self.latency.median_ms
        if self.bandwidth is not None:
            out["bandwidth"]["mbit_s"] = self.bandwidth.mbit_s
        return out


@dataclass(kw_only=True)
class ProbeSettings:
    """Bounds of one :func:`probe_link` run."""

    connect_timeout_s: float = 3.0
    """Give up connecting after this long (a firewall that drops shows as this timeout)."""
    pings: int = 5
    """Round trips for latency."""
    bandwidth_bytes: int = 16 * 1024 * 1024
    """Send at most this much for the bandwidth probe."""
    bandwidth_seconds: float = 1.0
    """... and for at most this long."""
    message_sizes: Sequence[int] = DEFAULT_MESSAGE_SIZES
    """Sizes of the large-message probe; empty skips it."""
    stall_s: float = 2.0
    """A message with no progress for this long is stalled (MTU black hole)."""
    messages_seconds: float = 4.0
    """Overall time for the large-message probe; sizes left when it runs out are skipped."""


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        data = conn.recv(n - len(buf))
        if not data:
            return None
        buf += data
    return bytes(buf)


def _classify_connect_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return "timeout"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EINVAL, errno.EADDRNOTAVAIL):
        return "unreachable"
    return "error"


def open_connection(host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket with TCP_NODELAY, or the OSError of the connect."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def check_connect(host: str, port: int, timeout: float = 3.0) -> ConnectResult:
    """Open and close one TCP connection. Never raises; the error is classified."""
    start = time.monotonic()
    try:
        sock = open_connection(host, port, timeout)
    except OSError as exc:
        return ConnectResult(
            ok=False,
            error=_classify_connect_error(exc),
            detail=exc.strerror or str(exc) or type(exc).__name__,
            seconds=time.monotonic() - start,
        )
    sock.close()
    return ConnectResult(ok=True, seconds=time.monotonic() - start)


def ping(sock: socket.socket, count: int, timeout: float = 3.0) -> LatencyResult:
    """``count`` round trips on a connected probe socket. Raises OSError/TimeoutError."""
    sock.settimeout(timeout)
    rtts: list[float] = []
    best: tuple[float, float] | None = None
    for _ in range(count):
        t0 = time.time()
        m0 = time.perf_counter()
        sock.sendall(_REQUEST.pack(b"P", 0, 0.0))
        reply = _recv_exact(sock, _PONG.size)
        rtt = time.perf_counter() - m0
        if reply is None:
            raise ConnectionResetError("probe listener closed the connection")
        _, remote = _PONG.unpack(reply)
        rtts.append(rtt * 1000)
        offset = remote - (t0 + rtt / 2)
        if best is None or rtt < best[0]:
            best = (rtt, offset)
    return LatencyResult(rtt_ms=rtts, clock_offset_s=best[1] if best else 0.0)


def measure_latency(host: str, port: int, count: int = 5, timeout: float = 3.0) -> LatencyResult:
    """Connect and :func:`ping`. Raises OSError on any network failure."""
    with open_connection(host, port, timeout) as sock:
        return ping(sock, count, timeout)


def measure_bandwidth(
    host: str, port: int, *, max_bytes: int, max_seconds: float, timeout: float = 3.0
) -> BandwidthResult:
    """Stream up to ``max_bytes`` for up to ``max_seconds``; the listener's count and time.

    Raises OSError/TimeoutError when the connection breaks or the reply never comes.
    """
    with open_connection(host, port, timeout) as sock:
        sock.sendall(_REQUEST.pack(b"B", max_bytes, max_seconds))
        sock.setblocking(False)
        chunk = memoryview(bytes(_CHUNK))
        sent = 0
        reply = bytearray()
        hard_deadline = time.monotonic() + max_seconds + timeout
        while len(reply) < _BANDWIDTH.size:
            remaining = hard_deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("bandwidth probe: the listener never answered")
            want = [sock] if sent < max_bytes else []
            readable, writable, _ = select.select([sock], want, [], min(remaining, 0.2))
            if readable:
                data = sock.recv(_BANDWIDTH.size - len(reply))
                if not data:
                    raise ConnectionResetError("bandwidth probe: listener closed without a result")
                reply += data
            elif writable:
                try:
                    sent += sock.send(chunk[: min(_CHUNK, max_bytes - sent)])
                except (BlockingIOError, InterruptedError):
                    pass
                except BrokenPipeError:
                    # The listener stopped reading (its time was up); its answer is queued.
                    sent = max_bytes
        got, seconds = _BANDWIDTH.unpack(bytes(reply))
        return BandwidthResult(bytes=got, seconds=seconds)


def send_message(sock: socket.socket, size: int, *, stall_s: float, deadline: float) -> tuple[int, str]:
    """Send one ``size``-byte message on a probe socket, watching the listener's progress.

    Returns (bytes the listener confirmed, outcome) with outcome ``ok``, ``stall`` (no
    progress for ``stall_s``) or ``deadline`` (still moving when the monotonic ``deadline``
    passed). Raises OSError if the connection breaks.
    """
    sock.setblocking(True)
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    sock.sendall(_REQUEST.pack(b"M", size, max(0.1, stall_s + deadline - time.monotonic())))
    sock.setblocking(False)
    chunk = memoryview(bytes(_CHUNK))
    sent = acked = 0
    pending = bytearray()
    last_progress = time.monotonic()
    try:
        while acked < size:
            now = time.monotonic()
            if now - last_progress > stall_s:
                return acked, "stall"
            if now > deadline:
                return acked, "deadline"
            want = [sock] if sent < size else []
            wait = min(0.05, max(0.0, deadline - now))
            readable, writable, _ = select.select([sock], want, [], wait)
            if readable:
                data = sock.recv(4096)
                if not data:
                    raise ConnectionResetError("probe listener closed the connection")
                pending += data
                while len(pending) >= _PROGRESS.size:
                    (count,) = _PROGRESS.unpack(pending[: _PROGRESS.size])
                    del pending[: _PROGRESS.size]
                    if count > acked:
                        acked = count
                        last_progress = time.monotonic()
            if writable:
                try:
                    sent += sock.send(chunk[: min(_CHUNK, size - sent)])
                except (BlockingIOError, InterruptedError):
                    pass
        return acked, "ok"
    finally:
        sock.setblocking(True)


def probe_large_messages(
    host: str,
    port: int,
    sizes: Sequence[int] = DEFAULT_MESSAGE_SIZES,
    *,
    stall_s: float = 2.0,
    seconds: float = 4.0,
    timeout: float = 3.0,
) -> LargeMessageResult:
    """Send messages of growing size on one connection; stop at the first stall.

    Raises OSError if the connection cannot be opened or breaks.
    """
    result = LargeMessageResult()
    deadline = time.monotonic() + seconds
    with open_connection(host, port, timeout) as sock:
        for size in sizes:
            if time.monotonic() >= deadline:
                result.skipped_from = size
                break
            acked, outcome = send_message(sock, size, stall_s=stall_s, deadline=deadline)
            if outcome == "ok":
                result.passed.append(size)
            elif outcome == "stall":
                result.stalled_at, result.stalled_after = size, acked
                break
            else:
                result.skipped_from = size
                break
    return result


def probe_link(host: str, port: int, settings: ProbeSettings | None = None) -> LinkProbe:
    """Connect, then latency, bandwidth and large messages, as far as the link allows.

    Never raises for network failures: they end up in the result.
    """
    s = settings or ProbeSettings()
    target = f"{host}:{port}"
    connect = check_connect(host, port, s.connect_timeout_s)
    probe = LinkProbe(target=target, connect=connect)
    if not connect.ok:
        return probe
    try:
        probe.latency = measure_latency(host, port, s.pings, s.connect_timeout_s)
        if s.message_sizes:
            probe.messages = probe_large_messages(
                host,
                port,
                s.message_sizes,
                stall_s=s.stall_s,
                seconds=s.messages_seconds,
                timeout=s.connect_timeout_s,
            )
            if probe.messages.stalled_at is not None:
                # Full-size packets vanish: a bandwidth probe would only stall again.
                return probe
        if s.bandwidth_bytes > 0:
            probe.bandwidth = measure_bandwidth(
                host,
                port,
                max_bytes=s.bandwidth_bytes,
                max_seconds=s.bandwidth_seconds,
                timeout=s.connect_timeout_s,
            )
    except OSError as exc:
        probe.error = f"{type(exc).__name__}: {exc}"
    return probe


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m potluck.net.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run a probe listener; prints PORT <n>")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--ttl", type=float, default=60.0)
    serve.add_argument("--clock-offset", type=float, default=0.0, help="skew the reported clock")
    link = sub.add_parser("link", help="probe a listener; prints the result as JSON")
    link.add_argument("host")
    link.add_argument("port", type=int)
    link.add_argument("--settings", default="{}", help="ProbeSettings fields as JSON")
    args = parser.parse_args(argv)
    if args.cmd == "link":
        import json

        settings = ProbeSettings(**json.loads(args.settings))
        print(json.dumps(probe_link(args.host, args.port, settings).to_dict()), flush=True)
        return 0
    offset = args.clock_offset
    listener = ProbeListener(args.host, args.port, ttl=args.ttl, clock=lambda: time.time() + offset)
    listener.start()
    print(f"PORT {listener.port}", flush=True)
    try:
        listener.wait_closed()
    except KeyboardInterrupt:
        listener.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
