"""One member of tests/cluster/test_slow_link.py's sync measurement (run inside a namespace).

``python sync_member.py SETTINGS_JSON``: joins the Lighthouse through
:func:`potluck.trainer.ft.make_manager` as replica ``slot`` and, for each group size ``n`` in
``sizes`` (largest first; members with ``slot >= n`` leave before that round), waits for a
quorum of exactly ``n`` members and times the sync's collectives the way
:meth:`potluck.trainer.diloco.DiLoCo.sync` does them: the statistics all-reduce, then
:func:`potluck.trainer.codec.allreduce_sum` of ``values`` floats, per wire format (one
untimed warm-up each). Prints one JSON line per ``(n, wire)`` and one with the round trip of
a tiny all-reduce per ``n``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.distributed import ReduceOp

from potluck.trainer.codec import allreduce_sum
from potluck.trainer.ft import make_manager
from potluck.trainer.sync import STAT_WIDTH

SLOTS = 4


def main() -> None:
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    slot, sizes = cfg["slot"], cfg["sizes"]
    manager, pg, _store = make_manager(
        name="slowlink", slot=slot, lighthouse=cfg["lighthouse"], advertise_host=cfg["host"],
        timeout_s=60.0, load_state_dict=lambda state: None, state_dict=lambda: {})
    ready = Path(cfg["ready"])
    (ready / str(slot)).touch()
    deadline = time.monotonic() + 60
    while len(list(ready.iterdir())) < max(sizes) and time.monotonic() < deadline:
        time.sleep(0.05)
    flat = torch.randn(cfg["values"], generator=torch.Generator().manual_seed(slot))
    for n in sizes:
        if slot >= n:
            break
        while True:  # a quorum of exactly n (a leaver may still count until it times out)
            manager.start_quorum()
            if len(pg.members) == n:
                break
            manager.should_commit()
        tiny = torch.zeros(256)
        rtt = []
        for _ in range(5):
            t0 = time.perf_counter()
            manager.allreduce(tiny, reduce_op=ReduceOp.SUM).wait()
            rtt.append(time.perf_counter() - t0)
        print(json.dumps({"n": n, "slot": slot, "rtt_s": min(rtt)}), flush=True)
        for wire in cfg["wires"]:
            times = []
            for i in range(cfg["repeats"] + 1):
                stats = torch.zeros(SLOTS * STAT_WIDTH)
                t0 = time.perf_counter()
                manager.allreduce(stats, reduce_op=ReduceOp.SUM).wait()
                allreduce_sum(manager, pg, flat.clone(), wire)
                if i:  # the first is a warm-up (TCP windows, gloo buffers)
                    times.append(time.perf_counter() - t0)
            print(json.dumps({"n": n, "slot": slot, "wire": wire, "times": times}), flush=True)
        if not manager.should_commit():
            raise SystemExit(f"round n={n} failed: {manager.errored()}")
    manager.shutdown(wait=False)


if __name__ == "__main__":
    main()
