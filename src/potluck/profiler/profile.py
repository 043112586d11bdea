"""Measure a device for a model: samples/s per batch size, forward/backward split, a fitted
cost model ``overhead_s + sample_s * b`` (what the ``proportional`` policy uses) and the
largest batch that fits (GPU: measured peak memory; CPU: activation bytes under a RAM budget).

Measuring only: the training kernel uses it (replicas profile their own device for the
``proportional`` policy), so it imports no UI library; the CLI renders the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from potluck.balancer.policy import Speed
from potluck.contracts.errors import ConfigError
from potluck.contracts.jobspec import JobSpec
from potluck.recipes import Recipe, RecipeContext, TokenLoss, recipe_for
from potluck.system import meminfo_bytes
from potluck.trainer.emulation import Emulator


@dataclass
class BatchTiming:
    batch: int
    forward_s: float
    backward_s: float
    optimizer_s: float
    samples_per_s: float


@dataclass
class DeviceProfile:
    device: str
    device_name: str
    model: str
    timings: list[BatchTiming] = field(default_factory=list)
    overhead_s: float = 0.0
    sample_s: float = 0.0
    bytes_per_sample: int = 0
    fixed_bytes: int = 0
    memory_budget_mb: float = 0.0
    max_batch: int = 0

    @property
    def speed(self) -> Speed:
        return Speed(self.overhead_s, self.sample_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _backward(loss: torch.Tensor | TokenLoss) -> None:
    """Back-propagate a recipe's loss: a :class:`TokenLoss` as its summed terms (as training does)."""
    (loss.sum if isinstance(loss, TokenLoss) else loss).backward()


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError as exc:
        raise ConfigError(f"--batch-sizes {text!r} is not a comma list of integers, e.g. 16,64,256") from exc
    if len(sizes) < 2 or sizes[0] < 1:
        raise ConfigError(f"--batch-sizes needs at least two sizes >= 1, got {text!r}")
    return sizes


def _available_ram_bytes() -> int:
    return meminfo_bytes("MemAvailable") or 4 << 30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_batch(recipe: Recipe, ctx: RecipeContext, model: nn.Module, opt: torch.optim.Optimizer,
                batch: tuple[torch.Tensor, ...], device: torch.device, repeats: int,
                emulator: Emulator | None = None) -> BatchTiming:
    size = len(batch[0])
    fwd, bwd, stp = [], [], []
    for i in range(repeats + 1):  # the first run warms up
        opt.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        loss = recipe.loss(model, batch, ctx)
        _sync(device)
        t1 = time.perf_counter()
        _backward(loss)
        _sync(device)
        if emulator is not None:  # an emulated slow device: its padding counts as backward
            emulator.pad(size, t0)
        t2 = time.perf_counter()
        opt.step()
        _sync(device)
        t3 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            stp.append(t3 - t2)
    f, b, s = (float(np.median(v)) for v in (fwd, bwd, stp))
    return BatchTiming(size, f, b, s, size / (f + b + s))


def _activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of every module output for ``x`` (kept for backward), measured with hooks."""
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return total + x.numel() * x.element_size()


def profile_device(*, model: str, dataset: str, device: str, batch_sizes: list[int],
                   memory_budget_mb: float | None = None, repeats: int = 5,
                   emulator: Emulator | None = None, job: JobSpec | None = None) -> DeviceProfile:
    """Profile ``device`` (optionally as an emulated slower device) for ``model``; the rest of
    the job (model size, data path, sequence length) comes from ``job`` (default: defaults)."""
    dev = torch.device(device)
    spec = (job or JobSpec()).updated({"model.name": model, "data.name": dataset})
    recipe = recipe_for(spec)
    ctx = RecipeContext(spec=spec, device=str(dev))
    data = recipe.data(ctx)
    net = recipe.model(ctx).to(dev)
    opt = recipe.optimizer(net.parameters(), ctx)
    n = len(data.train)

    def batch_of(b: int) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(dev) for t in data.train.take(torch.arange(b) % n))

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    prof = DeviceProfile(device=str(dev), device_name=name, model=model)
    for b in batch_sizes:
        prof.timings.append(_time_batch(recipe, ctx, net, opt, batch_of(b), dev, repeats, emulator))
    bs = np.array([t.batch for t in prof.timings], dtype=float)
    ts = np.array([t.forward_s + t.backward_s + t.optimizer_s for t in prof.timings])
    slope, intercept = np.polyfit(bs, ts, 1)
    prof.sample_s = float(max(slope, 1e-9))
    prof.overhead_s = float(max(intercept, 0.0))
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    prof.fixed_bytes = 3 * params  # weights, gradients, momentum
    if dev.type == "cuda":
        peaks = []
        for b in batch_sizes[-2:]:
            torch.cuda.reset_peak_memory_stats(dev)
            _backward(recipe.loss(net, batch_of(b), ctx))
            peaks.append(torch.cuda.max_memory_allocated(dev))
        prof.bytes_per_sample = max(1, int((peaks[1] - peaks[0]) / max(batch_sizes[-1] - batch_sizes[-2], 1)))
        budget = memory_budget_mb * 2**20 if memory_budget_mb else 0.9 * torch.cuda.get_device_properties(dev).total_memory
    else:
        small = batch_sizes[0]
        # Activations are kept once for backward and their gradients take as much again.
        prof.bytes_per_sample = max(1, 2 * _activation_bytes(net, batch_of(small)[0]) // small)
        budget = memory_budget_mb * 2**20 if memory_budget_mb else 0.5 * _available_ram_bytes()
    prof.memory_budget_mb = round(budget / 2**20, 1)
    prof.max_batch = max(0, int((budget - prof.fixed_bytes) // prof.bytes_per_sample))
    return prof


def _devices(device: str) -> list[str]:
    if device == "auto":
        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is visible to torch on this machine; use --device cpu")
        return [device]
    raise ConfigError(f"--device {device!r} is not cpu, cuda, cuda:N or auto")


def profile_devices(*, model: str, dataset: str, batch_sizes: list[int], device: str = "auto",
                    memory_budget_mb: float | None = None,
                    on_device: Callable[[str], None] | None = None) -> list[DeviceProfile]:
    """Profile every device ``device`` names; ``on_device(name)`` is called before each one."""
    if memory_budget_mb is not None and not memory_budget_mb > 0:
        raise ConfigError(f"--memory-budget-mb must be > 0, got {memory_budget_mb}")
    out = []
    for dev in _devices(device):
        if on_device is not None:
            on_device(dev)
        out.append(profile_device(model=model, dataset=dataset, device=dev,
                                  batch_sizes=batch_sizes, memory_budget_mb=memory_budget_mb))
    return out
