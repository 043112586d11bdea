"""The per-quorum proof of the job's secret (trainer/trust.py), pure and on real gloo groups.

A member tag is visible to every quorum member, so it can be replayed; the proof exchanged on
each new process group cannot: it covers nonces every member draws afresh for that
configuration, the quorum id and torchft's per-quorum store prefix.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import torch

from potluck.trainer.trust import (
    NONCE_BYTES,
    QuorumGuard,
    UntrustedQuorum,
    exchange_proofs,
    member_tag,
    new_job_secret,
    proof_holds,
    quorum_proof,
    strangers,
    tagged_replica_id,
)

NONCES = bytes(range(NONCE_BYTES)) * 2


def test_a_proof_names_its_secret_quorum_store_member_and_nonces() -> None:
    s, other = new_job_secret(), new_job_secret()
    base = quorum_proof(s, 7, "10.0.0.1:4000/torchft/7/0", 1, NONCES)
    variants = [
        quorum_proof(other, 7, "10.0.0.1:4000/torchft/7/0", 1, NONCES),
        quorum_proof(s, 8, "10.0.0.1:4000/torchft/7/0", 1, NONCES),
        quorum_proof(s, 7, "10.0.0.1:4000/torchft/8/0", 1, NONCES),
        quorum_proof(s, 7, "10.0.0.1:4000/torchft/7/0", 2, NONCES),
        quorum_proof(s, 7, "10.0.0.1:4000/torchft/7/0", 1, NONCES[::-1]),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert base == quorum_proof(s, 7, "10.0.0.1:4000/torchft/7/0", 1, NONCES)  # deterministic
    assert proof_holds(s, 7, "10.0.0.1:4000/torchft/7/0", 1, NONCES, base)
    # the same member's proof from another quorum, slot, store or challenge is refused
    assert not proof_holds(s, 8, "10.0.0.1:4000/torchft/8/0", 1, NONCES, base)
    assert not proof_holds(s, 7, "10.0.0.1:4000/torchft/7/0", 2, NONCES, base)
    assert not proof_holds(s, 7, "10.0.0.1:4000/torchft/7/0", 1, NONCES[::-1], base)
    assert not proof_holds(other, 7, "10.0.0.1:4000/torchft/7/0", 1, NONCES, base)


class SummingGroup:
    """Threads that SUM tensors like a process group (a stand-in for gloo, not for potluck)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.barrier = threading.Barrier(n, timeout=30)
        self.inputs: dict[int, torch.Tensor] = {}
        self.lock = threading.Lock()

    def allreduce_for(self, rank: int) -> Any:
        def allreduce(t: torch.Tensor) -> None:
            with self.lock:
                self.inputs[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.inputs[r] for r in range(self.n))
            self.barrier.wait()
            t.copy_(total)
        return allreduce


def _exchange(secrets: list[str], members: list[int], *, quorum_id: int = 3, cheat: Any = None) -> list[Any]:
    """Run exchange_proofs on one thread per member; ``cheat(rank, allreduce)`` replaces the
    protocol for the members it returns something for."""
    group = SummingGroup(len(members))
    results: list[Any] = [None] * len(members)

    def run(rank: int) -> None:
        allreduce = group.allreduce_for(rank)
        if cheat is not None and cheat(rank, allreduce):
            return
        results[rank] = exchange_proofs(secrets[rank], quorum_id=quorum_id, store_addr="h:1/torchft/3/0",
                                        rank=rank, member=members[rank], members=members,
                                        allreduce=allreduce)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(members))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_members_with_the_secret_all_prove_and_one_without_is_named() -> None:
    s = new_job_secret()
    assert _exchange([s, s, s], [0, 1, 2]) == [[], [], []]
    honest = _exchange([s, new_job_secret(), s], [0, 1, 2])
    assert honest[0] == [1] and honest[2] == [1]


def test_a_proof_seen_in_an_earlier_exchange_is_refused() -> None:
    """A stranger that was in an earlier quorum saw slot 2's proof there; it claims slot 2 in
    a new configuration and sends that proof: the new nonces make it worthless."""
    s = new_job_secret()
    seen: dict[str, Any] = {}

    def watch(rank: int, allreduce: Any) -> bool:
        if rank != 0:
            return False
        original = allreduce

        def record(t: torch.Tensor) -> None:
            original(t)
            seen["table"] = t.clone()

        results = exchange_proofs(new_job_secret(), quorum_id=3, store_addr="h:1/torchft/3/0",
                                  rank=0, member=9, members=[9, 1, 2], allreduce=record)
        seen["result"] = results
        return True

    _exchange([s, s, s], [9, 1, 2], cheat=watch)
    proof_of_2 = seen["table"][2, 2:].clone()  # slot 2's row of the proof table, as received

    def replay(rank: int, allreduce: Any) -> bool:
        if rank != 0:
            return False
        allreduce(torch.zeros(3, NONCE_BYTES, dtype=torch.int64))  # takes part in the challenge
        table = torch.zeros(3, 2 + proof_of_2.numel(), dtype=torch.int64)
        table[0, 0], table[0, 1], table[0, 2:] = 1, 2, proof_of_2
        allreduce(table)
        return True

    # Slot 2's replica is gone; the stranger claims slot 2 with the same quorum id and store
    # prefix as before (a Lighthouse restart starts quorum ids over): only the nonces differ.
    results = _exchange([s, s, s], [2, 1, 3], cheat=replay)
    assert results[1] == [2] and results[2] == [2]


