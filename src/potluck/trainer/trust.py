"""Who may be in a job's quorum: tagged replica ids, and a proof of the secret per quorum.

The torchft Lighthouse admits any process that asks. Every replica the coordinator assigned
holds the job's secret (``ReplicaSpec.secret``) and names itself
``<name>.<tag>_<slot>`` where ``tag = HMAC(secret, slot)``; torchft appends ``:<uuid>`` and
reads the slot from the trailing digits. Two checks follow each new quorum:

1. **Tags** (:meth:`QuorumGuard.check`, before the process group is built): every member's tag
   is right and no slot appears twice. Cheap and local, but a tag is not a session proof: the
   ids are visible to every quorum member, so a stranger could replay the tag of a slot whose
   real replica is absent.
2. **Proofs** (:meth:`QuorumGuard.prove`, on the freshly built gloo group, before any gradient
   or state moves): every member contributes fresh random nonces, then proves it holds the
   secret with ``HMAC(secret, "quorum|<quorum id>|<store prefix>|<member>|" + all nonces)``
   (:func:`quorum_proof`), and every member checks every proof in constant time
   (:func:`exchange_proofs`). The nonces make each proof good for this one configuration
   only, so one seen in an earlier quorum (by a member, or on the wire) cannot be replayed,
   even after a Lighthouse restart starts quorum ids over; the quorum id and the store prefix
   torchft passes to ``configure`` bind it to this quorum as well.

If either fails the replica reports an alert (one per bad member) and refuses the quorum: the
step is discarded, the gloo group is dropped, and nothing (gradients, state) is exchanged until
the stranger is gone. If the proof exchange itself fails or times out (a member that never
answers), the quorum is refused the same way, without an alert (an honest peer dying
mid-configure looks alike). A stranger still cannot fetch or serve a checkpoint either (that
needs the secret itself, see :mod:`potluck.trainer.checkpoint`). What remains (gloo traffic is
not authenticated on the wire) is in docs/security.md.
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


NONCE_BYTES = 16
PROOF_BYTES = 32


def quorum_proof(secret: str, quorum_id: int, store_addr: str, member: int, nonces: bytes) -> bytes:
    """Member ``member``'s proof for one configuration: ``HMAC(secret, "quorum|<quorum_id>|
    <store_addr>|<member>|" + nonces)``, with ``store_addr`` torchft's per-quorum store
    prefix and ``nonces`` the configuration's nonce table (what every member agrees on)."""
    head = f"quorum|{quorum_id}|{store_addr}|{member}|".encode()
    return hmac.new(secret.encode(), head + nonces, hashlib.sha256).digest()


def proof_holds(secret: str, quorum_id: int, store_addr: str, member: int, nonces: bytes,
                proof: bytes) -> bool:
    """Whether ``proof`` is member ``member``'s for this configuration (constant time)."""
    return hmac.compare_digest(proof, quorum_proof(secret, quorum_id, store_addr, member, nonces))


def exchange_proofs(secret: str, *, quorum_id: int, store_addr: str, rank: int, member: int,
                    members: list[int], allreduce: Callable[[Any], None]) -> list[int]:
    """Prove to the quorum that this member holds ``secret`` and check everyone's proof.

    ``rank`` is this member's rank in the quorum's process group, ``member`` its torchft global
    rank (the slot, with one process per replica group) and ``members`` every member's, one per
    rank. ``allreduce`` must SUM an int64 tensor in place over the group and raise if that
    fails or times out (this function then raises too). Two small SUMs, each over a table with
    one row per rank that only its owner writes (every other row stays zero):

    1. ``NONCE_BYTES`` random bytes per member: the challenge, fresh for this configuration;
    2. ``[1, member, proof bytes...]`` with :func:`quorum_proof` over the summed nonce table.

    Returns the members whose proof is missing, claimed twice or wrong (empty: all proved).
    """
    import torch

    world = len(members)
    nonces = torch.zeros(world, NONCE_BYTES, dtype=torch.int64)
    nonces[rank] = torch.tensor(list(secrets.token_bytes(NONCE_BYTES)), dtype=torch.int64)
    allreduce(nonces)
    challenge = nonces.numpy().tobytes()
    proofs = torch.zeros(world, 2 + PROOF_BYTES, dtype=torch.int64)
    mine = quorum_proof(secret, quorum_id, store_addr, member, challenge)
    proofs[rank] = torch.tensor([1, member, *mine], dtype=torch.int64)
    allreduce(proofs)
    rows = proofs.tolist()
    bad = []
    for m in members:
        claims = [row[2:] for row in rows if row[0] == 1 and row[1] == m]
        proof = _as_bytes(claims[0]) if len(claims) == 1 else None
        if proof is None or not proof_holds(secret, quorum_id, store_addr, m, challenge, proof):
            bad.append(m)
    return bad


def _as_bytes(values: list[int]) -> bytes | None:
    """The bytes a proof row holds, or None if a value is not a byte (a tampered sum)."""
    try:
        return bytes(values)
    except ValueError:
        return None


class UntrustedQuorum(RuntimeError):
    """The quorum holds a process that did not prove the job's secret."""


@dataclass
class QuorumGuard:
    """Sits between torchft's Manager and its ManagerClient and checks each quorum's members.

    :meth:`wrap` replaces ``manager._client`` (torchft keeps the quorum result, with its
    ``replica_ids``, local to ``_async_quorum``); the process group calls :meth:`check` from
    ``configure``, which torchft runs right after the quorum, in the same thread, and
    :meth:`prove` once it has built the quorum's gloo group.
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

    def prove(self, allreduce: Callable[[Any], None], *, quorum_id: int, store_addr: str,
              rank: int, member: int, members: list[int], group_world_size: int = 1) -> None:
        """Run :func:`exchange_proofs` on the quorum's freshly built process group (call it
        right after building it, on every member, before anything else uses the group).

        Raises UntrustedQuorum after one alert per member (per replica id) whose proof fails,
        and also, without an alert, if the exchange itself fails or times out: an honest peer
        that died mid-configure looks the same as a stranger that never answers, and either
        way nothing may go through this group.
        """
        try:
            bad = exchange_proofs(self.secret, quorum_id=quorum_id, store_addr=store_addr,
                                  rank=rank, member=member, members=members, allreduce=allreduce)
        except Exception as exc:
            raise UntrustedQuorum(f"quorum {quorum_id}: the members' proof exchange failed "
                                  f"({exc}): not training with this quorum") from exc
        ids = {slot_of(rid): rid for rid in self.last_ids}
        for m in bad:
            slot = m // max(group_world_size, 1)
            rid = ids.get(slot, f"slot {slot}")
            if f"proof|{rid}" not in self._alerted:
                self._alerted.add(f"proof|{rid}")
                self.on_alert(f"quorum member {rid!r} (slot {slot}) gave no valid proof of the "
                              f"job's secret for quorum {quorum_id} (a replayed tag?): not "
                              "training with this quorum until it leaves")
        if bad:
            raise UntrustedQuorum(f"quorum {quorum_id}: no valid proof from members {bad}")


def slot_of(replica_id: str) -> int | None:
    """The slot torchft reads from a replica id: its trailing digits (before ``:<uuid>``)."""
    m = re.search(r"(\d+)$", replica_id.split(":", 1)[0])
    return int(m.group(1)) if m else None


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


__all__ = ["new_job_secret", "member_tag", "tagged_replica_id", "strangers", "quorum_proof",
           "proof_holds", "exchange_proofs", "slot_of", "QuorumGuard", "UntrustedQuorum"]
