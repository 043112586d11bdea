"""What one replica computes, independent of how replicas talk to each other.

The weighting: a replica holding ``b_r`` of the global batch ``B`` back-propagates its
recipe's mean loss times ``b_r / B`` (for micro-batches, each one's mean times its size over
``B``). Summing these across replicas gives exactly the mean gradient over all ``B`` samples,
the update one big machine would compute.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from potluck.balancer.policy import micro_batches
from potluck.contracts.jobspec import JobSpec
from potluck.recipes import Recipe, RecipeContext, TrainData, recipe_for
from potluck.trainer.emulation import Emulator
from potluck.trainer.sampler import step_indices, steps_per_epoch


@dataclass
class Training:
    """The per-process training objects for a job."""

    spec: JobSpec
    recipe: Recipe
    ctx: RecipeContext
    data: TrainData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int

    @property
    def train_size(self) -> int:
        return len(self.data.train)

    def batch(self, indices: np.ndarray) -> Any:
        """The training samples at ``indices``, on this replica's device."""
        return to_device(self.data.train.take(torch.from_numpy(indices)), self.ctx.device)


def build_training(spec: JobSpec, device: str = "cpu", *, replica: str = "local",
                   slot: int = 0) -> Training:
    """Data, model and optimizer for ``spec``: identical on every replica for the same seed."""
    recipe = recipe_for(spec)
    ctx = RecipeContext(spec=spec, device=device, replica=replica, slot=slot)
    data = recipe.data(ctx)
    spe = steps_per_epoch(len(data.train), spec.global_batch)
    total = spec.total_steps(spe)
    model = recipe.model(ctx).to(device)
    optimizer = recipe.optimizer(model.parameters(), ctx)
    return Training(spec, recipe, ctx, data, model, optimizer, spe, total)


def planned_steps(spec: JobSpec) -> int:
    """Committed steps ``spec`` will train (loads the data set to count an epoch; no model)."""
    if spec.steps is not None or spec.epochs is None:
        return spec.total_steps(1)
    recipe = recipe_for(spec)
    data = recipe.data(RecipeContext(spec=spec, device="cpu", replica="plan", slot=0))
    return spec.total_steps(steps_per_epoch(len(data.train), spec.global_batch))


def to_device(batch: Any, device: str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice(b, start, stop) for b in batch)
    if isinstance(batch, dict):
        return {k: _slice(v, start, stop) for k, v in batch.items()}
    raise TypeError(f"cannot split a batch of type {type(batch).__name__} into micro-batches")


def local_gradients(tr: Training, batch: Any, size: int, cap: int | None = None) -> float:
    """Accumulate this share's weighted gradient into ``.grad``; returns its summed loss."""
    total = 0.0
    start = 0
    for n in micro_batches(size, cap):
        mean = tr.recipe.loss(tr.model, _slice(batch, start, start + n), tr.ctx)
        (mean * (n / tr.spec.global_batch)).backward()
        total += float(mean.detach()) * n
        start += n
    return total


def gradient_step(tr: Training) -> Callable[[int], object]:
    """``step(n)``: forward+backward of the first ``n`` samples of the training set (what
    :func:`~potluck.trainer.emulation.calibrate` times)."""
    def step(n: int) -> object:
        tr.optimizer.zero_grad(set_to_none=True)
        return local_gradients(tr, tr.batch(np.arange(n)), n)

    return step


def params_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def global_batch_indices(spec: JobSpec, train_size: int, step: int) -> np.ndarray:
    """All indices of global step ``step``: one replica holding the whole batch."""
    return step_indices(step=step, seed=spec.seed, train_size=train_size,
                        global_batch=spec.global_batch, allocation={0: spec.global_batch}, slot=0)


def train_reference(spec: JobSpec, steps: int, *, emulator: Emulator | None = None,
                    warmup: int = 0) -> tuple[Training, float]:
    """One process training on the full global batches: what one big machine computes.

    Returns the training objects after ``warmup + steps`` steps and the samples/s of the last
    ``steps`` (with ``emulator`` padding each step). Warm-up steps (lazy initialisation, the
    allocator's first requests) are not timed: a cluster's throughput is measured from its
    first step on, so an ideal that counted them would be too low.
    """
    tr = build_training(spec)
    t0 = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        idx = global_batch_indices(spec, tr.train_size, step)
        started = time.perf_counter()
        tr.optimizer.zero_grad(set_to_none=True)
        local_gradients(tr, tr.batch(idx), len(idx))
        if emulator is not None:
            emulator.pad(len(idx), started)
        tr.optimizer.step()
    elapsed = time.perf_counter() - t0
    return tr, steps * spec.global_batch / elapsed
