"""The built-in recipes: image classifiers (``mlp``, ``simple_cnn``) on the built-in data sets."""

from __future__ import annotations

import math

import torch
from torch import nn

from potluck.contracts.errors import DataError
from potluck.data import DATASETS, load_dataset
from potluck.recipes.base import (
    Batch,
    Recipe,
    RecipeContext,
    TensorData,
    TrainData,
    register_recipe,
)
from potluck.recipes.models import MLP, SimpleCNN, seeded


class Classifier(Recipe):
    """Cross-entropy classification of ``data.name`` (digits, synthetic_image)."""

    _data: TrainData | None = None

    def check(self) -> None:
        if self.spec.data.name not in DATASETS:
            raise DataError(f"unknown data set {self.spec.data.name!r}: choose one of "
                            f"{', '.join(DATASETS)}")

    def data(self, ctx: RecipeContext) -> TrainData:
        if self._data is None:  # model() needs the shapes too: load once
            d = load_dataset(ctx.spec.data.name, seed=ctx.seed,
                             test_fraction=ctx.spec.data.test_fraction)
            self._data = TrainData(train=TensorData(d.train_x, d.train_y),
                                   test=TensorData(d.test_x, d.test_y),
                                   input_shape=d.input_shape, num_classes=d.num_classes)
        return self._data

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        raise NotImplementedError

    def model(self, ctx: RecipeContext) -> nn.Module:
        data = self.data(ctx)
        return seeded(ctx.seed, lambda: self.build(data.input_shape, data.num_classes))

    def loss(self, model: nn.Module, batch: Batch, ctx: RecipeContext) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TrainData, ctx: RecipeContext) -> dict[str, float]:
        if data.test is None:
            return {}
        x, y = data.test.tensors
        was_training = model.training
        model.eval()
        logits = model(x)
        model.train(was_training)
        return {"test_loss": float(nn.functional.cross_entropy(logits, y)),
                "test_accuracy": float((logits.argmax(dim=1) == y).float().mean())}


@register_recipe("mlp")
class MLPClassifier(Classifier):
    name = "mlp"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return MLP(math.prod(input_shape), num_classes)


@register_recipe("simple_cnn")
class CNNClassifier(Classifier):
    name = "simple_cnn"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return SimpleCNN(input_shape[0], input_shape[-1], num_classes)
