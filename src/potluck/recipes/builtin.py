"""The built-in image classifiers (``mlp``, ``simple_cnn``, ``resnet18``, ``resnet50``) on the
built-in image data sets, and the name checks every built-in recipe shares."""

from __future__ import annotations

import math

import torch
from torch import nn

from potluck.catalog import check_model
from potluck.data import load_dataset
from potluck.recipes.base import (
    Batch,
    Recipe,
    RecipeContext,
    TensorData,
    TrainData,
    register_recipe,
)
from potluck.recipes.models import MLP, ByteImages, SimpleCNN, seeded
from potluck.recipes.resnet import resnet18, resnet50

EVAL_CHUNK = 1024
"""Test samples per forward pass when evaluating (bounds the memory of a large test set)."""


@torch.no_grad()
def chunked_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, limit: int
                   ) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model(x)`` against ``y`` (class ids; for sequences
    one per position, -100 to skip one), over the first ``limit`` samples, in chunks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss = correct = count = 0.0
    try:
        for start in range(0, min(len(x), limit), EVAL_CHUNK):
            stop = min(start + EVAL_CHUNK, len(x), limit)
            logits = model(x[start:stop].to(device)).flatten(0, -2)
            target = y[start:stop].to(device).flatten()
            keep = target != -100
            loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += float((logits.argmax(dim=-1) == target)[keep].sum())
            count += float(keep.sum())
    finally:
        model.train(was_training)
    if not count:
        return {}
    return {"test_loss": loss / count, "test_accuracy": correct / count}


class Classifier(Recipe):
    """Cross-entropy classification of ``data.name`` (digits, synthetic_image, cifar10)."""

    _data: TrainData | None = None
    eval_limit = 10_000
    """Test samples evaluated at the end (all of CIFAR-10's test batch)."""

    def check(self) -> None:
        check_model(self.spec)

    def data(self, ctx: RecipeContext) -> TrainData:
        if self._data is None:  # model() needs the shapes too: load once
            d = load_dataset(ctx.spec.data.name, seed=ctx.seed,
                             test_fraction=ctx.spec.data.test_fraction, path=ctx.spec.data.path)
            self._data = TrainData(train=TensorData(d.train_x, d.train_y),
                                   test=TensorData(d.test_x, d.test_y),
                                   input_shape=d.input_shape, num_classes=d.num_classes)
        return self._data

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        raise NotImplementedError

    def model(self, ctx: RecipeContext) -> nn.Module:
        data = self.data(ctx)
        net = seeded(ctx.seed, lambda: self.build(data.input_shape, data.num_classes))
        assert isinstance(data.train, TensorData)  # data() builds tensors
        if data.train.tensors[0].dtype == torch.uint8:  # images kept as bytes (cifar10)
            net = nn.Sequential(ByteImages(), net)
        return net

    def loss(self, model: nn.Module, batch: Batch, ctx: RecipeContext) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TrainData, ctx: RecipeContext) -> dict[str, float]:
        if not isinstance(data.test, TensorData):  # data() builds tensors, or no test split
            return {}
        x, y = data.test.tensors
        return chunked_scores(model, x, y, self.eval_limit)


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


@register_recipe("resnet18")
class ResNet18Classifier(Classifier):
    name = "resnet18"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return resnet18(input_shape[0], max(input_shape[1:]), num_classes)


@register_recipe("resnet50")
class ResNet50Classifier(Classifier):
    name = "resnet50"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return resnet50(input_shape[0], max(input_shape[1:]), num_classes)
