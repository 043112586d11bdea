"""Recovery checkpoints between replicas: authenticated, bound to one address, no pickle.

torchft's ``HTTPTransport`` serves the state to anyone who asks, on every interface, and loads
what a peer serves with ``weights_only=False``: whoever joins the quorum claiming a high step
runs code on every real replica, and whoever joins at step 0 receives the model. This
transport keeps torchft's contract (the Manager calls ``metadata``, ``send_checkpoint``,
``disallow_checkpoint``, ``recv_checkpoint``, ``shutdown``) and changes three things:

- **Authenticated both ways.** A request carries ``X-Potluck-Auth: <unix time>.<nonce>.<mac>``,
  an HMAC with the job's secret over the path, the time and a fresh nonce; the server refuses
  anything else with 403 and reports it. The answer carries ``X-Potluck-Mac``, an HMAC over
  the request's nonce, the step and the body's SHA-256: a receiver loads nothing that a
  holder of the secret did not send for this very request.
- **No code in the format.** The body is ``torch.save`` of plain data only, loaded with
  ``torch.load(weights_only=True)``; :func:`plain_state` converts (or refuses) anything else
  on the sending side, so a state that would need pickle fails loudly where it is made.
- **One address.** The server listens on the replica's chosen address, not on all of them.

The body is built in memory when torchft asks us to serve (one copy of the state on CPU),
which also means the live state may change as soon as ``send_checkpoint`` returns.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from potluck.contracts.addressing import http_url
from potluck.log import get_logger

log = get_logger("trainer.checkpoint")

AUTH_HEADER = "X-Potluck-Auth"
MAC_HEADER = "X-Potluck-Mac"
MAX_CLOCK_SKEW_S = 300.0
"""A request older or newer than this (replica clocks disagree, or a replay) is refused."""


def _mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def request_auth(secret: bytes, path: str, *, now: float | None = None,
                 nonce: str | None = None) -> tuple[str, str]:
    """``(header value, nonce)`` proving the job's secret for a GET of ``path``."""
    ts = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    return f"{ts}.{nonce}.{_mac(secret, 'ckpt-get', path, ts, nonce)}", nonce


def check_request_auth(secret: bytes, path: str, header: str | None) -> str | None:
    """The request's nonce if ``header`` proves the secret for ``path`` now, else None."""
    try:
        ts, nonce, mac = (header or "").split(".")
        fresh = abs(time.time() - int(ts)) <= MAX_CLOCK_SKEW_S
    except ValueError:
        return None
    expected = _mac(secret, "ckpt-get", path, ts, nonce)
    return nonce if fresh and hmac.compare_digest(expected, mac) else None


def response_mac(secret: bytes, nonce: str, step: int, body: bytes) -> str:
    return _mac(secret, "ckpt-body", nonce, str(step), hashlib.sha256(body).hexdigest())


