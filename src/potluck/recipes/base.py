"""The Recipe plug point and its registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from potluck.contracts.errors import ModelError
from potluck.contracts.jobspec import JobSpec
from potluck.registry import Registry

Batch = Any
"""What :meth:`TrainData.take` returns and :meth:`Recipe.loss` receives (``(x, y)`` for built-ins)."""


@dataclass(frozen=True)
class RecipeContext:
    """What a recipe may depend on: the job, and where this replica runs."""

    spec: JobSpec
    device: str = "cpu"
    replica: str = "local"
    slot: int = 0

    @property
    def seed(self) -> int:
        return self.spec.seed


class TokenLoss(NamedTuple):
    """A loss whose number of terms varies per sample (padding, ``ignore_index``).

    ``sum`` is the summed loss over this batch's terms and ``count`` how many terms there are.
    potluck sums both across replicas and divides after the all-reduce, so the result is the
    one-machine mean over every term of the global batch. (A plain mean loss is weighted by
    the replica's share of samples instead, which is exact only when every sample has the
    same number of terms.)
    """

    sum: torch.Tensor
    count: int | float | torch.Tensor  # type: ignore[assignment]  # shadows tuple.count; public name


class SampleSet(Protocol):
    """What the replica loop needs of a training set: its size and a batch by indices."""

    def __len__(self) -> int: ...

    def take(self, indices: torch.Tensor) -> Any: ...


class TensorData:
    """A map-style data set over aligned tensors; ``take`` gathers a batch in one indexing op."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorData needs tensors of one common length")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t[indices] for t in self.tensors)


@dataclass(frozen=True)
class TrainData:
    """A recipe's data: the training set (positions of every epoch's permutation) and an eval set."""

    train: SampleSet
    test: SampleSet | None = None
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0


class Recipe:
    """What to train. Subclass and override; every method gets the same :class:`RecipeContext`.

    Contract: ``model`` and ``data`` must be deterministic functions of ``ctx.seed`` (every
    replica builds them independently and must get the same weights and samples).
    """

    name = "recipe"

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    def model(self, ctx: RecipeContext) -> nn.Module:
        """The model, built on CPU from ``ctx.seed``; the replica moves it to the device."""
        raise NotImplementedError

    def data(self, ctx: RecipeContext) -> TrainData:
        """The training set and (optionally) the eval set."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch, ctx: RecipeContext) -> torch.Tensor | TokenLoss:
        """Mean loss over ``batch`` (a scalar tensor; the replica weights it by ``b_r / B``),
        or a :class:`TokenLoss` when the number of loss terms varies per sample."""
        raise NotImplementedError

    def optimizer(self, params: Iterable[nn.Parameter], ctx: RecipeContext) -> torch.optim.Optimizer:
        """The optimizer (default: SGD with the job's ``optimizer`` section)."""
        opt = ctx.spec.optimizer
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum)

    def scheduler(self, optimizer: torch.optim.Optimizer, ctx: RecipeContext) -> Any:
        """A learning-rate scheduler stepped once per committed step (default: none)."""
        return None

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TrainData, ctx: RecipeContext) -> dict[str, float]:
        """Numbers about the trained model (default: none)."""
        return {}

    def extra_state(self) -> Any:
        """Plain-data state beyond model and optimizer that must heal and checkpoint with them."""
        return None

    def load_extra_state(self, state: Any) -> None:
        del state

    def check(self) -> None:
        """Raise ConfigError if ``self.spec`` names something this recipe cannot build.
        Cheap: called on submission, before anything is built."""


RECIPES: Registry[type[Recipe]] = Registry("model", ModelError)


def register_recipe(name: str) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator: make ``--model name`` build this recipe."""
    return RECIPES.register(name)


def registered_recipes() -> tuple[str, ...]:
    return RECIPES.names()


def recipe_for(spec: JobSpec, code_root: str | Path | None = None) -> Recipe:
    """The job file's recipe when ``spec.code.file`` is set (its bundle unpacked at
    ``code_root``), else the built-in for ``spec.model.name``. Raises ModelError naming the
    known ones."""
    if spec.code.file is not None:
        from potluck.recipes.jobfile import JobFileRecipe

        return JobFileRecipe(spec, code_root)
    return RECIPES.get(spec.model.name)(spec)


def check_spec(spec: JobSpec) -> JobSpec:
    """Check the names in ``spec`` against the kernel's registries (model, data set, sync).

    Cheap (builds nothing); the coordinator calls it on submission, launchers before start.
    """
    from potluck.trainer.sync import strategy_class

    recipe_for(spec).check()  # the recipe knows which data sets it can build
    strategy_class(spec.sync.strategy)
    return spec
