"""Who may be in a job's quorum: replica ids tagged with the job's secret, checked by peers.

The torchft Lighthouse admits any process that asks. Every replica the coordinator assigned
holds the job's secret (``ReplicaSpec.secret``) and names itself
``<name>.<tag>_<slot>`` where ``tag = HMAC(secret, slot)``; torchft appends ``:<uuid>`` and
reads the slot from the trailing digits. After each quorum a replica checks every member's
tag (and that no slot appears twice); if one fails, it reports an alert and refuses to form
the process group with that quorum, so the step is discarded and nothing (gradients, state)
is exchanged until the stranger is gone.

A tag is not a session proof: a quorum member sees the others' ids and could replay one for a
slot whose real replica is absent. What such a process still cannot do is fetch or serve a
checkpoint (that needs the secret itself, see :mod:`potluck.trainer.checkpoint`); docs/security.md
lists what remains.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TAG_CHARS = 16
_ID = re.compile(rf"^(?P<name>.*)\.(?P<tag>[0-9a-f]{{{TAG_CHARS}}})_(?P<slot>\d+)$")


def new_job_secret() -> str:
    """A fresh per-job secret (what LocalCluster uses; the coordinator derives its own)."""
    return secrets.token_hex(32)


def member_tag(secret: str, slot: int) -> str:
    return hmac.new(secret.encode(), f"member|{slot}".encode(), hashlib.sha256).hexdigest()[:TAG_CHARS]


def tagged_replica_id(name: str, slot: int, secret: str) -> str:
    """The torchft replica id of slot ``slot``: ``<safe name>.<tag>_<slot>``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return f"{safe}.{member_tag(secret, slot)}_{slot}"


def strangers(secret: str, replica_ids: list[str]) -> list[str]:
    """The quorum members that do not carry a valid tag, or claim a slot already claimed."""
    bad, seen = [], set()
    for rid in replica_ids:
        m = _ID.match(rid.split(":", 1)[0])
        if m is None or not hmac.compare_digest(m["tag"], member_tag(secret, int(m["slot"]))):
            bad.append(rid)
        elif m["slot"] in seen:
            bad.append(rid)
        else:
            seen.add(m["slot"])
    return bad


class UntrustedQuorum(RuntimeError):
    """The quorum holds a process that did not prove the job's secret."""


@dataclass
class QuorumGuard:
    """Sits between torchft's Manager and its ManagerClient and checks each quorum's members.

    :meth:`wrap` replaces ``manager._client`` (torchft keeps the quorum result, with its
    ``replica_ids``, local to ``_async_quorum``); the process group calls :meth:`check` from
    ``configure``, which torchft runs right after the quorum, in the same thread.
    """

    secret: str
    on_alert: Callable[[str], None]
    last_ids: list[str] = field(default_factory=list)
    _alerted: set[str] = field(default_factory=set)

    def wrap(self, manager: Any) -> None:
        manager._client = _RecordingClient(manager._client, self)

    def check(self) -> None:
        """Raise UntrustedQuorum (after one alert per stranger) if the last quorum had one."""
        bad = strangers(self.secret, self.last_ids)
        for rid in bad:
            if rid not in self._alerted:
                self._alerted.add(rid)
                self.on_alert(f"quorum member {rid!r} does not carry the job's tag (not "
                              "assigned by the coordinator, or a duplicate slot): not training "
                              "with this quorum until it leaves")
        if bad:
            raise UntrustedQuorum(f"untrusted quorum members {bad}")


class _RecordingClient:
    def __init__(self, inner: Any, guard: QuorumGuard) -> None:
        self._inner = inner
        self._guard = guard

    def _quorum(self, *args: Any, **kwargs: Any) -> Any:
        result = self._inner._quorum(*args, **kwargs)
        self._guard.last_ids = list(result.replica_ids)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


__all__ = ["new_job_secret", "member_tag", "tagged_replica_id", "strangers", "QuorumGuard",
           "UntrustedQuorum"]