def plain_state(obj: Any, where: str = "state") -> Any:
    """A copy of ``obj`` made only of what ``torch.load(weights_only=True)`` accepts.

    Tensors (moved to CPU), dicts with str/int keys, lists, tuples (named tuples become plain
    tuples), str, int, float, bool, None; numpy scalars become Python numbers. Raises
    TypeError naming the path of anything else (fix the ``state_dict`` that produced it).
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not str or int")
            out[k] = plain_state(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        items = [plain_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    item = getattr(obj, "item", None)
    if type(obj).__module__ == "numpy" and callable(item):
        return plain_state(item(), where)
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}; recovery state "
                    "must be tensors, dicts, lists, tuples, str, int, float, bool or None")


def dump_state(state: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(plain_state(state), buf)
    return buf.getvalue()


def load_state(body: bytes) -> Any:
    """Load a body made by :func:`dump_state`; never runs code (``weights_only=True``)."""
    return torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")


class CheckpointRefused(RuntimeError):
    """A peer's checkpoint could not be fetched or did not prove the job's secret."""


def _transport_base() -> type:
    from torchft.checkpointing.transport import CheckpointTransport

    return CheckpointTransport


class SecureCheckpointTransport(_transport_base()):  # type: ignore[misc]
    """torchft ``CheckpointTransport`` serving ``http://<advertise>:<port>/checkpoint/<step>``.

    ``secret`` is the job's secret (bytes); ``on_alert(message)`` is called (from a server
    thread) when a request without it is refused, and when a source fails to prove it.
    """

    def __init__(self, *, bind_host: str, advertise_host: str, secret: bytes,
                 timeout: timedelta, on_alert: Callable[[str], None] | None = None) -> None:
        self._secret = secret
        self._advertise = advertise_host
        self._timeout = timeout
        self._on_alert = on_alert or (lambda message: None)
        self._cond = threading.Condition()
        self._step = -1
        self._body: bytes | None = None
        self._server = _server(bind_host, self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="potluck-checkpoint")
        self._thread.start()

    # torchft's CheckpointTransport --------------------------------------------------------

    def metadata(self) -> str:
        return http_url(self._advertise, self.port, "/checkpoint/")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def send_checkpoint(self, dst_ranks: list[int], step: int, state_dict: Any,
                        timeout: timedelta) -> None:
        body = dump_state(state_dict)  # a private copy: the live state may change after this
        with self._cond:
            self._step, self._body = step, body
            self._cond.notify_all()

    def allow_checkpoint(self, step: int) -> None:
        with self._cond:
            self._step = step
            self._cond.notify_all()

    def disallow_checkpoint(self) -> None:
        with self._cond:
            self._body = None

    def recv_checkpoint(self, src_rank: int, metadata: str, step: int,
                        timeout: timedelta) -> Any:
        url = f"{metadata}{step}"
        path = "/" + url.split("://", 1)[-1].split("/", 1)[-1]
        header, nonce = request_auth(self._secret, path)
        request = urllib.request.Request(url, headers={AUTH_HEADER: header})
        try:
            with urllib.request.urlopen(request, timeout=timeout.total_seconds()) as resp:
                mac = resp.headers.get(MAC_HEADER, "")
                body = resp.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise CheckpointRefused(f"cannot fetch the checkpoint of step {step} from {url} "
                                    f"(replica rank {src_rank}): {exc}") from exc
        if not hmac.compare_digest(response_mac(self._secret, nonce, step, body), mac):
            message = (f"the recovery source {url} (replica rank {src_rank}) does not hold the "
                       "job's secret: its checkpoint was not loaded")
            self._on_alert(message)
            raise CheckpointRefused(message)
        return load_state(body)

    def shutdown(self, wait: bool = True) -> None:
        if wait:
            self._server.shutdown()
            self._thread.join()
            self._server.server_close()
        else:
            threading.Thread(target=self._stop, daemon=True).start()

    def _stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # serving -------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        nonce = check_request_auth(self._secret, path, handler.headers.get(AUTH_HEADER))
        if nonce is None:
            peer = handler.client_address[0]
            self._on_alert(f"refused a checkpoint request for {path[:80]} from {peer}: it does "
                           "not prove the job's secret (a process the coordinator did not assign?)")
            handler.send_error(403, "the job's secret is required")
            return
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "checkpoint" or not parts[1].isdigit():
            handler.send_error(404, "expected /checkpoint/<step>")
            return
        step = int(parts[1])
        deadline = time.monotonic() + self._timeout.total_seconds()
        with self._cond:
            # Like torchft's: a request that comes before we are asked to serve waits for it.
            while (self._body is None or self._step != step) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            body = self._body if self._step == step else None
        if body is None:
            handler.send_error(409, f"not serving step {step} (serving {self._step})")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header(MAC_HEADER, response_mac(self._secret, nonce, step, body))
        handler.end_headers()
        handler.wfile.write(body)


def _server(bind_host: str, transport: SecureCheckpointTransport) -> ThreadingHTTPServer:
    request_timeout = transport._timeout.total_seconds()

    class Handler(BaseHTTPRequestHandler):
        timeout = request_timeout

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                transport._serve(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the peer went away; torchft retries or discards the step

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("checkpoint server: " + format, *args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET

    return Server((bind_host.strip("[]"), 0), Handler)


__all__ = ["SecureCheckpointTransport", "CheckpointRefused", "plain_state", "dump_state",
           "load_state", "request_auth", "check_request_auth", "response_mac"]