def test_the_guard_alerts_once_per_replica_and_raises() -> None:
    s = new_job_secret()
    rogue = f"node.{member_tag(s, 9)}_9:uuid"
    assert strangers(s, [rogue]) == []  # the tag alone lets it in
    alerts: list[str] = []
    guard = QuorumGuard(secret=s, on_alert=alerts.append)
    guard.last_ids = [tagged_replica_id("node0", 0, s) + ":a", rogue]
    for _ in range(2):
        group = SummingGroup(2)
        errors: list[Exception] = []

        def honest(group: SummingGroup, errors: list[Exception]) -> None:
            try:
                guard.prove(group.allreduce_for(0), quorum_id=4, store_addr="h:1/p", rank=0,
                            member=0, members=[0, 9])
            except UntrustedQuorum as exc:
                errors.append(exc)

        t = threading.Thread(target=honest, args=(group, errors))
        t.start()
        exchange_proofs(new_job_secret(), quorum_id=4, store_addr="h:1/p", rank=1, member=9,
                        members=[0, 9], allreduce=group.allreduce_for(1))
        t.join(60)
        assert errors and "9" in str(errors[0])
    assert len(alerts) == 1 and "proof" in alerts[0] and rogue in alerts[0]


# -- real gloo groups (tier 2): torchft's reconfigurable group, configured as torchft does --

def _gloo_pair(secrets: list[str | None], timeout_s: float = 30.0) -> tuple[list[Any], list[Any]]:
    """Configure two process groups for one quorum on loopback, in parallel as torchft's
    Managers would: a MembershipGloo per secret (no guard for ``""``), or torchft's plain
    group for ``None`` (a stranger that joins the group but never answers the proof exchange).
    Returns the groups plus the alerts list, and each member's outcome."""
    from torch.distributed import TCPStore
    from torchft.process_group import ProcessGroupGloo

    from potluck.trainer.ft import _classes

    membership_gloo, _ = _classes()
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    pgs: list[Any] = []
    alerts: list[str] = []
    for secret in secrets:
        if secret is None:
            pgs.append(ProcessGroupGloo(timeout=timedelta(seconds=timeout_s)))
            continue
        pg = membership_gloo(timeout=timedelta(seconds=timeout_s))
        pg.bind_host = "127.0.0.1"
        if secret:
            pg.guard = QuorumGuard(secret=secret, on_alert=alerts.append)
            pg.guard.last_ids = [tagged_replica_id(f"node{i}", i, secret) + ":u" for i in range(2)]
        pgs.append(pg)
    outcomes: list[Any] = [None] * len(pgs)

    def configure(rank: int) -> None:
        try:
            pgs[rank].configure(f"127.0.0.1:{store.port}/torchft/5/0", f"node{rank}_{rank}", rank,
                                len(pgs), 5, 0, 1, list(range(len(pgs))))
            outcomes[rank] = "ok"
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcomes[rank] = exc

    threads = [threading.Thread(target=configure, args=(r,)) for r in range(len(pgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    pgs.append(alerts)  # type: ignore[arg-type]
    return pgs, outcomes


def test_two_replicas_with_the_secret_prove_and_then_train_on_the_group() -> None:
    s = new_job_secret()
    (a, b, alerts), outcomes = _gloo_pair([s, s])
    assert outcomes == ["ok", "ok"] and not alerts
    assert a.errored() is None and b.errored() is None
    from torch.distributed import AllreduceOptions, ReduceOp

    opts = AllreduceOptions()
    opts.reduceOp = ReduceOp.SUM
    x, y = torch.ones(4), torch.full((4,), 2.0)
    works = [a.allreduce([x], opts), b.allreduce([y], opts)]
    for w in works:
        w.wait()
    assert torch.equal(x, torch.full((4,), 3.0)) and torch.equal(y, x)


def test_a_member_without_the_secret_is_refused_and_the_group_dropped() -> None:
    s = new_job_secret()
    (a, b, alerts), outcomes = _gloo_pair([s, new_job_secret()])
    assert isinstance(outcomes[0], UntrustedQuorum) and isinstance(outcomes[1], UntrustedQuorum)
    assert a.errored() is outcomes[0] and a._pg is None  # nothing more goes through it
    assert any("proof" in m for m in alerts)


def test_a_member_that_never_answers_the_proof_is_refused_not_waited_for_forever() -> None:
    """A stranger joins the gloo group (torchft's own group) and then stays silent: the
    exchange times out after the group's timeout; the quorum is refused, the replica lives."""
    s = new_job_secret()
    (a, mute, alerts), outcomes = _gloo_pair([s, None], timeout_s=2.0)
    assert outcomes[1] == "ok"
    assert isinstance(outcomes[0], UntrustedQuorum) and "proof exchange failed" in str(outcomes[0])
    assert a.errored() is outcomes[0] and a._pg is None
    assert not alerts  # an honest peer dying mid-configure looks the same: no alert
    mute.abort(errored=False)


def test_without_a_secret_configure_is_unchanged() -> None:
    (a, b, alerts), outcomes = _gloo_pair(["", ""])
    assert outcomes == ["ok", "ok"] and not alerts
    assert a.guard is None and a.errored() is None and a.members == [0, 1]
