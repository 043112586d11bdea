"""The join token: generated once per state dir, stored 0600, checked in constant time.

The token is a bearer secret: it is never logged and never sent back by the API. The check is
an ASGI middleware so that a request without the right token is refused before its body is
even parsed (nothing is stored, and no field errors leak what the API expects).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from potluck.contracts.errors import ConfigError

TOKEN_BYTES = 24
"""192 bits of randomness (the issue asks for at least 128)."""
MIN_TOKEN_CHARS = 16


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


def token_matches(expected: str, authorization: str | None) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header value."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), expected.encode())


MAX_BODY_BYTES = 4 * 2**20
"""Largest request body the API reads (a full metrics batch is well under 1 MiB)."""


async def _reply(send: Any, status: int, detail: str,
                 extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class TokenMiddleware:
    """ASGI middleware: every ``/api/`` request needs the bearer token, else 401, checked
    before the body is read; a body larger than ``MAX_BODY_BYTES`` is refused with 413
    without being read whole."""

    def __init__(self, app: Any, token: str, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

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
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
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
        detail = (
            "missing token: pass --token (or set POTLUCK_TOKEN) with the token printed by "
            "`potluck host`"
            if header is None
            else "wrong token: use the token printed by `potluck host` (it is also in the host's "
            "state dir, file `token`)"
        )
        await _reply(send, 401, detail, [(b"www-authenticate", b"Bearer")])
