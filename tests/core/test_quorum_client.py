"""trainer/ft.py QuorumClient: overlapping quorum requests and a fresh rendezvous per quorum.

The stand-in below plays torchft's Manager server (an external component): a quorum it
receives goes to every request it holds at that moment, and a request ends at its timeout.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from datetime import timedelta
from types import SimpleNamespace

import pytest

from potluck.trainer import ft


class Server:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.quorum: object = None
        self.formed = 0

    def _quorum(self, *, timeout: timedelta, **_: object) -> object:
        deadline = time.monotonic() + timeout.total_seconds()
        with self.cond:
            seen = self.formed
            while self.formed == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("Timeout expired")
                self.cond.wait(left)
            return self.quorum

    def form(self, quorum: object) -> None:
        with self.cond:
            self.quorum, self.formed = quorum, self.formed + 1
            self.cond.notify_all()


def quorum(qid: int, step: int, ids: list[str]) -> SimpleNamespace:
    return SimpleNamespace(quorum_id=qid, max_step=step, replica_ids=ids, store_address="h:1",
                           heal=False)


@pytest.mark.parametrize("overlap", [ft.OVERLAP_S, 0.0])
def test_a_quorum_formed_between_two_requests_still_reaches_the_replica(
        monkeypatch: pytest.MonkeyPatch, overlap: float) -> None:
    """The caller's request times out, the quorum forms, then the caller asks again: the
    earlier request, still waiting thanks to the overlap, delivers it. Without the overlap
    the quorum reached nobody (the control case)."""
    monkeypatch.setattr(ft, "OVERLAP_S", overlap)
    server = Server()
    client = ft.QuorumClient(server)
    with pytest.raises(TimeoutError):
        client._quorum(timeout=timedelta(seconds=0.2), step=5)
    if overlap:
        assert not all(c.done() for c in client._calls)  # its call to the server still waits
    else:
        futures.wait(client._calls)  # the control: the request is over
    server.form(quorum(3, 5, ["a:1", "b:2"]))  # the Lighthouse forms the quorum now
    if overlap:
        got = client._quorum(timeout=timedelta(seconds=0.2), step=5)
        assert client.raw_id == 3 and got.max_step == 5
    else:
        with pytest.raises(TimeoutError):
            client._quorum(timeout=timedelta(seconds=0.2), step=5)
        assert client.raw_id == -1


def test_quorum_ids_and_rendezvous_keys_name_the_members_and_the_step() -> None:
    """Every member computes the same id and keys from the same quorum; a restarted
    Lighthouse's quorum 1 with other members, or the same members at another step, gets
    other ones."""
    server = Server()
    views = []
    for q in (quorum(1, 7, ["a:1", "b:2"]), quorum(1, 7, ["b:2", "a:1"]),
              quorum(1, 7, ["a:1"]), quorum(1, 9, ["a:1", "b:2"])):
        client = ft.QuorumClient(server)
        threading.Timer(0.05, server.form, args=(q,)).start()
        views.append(client._quorum(timeout=timedelta(seconds=2)))
        assert client.raw_id == 1
    same, reordered, alone, later = views
    assert (same.quorum_id, same.store_address) == (reordered.quorum_id, reordered.store_address)
    assert same.quorum_id // ft.ID_SPAN == 1 and alone.quorum_id != same.quorum_id
    assert same.store_address.startswith("h:1/potluck/")
    assert len({same.store_address, alone.store_address, later.store_address}) == 3
    assert later.quorum_id == same.quorum_id  # same members: torchft keeps its group
    assert same.heal is False  # everything else is torchft's own result
