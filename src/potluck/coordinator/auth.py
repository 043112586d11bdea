"""The join token and the metrics token: generated once per state dir, stored 0600, checked
in constant time.

The join token (file ``token``) opens the whole API. The metrics token (file
``metrics-token``) is the scrape secret to give Prometheus: it reads ``GET /metrics`` and
nothing else. Both are bearer secrets: never logged, never sent back by the API. The check is
an ASGI middleware so that a request without the right token is refused before its body is
even parsed (nothing is stored, and no field errors leak what the API expects).

The web dashboard gets a third kind of credential, a **session** (:class:`Sessions`): the
page posts the token once (``POST /api/v1/session``, bearer header) and gets a random value
in an HttpOnly, SameSite=Strict cookie. The host keeps only the values' hashes, in memory;
the cookie reads the dashboard's routes (``SESSION_PATHS``) with ``GET`` and nothing else,
so it never writes anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from potluck.contracts.errors import ConfigError

TOKEN_BYTES = 24
"""192 bits of randomness (the issue asks for at least 128)."""
MIN_TOKEN_CHARS = 16
METRICS_PATH = "/metrics"
METRICS_TOKEN_FILE = "metrics-token"
SESSION_COOKIE = "potluck_session"
SESSION_PATHS = ("/api/v1/dashboard",)
"""What a dashboard session cookie may read (``GET`` only): these paths and those below them."""
SESSION_TTL_S = 24 * 3600.0
"""A session ends this long after it began (or when the host restarts)."""
MAX_SESSIONS = 256
"""Sessions kept at once; beyond this the oldest ends."""


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def validate_token(token: str) -> str:
    """Check a user-given ``--token``. Raises ConfigError for a short or odd token."""
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise ConfigError(
            f"--token must be at least {MIN_TOKEN_CHARS} printable characters without spaces; "
            "leave it out to have a random one generated"
        )
    return token


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with 0600 permissions, atomically (no half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no stray temporary file
        raise


def load_or_create_token(state_dir: Path, given: str | None) -> str:
    """The cluster's token: ``given`` (then stored), else the stored one, else a new one."""
    path = state_dir / "token"
    if given:
        token = validate_token(given)
        write_private(path, token + "\n")
        return token
    if path.exists():
        return path.read_text().strip()
    token = new_token()
    write_private(path, token + "\n")
    return token


def load_or_create_metrics_token(state_dir: Path) -> str:
    """The scrape secret of ``GET /metrics``: the stored one (``state_dir/metrics-token``),
    else a new random one written there (0600). Kept across restarts so a Prometheus
    configuration keeps working; delete the file and restart the host to change it."""
    path = state_dir / METRICS_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if len(token) >= MIN_TOKEN_CHARS:
            return token
    token = new_token()
    write_private(path, token + "\n")
    return token


def token_matches(expected: str, authorization: str | None) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header value."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), expected.encode())


class Sessions:
    """The dashboard's sessions: random values handed out in a cookie, each good for
    ``SESSION_TTL_S``. Only their SHA-256 is kept, in memory (a restarted host forgets them:
    the page then asks for the link again). Call from one event loop."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, limit: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self._expires: dict[str, float] = {}
        """sha256 of a session value -> when it ends (insertion order: oldest first)."""

    @staticmethod
    def _key(value: str) -> str:
        return hashlib.sha256(value.encode()).hexdigest()

    def new(self, now: float | None = None) -> str:
        """Begin a session; returns its value (for the cookie only: never log it)."""
        now = time.time() if now is None else now
        self._expires = {k: t for k, t in self._expires.items() if t > now}
        while len(self._expires) >= self.limit:
            del self._expires[next(iter(self._expires))]
        value = secrets.token_urlsafe(32)
        self._expires[self._key(value)] = now + self.ttl_s
        return value

    def valid(self, value: str | None, now: float | None = None) -> bool:
        if not value or len(value) > 128:
            return False
        expires = self._expires.get(self._key(value))
        return expires is not None and expires > (time.time() if now is None else now)

    def cookie(self, value: str) -> str:
        """The ``Set-Cookie`` value: HttpOnly (page scripts cannot read it), SameSite=Strict
        (other sites cannot make the browser send it), the whole origin."""
        return (f"{SESSION_COOKIE}={value}; Max-Age={int(self.ttl_s)}; Path=/; HttpOnly; "
                "SameSite=Strict")


def session_cookie(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The session cookie's value among an ASGI request's headers, or None."""
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, _, val = part.strip().partition("=")
            if key == SESSION_COOKIE:
                return val
    return None


def session_may_read(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and any(
        path == p or path.startswith(p + "/") for p in SESSION_PATHS)


MAX_BODY_BYTES = 4 * 2**20
"""Largest request body the API reads (a full metrics batch is well under 1 MiB)."""


async def _reply(send: Any, status: int, detail: str,
                 extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"content-security-policy", b"default-src 'none'"),
                            (b"cache-control", b"no-store"), *extra]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class TokenMiddleware:
    """ASGI middleware: every ``/api/`` request needs the bearer token, else 401, checked
    before the body is read; a body larger than ``MAX_BODY_BYTES`` is refused with 413
    without being read whole. ``/metrics`` takes the token or ``metrics_token``; the metrics
    token anywhere else is a 403. A valid session cookie (``sessions``) stands for the token
    on ``GET`` of ``SESSION_PATHS`` only; with any other method it is a 403."""

    def __init__(self, app: Any, token: str, max_body: int = MAX_BODY_BYTES, *,
                 metrics_token: str | None = None, sessions: Sessions | None = None) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.metrics_token = metrics_token
        self.sessions = sessions

    async def _limited(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await _reply(send, 413, f"request body over {self.max_body} bytes")
                return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _reply(send, 413, f"request body over {self.max_body} bytes")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        metrics = path == METRICS_PATH
        if not metrics and not path.startswith("/api/"):
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if token_matches(self.token, header):
            await self._limited(scope, receive, send)
            return
        if self.metrics_token and token_matches(self.metrics_token, header):
            if metrics:
                await self._limited(scope, receive, send)
            else:
                await _reply(send, 403, f"this is the metrics token (file `{METRICS_TOKEN_FILE}`): "
                             f"it can only read {METRICS_PATH}; the API needs the cluster token "
                             "(file `token` in the host's state dir)")
            return
        if header is None and self.sessions is not None and not metrics:
            if self.sessions.valid(session_cookie(scope["headers"])):
                method = scope.get("method", "GET")
                if session_may_read(method, path):
                    await self._limited(scope, receive, send)
                    return
                if method not in ("GET", "HEAD"):
                    await _reply(send, 403, "the dashboard's session only reads: changing "
                                 "anything needs the token (Authorization: Bearer)")
                    return
        if metrics:
            detail = (f"{'missing' if header is None else 'wrong'} token: {METRICS_PATH} takes "
                      f"the bearer token in the host's state dir, file `{METRICS_TOKEN_FILE}` "
                      "(or the cluster token)")
            await _reply(send, 401, detail, [(b"www-authenticate", b"Bearer")])
            return
        detail = (
            "missing token: pass --token (or set POTLUCK_TOKEN) with the token printed by "
            "`potluck host`"
            if header is None
            else "wrong token: use the token printed by `potluck host` (it is also in the host's "
            "state dir, file `token`)"
        )
        await _reply(send, 401, detail, [(b"www-authenticate", b"Bearer")])
