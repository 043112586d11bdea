"""SyncStrategy: how replicas combine each step's work. The first strategy is the exact one.

The replica loop computes this replica's weighted gradients, then hands a :class:`LocalWork`
to its strategy's :meth:`SyncStrategy.sync`, which must (1) combine the work with the peers',
(2) let torchft vote on the step, (3) apply the update if the step committed, and (4) return
every member's measurements so each replica's balancer sees identical inputs. A new way to
synchronise (local updates, compressed transfers) is a subclass plus one
:func:`register_sync` call; the replica loop does not change.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributed import ReduceOp

from potluck.contracts.errors import ConfigError, ReplicaMismatchError
from potluck.contracts.jobspec import JobSpec
from potluck.registry import Registry
from potluck.trainer.codec import encoded_bytes


@dataclass(frozen=True)
class LocalWork:
    """What this replica did this step (its gradients are in the model's ``.grad``)."""

    slot: int
    samples: int
    compute_s: float
    loss_sum: float
    """Sum of the per-sample losses over this replica's samples."""
    profile: tuple[float, float] = (0.0, 0.0)
    """``(overhead_s, sample_s)`` from a profile, shared with peers (zeros: none)."""
    loss_count: float = 0.0
    """Loss terms behind ``loss_sum`` when ``tokens`` (TokenLoss), else samples."""
    tokens: bool = False
    """The gradients are raw sums over ``loss_count`` terms (TokenLoss): divide by the
    global count after the all-reduce."""
    identity: tuple[str, str] | None = None
    """``(params sha256, data fingerprint)`` before the first step: every member must agree."""


@dataclass(frozen=True)
class PeerStats:
    samples: int
    compute_s: float
    profile: tuple[float, float]


@dataclass
class SyncResult:
    """The outcome of one step's sync; identical on every replica of a committed step."""

    committed: bool
    peers: dict[int, PeerStats] = field(default_factory=dict)
    """Every member's measurements by slot (committed steps only)."""
    loss: float | None = None
    """Mean training loss over the whole global batch (committed steps only)."""
    sync_s: float = 0.0
    """Seconds in the collective, waiting for slower peers included."""
    commit_s: float = 0.0
    sync_bytes: int = 0
    """Bytes of this replica's contribution (its values in the wire format and its
    statistics): the link carries ``2 (N - 1) / N`` times this per member in a ring
    all-reduce, ``N - 1`` times in int8's all-gather."""
    error: str | None = None


class SyncStrategy(ABC):
    """One replica's side of the step synchronisation, driven by a torchft ``Manager``."""

    name = "sync"
    exact = True
    """The result is what one machine computes (up to float summation order)."""
    local_phase = False
    """True: the replica calls ``phase()`` (local training) before each quorum, and one
    torchft step is one phase (see trainer/diloco.py); False: one step is one global batch."""
    pg: Any = None
    """The replica group's process group (set by the replica; collectives beyond all-reduce)."""

    def __init__(self, spec: JobSpec, model: nn.Module, optimizer: torch.optim.Optimizer,
                 manager: Any, device: str = "cpu", update: Callable[[], None] | None = None) -> None:
        """``update`` applies the combined gradient (clip, optimizer, scheduler); default:
        ``optimizer.step()``."""
        self.spec = spec
        self.model = model
        self.optimizer = optimizer
        self.manager = manager
        self.device = device
        self.update = update or optimizer.step

    @abstractmethod
    def sync(self, work: LocalWork, members: list[int]) -> SyncResult:
        """Combine ``work`` with the peers' and apply the update if the step commits.

        Called once per step, after backward, by every member. This is a sync point: it
        returns when every member has contributed (or the step failed).
        """

    def state_dict(self) -> dict[str, Any]:
        """Strategy state a recovering replica must receive (default: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


STRATEGIES: Registry[type[SyncStrategy]] = Registry("sync strategy", ConfigError)


def register_sync(name: str) -> Callable[[type[SyncStrategy]], type[SyncStrategy]]:
    """Class decorator: make ``sync.strategy: name`` use this strategy."""
    return STRATEGIES.register(name)


def sync_strategies() -> tuple[str, ...]:
    strategy_class("allreduce")
    return (*STRATEGIES.names(), AUTO)


def make_sync(spec: JobSpec, model: nn.Module, optimizer: torch.optim.Optimizer, manager: Any,
              device: str = "cpu", update: Callable[[], None] | None = None) -> SyncStrategy:
    """The job's strategy for this replica (``auto`` starts as ``allreduce`` until the replica
    has measured the link). Raises ConfigError for an unknown name."""
    name = "allreduce" if spec.sync.strategy == AUTO else spec.sync.strategy
    return strategy_class(name)(spec, model, optimizer, manager, device, update)


AUTO = "auto"
"""Not a strategy: the replica chooses one from the measured link (trainer/plan.py)."""


def strategy_class(name: str) -> type[SyncStrategy]:
    from potluck.trainer import diloco  # noqa: F401  (registers diloco)

    if name == AUTO:
        return STRATEGIES.get("allreduce")
    return STRATEGIES.get(name)


# Per-slot statistics appended to the gradient buffer. Only the owner writes its slot, so the
# SUM is an exact copy of every replica's numbers on every replica. IDENT* hold 20-bit pieces
# of the parameter digest and data fingerprint (exact in float32) before the first step.
(PRESENT, SAMPLES, COMPUTE_S, LOSS_SUM, PROFILE_A, PROFILE_C, COUNT, TOKENS,
 IDENT_P0, IDENT_P1, IDENT_D0, IDENT_D1) = range(12)
STAT_WIDTH = 12


def sync_bytes(values: int, wire: str, slots: int) -> int:
    """Bytes one member contributes to a sync of ``values`` numbers as ``wire`` plus the
    float32 statistics table of ``slots`` slots."""
    return encoded_bytes(values, wire) + 4 * slots * STAT_WIDTH


def identity_code(hexdigest: str) -> tuple[float, float]:
    """Two 20-bit pieces (+1, so 0 means "not sent") of a hex digest."""
    bits = int(hexdigest[:10], 16)
    return float((bits >> 20) + 1), float((bits & 0xFFFFF) + 1)


def check_identity(stats: torch.Tensor, members: list[int]) -> None:
    """Raise ReplicaMismatchError unless every member that sent an identity sent the same."""
    for cols, what, cause in (
        ((IDENT_P0, IDENT_P1), "initial parameters",
         "model(ctx) is not a deterministic function of ctx.seed (unseeded randomness such as "
         "torch.rand, or different code or versions on the nodes)"),
        ((IDENT_D0, IDENT_D1), "training data",
         "dataset(ctx) differs between nodes (unseeded shuffling, or different data files)"),
    ):
        groups: dict[tuple[int, ...], list[int]] = {}
        for s in members:
            code = tuple(int(stats[s, c]) for c in cols)
            if all(code):
                groups.setdefault(code, []).append(s)
        if len(groups) > 1:
            parts = " vs ".join("slot" + ("s " if len(g) > 1 else " ") + ", ".join(map(str, g))
                                for g in groups.values())
            raise ReplicaMismatchError(f"replicas built different {what} ({parts}): {cause}")


@register_sync("allreduce")
class WeightedAllReduce(SyncStrategy):
    """Exact: one SUM all-reduce of the weighted gradients plus every member's statistics.

    Each replica's gradients are already weighted by ``b_r / B``, so the sum is the mean
    gradient over the global batch, the update one big machine computes.
    """

    name = "allreduce"
    wire = "fp32"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params = list(self.model.parameters())
        self.numel = sum(p.numel() for p in self.params)
        self.slots = self.spec.fault.max_replicas
        self.bytes = sync_bytes(self.numel, self.wire, self.slots)

    def _flat(self) -> torch.Tensor:
        out = torch.zeros(self.numel + self.slots * STAT_WIDTH, dtype=torch.float32)
        offset = 0
        for p in self.params:
            n = p.numel()
            if p.grad is not None:
                out[offset : offset + n].copy_(p.grad.detach().reshape(-1))
            offset += n
        return out

    def _unflat(self, flat: torch.Tensor) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(self.device).clone()
            offset += n

    def _combine(self, buf: torch.Tensor) -> None:
        """SUM ``buf`` (gradients, then statistics) over the members, in place."""
        self.manager.allreduce(buf, reduce_op=ReduceOp.SUM).wait()

    def sync(self, work: LocalWork, members: list[int]) -> SyncResult:
        buf = self._flat()
        mine = self.numel + work.slot * STAT_WIDTH
        ident = (*identity_code(work.identity[0]), *identity_code(work.identity[1])) \
            if work.identity else (0.0, 0.0, 0.0, 0.0)
        buf[mine : mine + STAT_WIDTH] = torch.tensor(
            [1.0, work.samples, work.compute_s, work.loss_sum, work.profile[0], work.profile[1],
             work.loss_count, float(work.tokens), *ident], dtype=torch.float64).float()
        t0 = time.perf_counter()
        self._combine(buf)
        t1 = time.perf_counter()
        committed = self.manager.should_commit()
        result = SyncResult(committed=committed, sync_s=t1 - t0, commit_s=time.perf_counter() - t1,
                            sync_bytes=self.bytes)
        if not committed:
            result.error = str(self.manager.errored())
            return result
        stats = buf[self.numel :].view(self.slots, STAT_WIDTH)
        check_identity(stats, members)  # before the update: a mismatch changes nothing
        grads = buf[: self.numel]
        if float(stats[:, TOKENS].sum()) > 0:  # TokenLoss: divide by the global term count
            count = max(float(stats[:, COUNT].sum()), 1.0)
            grads.div_(count)
            result.loss = float(stats[:, LOSS_SUM].sum()) / count
        else:
            result.loss = float(stats[:, LOSS_SUM].sum()) / self.spec.global_batch
        self._unflat(grads)
        self.update()
        result.peers = {
            s: PeerStats(int(round(float(stats[s, SAMPLES]))), float(stats[s, COMPUTE_S]),
                         (float(stats[s, PROFILE_A]), float(stats[s, PROFILE_C])))
            for s in members if stats[s, PRESENT] > 0.5
        }
        return result


@register_sync("allreduce-bf16")
class HalfAllReduce(WeightedAllReduce):
    """The exact strategy's weighting with the gradients sent as bf16: half the bytes, each
    value rounded to 8 significant bits (approximate). The statistics stay fp32."""

    name = "allreduce-bf16"
    wire = "bf16"
    exact = False

    def _combine(self, buf: torch.Tensor) -> None:
        grads, stats = buf[: self.numel], buf[self.numel :]
        self.manager.allreduce(stats, reduce_op=ReduceOp.SUM).wait()
        half = grads.to(torch.bfloat16)
        self.manager.allreduce(half, reduce_op=ReduceOp.SUM).wait()
        grads.copy_(half.float())
