"""potluck against plain torch DDP on gloo: equal speeds, the same model and batches.

Goal (issue 2): with a realistic step (>= 200 ms of compute), potluck's throughput is >= 0.97
of plain DDP. Also reports potluck's per-step control overhead (quorum + commit + the
all-reduce time that is not waiting for a slower peer) in ms.
Run: ``.venv/bin/python benchmarks/ddp_overhead.py``; prints JSON.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _harness import emit, job
from torch.nn.parallel import DistributedDataParallel

from potluck.balancer import split_equal
from potluck.launcher import LocalCluster
from potluck.trainer.core import build_training, gradient_step
from potluck.trainer.emulation import Emulator, measure_step_s
from potluck.trainer.sampler import step_indices

NODES, GLOBAL_BATCH, STEPS, WARMUP = 3, 384, 30, 2
SAMPLE_S = 1.6e-3  # 128 samples per node -> 205 ms of compute per step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, queue: mp.Queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=NODES)
    j = job(steps=STEPS, global_batch=GLOBAL_BATCH, policy="equal")
    tr = build_training(j)
    model = DistributedDataParallel(tr.model)
    opt = torch.optim.SGD(model.parameters(), lr=j.optimizer.lr, momentum=j.optimizer.momentum)
    emu = Emulator(1.0, SAMPLE_S)
    # Emulate the slow device *before* the real compute so that DDP's all-reduce (one bucket
    # for this model, launched at the end of backward) follows the emulated compute, as it
    # would on a real slow device; padding after backward would hide DDP's communication.
    train_x, train_y = tr.data.train.tensors
    real_s = measure_step_s(gradient_step(tr), GLOBAL_BATCH // NODES)
    shares = split_equal(range(NODES), GLOBAL_BATCH)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for step in range(STEPS):
        if step == WARMUP:
            dist.barrier()
            t0 = time.perf_counter()
        idx = torch.from_numpy(step_indices(step=step, seed=j.seed, train_size=tr.train_size,
                                            global_batch=GLOBAL_BATCH, allocation=shares, slot=rank))
        opt.zero_grad(set_to_none=True)
        time.sleep(max(0.0, emu.target_s(len(idx)) - real_s))
        loss_fn(model(train_x[idx]), train_y[idx]).backward()  # all-reduce inside
        opt.step()
    dist.barrier()
    if rank == 0:
        queue.put((STEPS - WARMUP) * GLOBAL_BATCH / (time.perf_counter() - t0))
    dist.destroy_process_group()


def ddp_samples_per_s() -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, queue)) for r in range(NODES)]
    for p in procs:
        p.start()
    result = queue.get(timeout=600)
    for p in procs:
        p.join()
    return result


def potluck_run() -> tuple[float, dict[str, float]]:
    j = job(steps=STEPS, global_batch=GLOBAL_BATCH, policy="equal", emulated_sample_s=SAMPLE_S)
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(j, [1.0] * NODES, Path(tmp)) as cluster:
        codes = cluster.wait(600)
        assert codes == dict.fromkeys(range(NODES), 0), codes
        steps = [r for r in cluster.records(0) if r["type"] == "step" and r["committed"]]
    window = [r for r in steps if r["step"] >= WARMUP - 1]
    sps = (len(window) - 1) * GLOBAL_BATCH / (window[-1]["t"] - window[0]["t"])
    measured = [r for r in steps if r["step"] >= WARMUP]
    control = [r["quorum_s"] + r["commit_s"] + max(0.0, r["allreduce_s"] - r["wait_s"]) for r in measured]
    intervals = [b["t"] - a["t"] for a, b in zip(window, window[1:])]
    parts = {
        "step_interval_ms": statistics.median(intervals) * 1e3,
        "compute_ms": statistics.median(r["compute_s"] for r in measured) * 1e3,
        "quorum_ms": statistics.median(r["quorum_s"] for r in measured) * 1e3,
        "allreduce_ms": statistics.median(r["allreduce_s"] for r in measured) * 1e3,
        "commit_ms": statistics.median(r["commit_s"] for r in measured) * 1e3,
        "control_overhead_ms": statistics.median(control) * 1e3,
    }
    return sps, {k: round(v, 2) for k, v in parts.items()}


def main() -> None:
    ddp = ddp_samples_per_s()
    ours, parts = potluck_run()
    print(f"DDP {ddp:.1f} samples/s, potluck {ours:.1f} samples/s, ratio {ours / ddp:.3f}", file=sys.stderr)
    emit("ddp_overhead", [{"nodes": NODES, "global_batch": GLOBAL_BATCH, "compute_ms_per_step": SAMPLE_S * GLOBAL_BATCH / NODES * 1e3,
                           "ddp_samples_per_s": round(ddp, 1), "potluck_samples_per_s": round(ours, 1),
                           "ratio": round(ours / ddp, 4), "potluck_step": parts}])


if __name__ == "__main__":
    main()
