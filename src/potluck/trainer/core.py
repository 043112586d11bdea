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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from potluck.balancer.policy import micro_batches
from potluck.contracts.jobspec import JobSpec
from potluck.recipes import Recipe, RecipeContext, TokenLoss, TrainData, recipe_for
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
    scheduler: Any = None

    @property
    def train_size(self) -> int:
        return len(self.data.train)

    def update(self) -> None:
        """Apply the combined gradient in ``.grad``: clip the global gradient (when the job
        says so), step the optimizer, then the scheduler (once per committed step)."""
        clip = self.spec.optimizer.clip_grad_norm
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, scheduler and the recipe's extra state (plain data and tensors)."""
        return {"model": self.model.state_dict(), "optim": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "extra": self.recipe.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if "optim" in state:  # a local-update job's peers send no inner optimizer state
            self.optimizer.load_state_dict(state["optim"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.recipe.load_extra_state(state.get("extra"))

    def batch(self, indices: np.ndarray) -> Any:
        """The training samples at ``indices``, on this replica's device."""
        return to_device(self.data.train.take(torch.from_numpy(indices)), self.ctx.device)


def build_training(spec: JobSpec, device: str = "cpu", *, replica: str = "local",
                   slot: int = 0, code_root: str | Path | None = None) -> Training:
    """Data, model and optimizer for ``spec``: identical on every replica for the same seed.
    ``code_root``: where the job's code bundle is unpacked (job files only)."""
    recipe = recipe_for(spec, code_root)
    ctx = RecipeContext(spec=spec, device=device, replica=replica, slot=slot)
    data = recipe.data(ctx)
    spe = steps_per_epoch(len(data.train), spec.global_batch)
    total = spec.total_steps(spe)
    model = recipe.model(ctx).to(device)
    optimizer = recipe.optimizer(model.parameters(), ctx)
    scheduler = recipe.scheduler(optimizer, ctx)
    return Training(spec, recipe, ctx, data, model, optimizer, spe, total, scheduler)


def planned_steps(spec: JobSpec, code_root: str | Path | None = None) -> int:
    """Committed steps ``spec`` will train (loads the data set to count an epoch; no model)."""
    if not spec.counts_epochs:
        return spec.total_steps(1)
    recipe = recipe_for(spec, code_root)
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


@dataclass(frozen=True)
class LocalLoss:
    """What :func:`local_gradients` accumulated."""

    loss_sum: float
    """Summed loss: over samples (mean losses) or over terms (TokenLoss)."""
    count: float
    """Samples (mean losses) or loss terms (TokenLoss)."""
    tokens: bool
    """True when the recipe returned TokenLoss: ``.grad`` holds the raw sum, to be divided by
    the global term count after the all-reduce."""


def local_gradients(tr: Training, batch: Any, size: int, cap: int | None = None, *,
                    total: int | None = None) -> LocalLoss:
    """Accumulate this share's gradient into ``.grad`` (micro-batches of at most ``cap``).

    A mean loss is weighted by ``n / B`` (so the all-reduced sum is the global mean); a
    :class:`TokenLoss` is back-propagated as its raw sum, and the caller divides by the global
    term count after the all-reduce (:func:`scale_gradients`). ``total`` replaces ``B`` in the
    weighting (local inner steps weight by their own batch)."""
    loss_sum = count = 0.0
    weight_of = total or tr.spec.global_batch
    tokens = False
    start = 0
    for n in micro_batches(size, cap):
        out = tr.recipe.loss(tr.model, _slice(batch, start, start + n), tr.ctx)
        if isinstance(out, TokenLoss):
            tokens = True
            out.sum.backward()
            loss_sum += float(out.sum.detach())
            count += float(out.count)
        else:
            if not isinstance(out, torch.Tensor) or out.numel() != 1:
                raise TypeError(f"loss() must return a scalar tensor or potluck.TokenLoss, got "
                                f"{type(out).__name__}")
            (out * (n / weight_of)).backward()
            loss_sum += float(out.detach()) * n
            count += n
        start += n
    return LocalLoss(loss_sum, count, tokens)


def gradient_step(tr: Training) -> Callable[[int], object]:
    """``step(n)``: forward+backward of the first ``n`` samples of the training set (what
    :func:`~potluck.trainer.emulation.calibrate` times)."""
    def step(n: int) -> object:
        tr.optimizer.zero_grad(set_to_none=True)
        return local_gradients(tr, tr.batch(np.arange(n)), n)

    return step


def scale_gradients(model: nn.Module, factor: float) -> None:
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(factor)


def _fold(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(str((value.dtype, tuple(value.shape))).encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            digest.update(str(k).encode())
            _fold(digest, value[k])
    elif isinstance(value, (list, tuple)):
        for v in value:
            _fold(digest, v)
    else:
        digest.update(repr(value).encode())


FINGERPRINT_SAMPLES = 4


def data_fingerprint(tr: Training) -> str:
    """sha256 of the training set's length and a few seeded samples: replicas that load
    different data (unseeded shuffles, different files) disagree here before step 0."""
    n = tr.train_size
    idx = np.random.default_rng([tr.spec.seed, 7]).choice(n, size=min(FINGERPRINT_SAMPLES, n),
                                                           replace=False)
    digest = hashlib.sha256(str(n).encode())
    _fold(digest, tr.data.train.take(torch.from_numpy(np.sort(idx))))
    return digest.hexdigest()


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
                    warmup: int = 0, code_root: str | Path | None = None) -> tuple[Training, float]:
    """One process training on the full global batches: what one big machine computes.

    Returns the training objects after ``warmup + steps`` steps and the samples/s of the last
    ``steps`` (with ``emulator`` padding each step). Warm-up steps (lazy initialisation, the
    allocator's first requests) are not timed: a cluster's throughput is measured from its
    first step on, so an ideal that counted them would be too low.
    """
    tr = build_training(spec, code_root=code_root)
    t0 = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        idx = global_batch_indices(spec, tr.train_size, step)
        started = time.perf_counter()
        tr.optimizer.zero_grad(set_to_none=True)
        done = local_gradients(tr, tr.batch(idx), len(idx))
        if done.tokens:
            scale_gradients(tr.model, 1.0 / max(done.count, 1.0))
        if emulator is not None:
            emulator.pad(len(idx), started)
        tr.update()
    elapsed = time.perf_counter() - t0
    return tr, steps * spec.global_batch / elapsed
