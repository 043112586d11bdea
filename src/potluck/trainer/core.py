"""What one replica computes, independent of how replicas talk to each other.

The weighting: a replica holding ``b_r`` of the global batch ``B`` back-propagates
``sum(loss over its samples) / B`` — its local mean gradient scaled by ``b_r / B``. Summing
these across replicas gives exactly the mean gradient over all ``B`` samples, the update one
big machine would compute. Micro-batches (memory caps) accumulate into the same sum.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from potluck.balancer.policy import micro_batches
from potluck.data import Dataset, load_dataset
from potluck.models import build_model
from potluck.trainer.emulation import Emulator
from potluck.trainer.sampler import step_indices, steps_per_epoch
from potluck.trainer.spec import JobConfig


@dataclass
class Training:
    """The per-process training objects for a job."""

    job: JobConfig
    data: Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int


def build_training(job: JobConfig, device: str = "cpu") -> Training:
    """Data, model and optimizer for ``job``: identical on every replica for the same seed."""
    data = load_dataset(job.dataset, seed=job.seed, test_fraction=job.test_fraction)
    spe = steps_per_epoch(len(data.train_y), job.global_batch)
    total = job.steps if job.steps is not None else max(1, int(round((job.epochs or 1.0) * spe)))
    model = build_model(job.model, data.input_shape, data.num_classes, job.seed).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=0.9)
    return Training(job, data, model, optimizer, spe, total)


_loss = nn.CrossEntropyLoss(reduction="sum")


def local_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, global_batch: int,
                    cap: int | None = None) -> float:
    """Accumulate this share's weighted gradient into ``.grad``; returns its summed loss."""
    total = 0.0
    start = 0
    for size in micro_batches(len(y), cap):
        xb, yb = x[start : start + size], y[start : start + size]
        loss = _loss(model(xb), yb) / global_batch
        loss.backward()
        total += float(loss.detach()) * global_batch
        start += size
    return total


def flat_grads(model: nn.Module, extra: int = 0) -> torch.Tensor:
    """One contiguous buffer of all gradients (zeros where none) plus ``extra`` zero slots."""
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    out = torch.zeros(numel + extra, dtype=torch.float32)
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:
            out[offset : offset + n].copy_(p.grad.detach().reshape(-1))
        offset += n
    return out


def set_grads(model: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def params_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``x, y``."""
    model.eval()
    logits = model(x)
    loss = float(nn.functional.cross_entropy(logits, y))
    acc = float((logits.argmax(dim=1) == y).float().mean())
    model.train()
    return loss, acc


def global_batch_indices(job: JobConfig, train_size: int, step: int) -> np.ndarray:
    """All indices of global step ``step``: one replica holding the whole batch."""
    return step_indices(step=step, seed=job.seed, train_size=train_size,
                        global_batch=job.global_batch, allocation={0: job.global_batch}, slot=0)


def train_reference(job: JobConfig, steps: int, *, emulator: Emulator | None = None) -> tuple[Training, float]:
    """One process training on the full global batches: what one big machine computes.

    Returns the training objects after ``steps`` steps and the samples/s it achieved (with
    ``emulator`` padding each step).
    """
    tr = build_training(job)
    n = len(tr.data.train_y)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.from_numpy(global_batch_indices(job, n, step))
        started = time.perf_counter()
        tr.optimizer.zero_grad(set_to_none=True)
        local_gradients(tr.model, tr.data.train_x[idx], tr.data.train_y[idx], job.global_batch)
        if emulator is not None:
            emulator.pad(len(idx), started)
        tr.optimizer.step()
    elapsed = time.perf_counter() - t0
    return tr, steps * job.global_batch / elapsed
