"""What the per-quorum proof exchange (trainer/trust.py) adds to a process group's configure.

N processes on loopback configure potluck's ``MembershipGloo`` for ROUNDS quorums, as torchft
does after each quorum change (a new store prefix per quorum), alternately without a job
secret and with one (the tag check plus the two small proof all-reduces). Reports the median
ms per configure of each (the slowest member's) and the median of the proof exchange alone
(as the last member to finish building the group sees it).
Run: ``.venv/bin/python benchmarks/quorum_proof.py``; prints JSON.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from typing import Any

import torch.multiprocessing as mp
from _harness import emit

ROUNDS = 40


def _member(rank: int, n: int, port: int, secret: str, queue: Any) -> None:
    from potluck.trainer.ft import _classes
    from potluck.trainer.trust import QuorumGuard, tagged_replica_id

    class TimedGuard(QuorumGuard):
        proof_s: list[float] = []

        def prove(self, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            super().prove(*args, **kwargs)
            TimedGuard.proof_s.append(time.perf_counter() - t0)

    membership_gloo, _ = _classes()
    pg = membership_gloo(timeout=timedelta(seconds=30))
    pg.bind_host = "127.0.0.1"
    guard = TimedGuard(secret=secret, on_alert=print)
    guard.last_ids = [tagged_replica_id(f"node{i}", i, secret) for i in range(n)]
    times: dict[str, list[float]] = {"plain": [], "proof": []}
    for q in range(2 * ROUNDS):
        kind = "proof" if q % 2 else "plain"
        pg.guard = guard if kind == "proof" else None
        t0 = time.perf_counter()
        pg.configure(f"127.0.0.1:{port}/torchft/{q}/0", f"node{rank}_{rank}", rank, n, q, 0, 1,
                     list(range(n)))
        times[kind].append(time.perf_counter() - t0)
    pg.abort(errored=False)
    queue.put((rank, times, TimedGuard.proof_s))


def measure(n: int) -> dict[str, Any]:
    from torch.distributed import TCPStore

    from potluck.trainer.trust import new_job_secret

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    secret = new_job_secret()
    procs = [ctx.Process(target=_member, args=(r, n, store.port, secret, queue)) for r in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    # the slowest member per round is what the quorum waits for; drop the first rounds (warm-up)
    plain = [max(r[1]["plain"][i] for r in results) for i in range(2, ROUNDS)]
    proof = [max(r[1]["proof"][i] for r in results) for i in range(2, ROUNDS)]
    # the exchange as the last member to finish building the group sees it (the others also
    # wait for that member)
    alone = [min(r[2][i] for r in results) for i in range(2, ROUNDS)]
    return {"members": n, "configure_ms_without_secret": round(statistics.median(plain) * 1e3, 2),
            "configure_ms_with_proof": round(statistics.median(proof) * 1e3, 2),
            "proof_exchange_ms": round(statistics.median(alone) * 1e3, 2),
            "proof_exchange_ms_p90": round(sorted(alone)[int(0.9 * len(alone))] * 1e3, 2),
            "rounds": ROUNDS - 2}


if __name__ == "__main__":
    emit("quorum_proof", [measure(2), measure(3)])
