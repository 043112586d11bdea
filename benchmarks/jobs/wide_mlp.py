"""A 5.2M-parameter MLP on the digits (benchmarks/slow_link.py): 21 MB of fp32 gradients, so a
ring all-reduce among three takes about 13 s over 20 Mbit/s links."""

import torch
from torch.nn import functional as F

from potluck.data import load_dataset
from potluck.recipes.models import MLP

WIDTH = 2240


class Digits:
    def __init__(self, seed: int) -> None:
        d = load_dataset("digits", seed=seed, test_fraction=0.2)
        self.x, self.y = d.train_x.flatten(1), d.train_y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def dataset(ctx):
    return Digits(ctx.seed)


def model(ctx):
    return MLP(64, 10, hidden=WIDTH)


def loss(model, batch, ctx):
    x, y = batch
    return F.cross_entropy(model(x), y)


def evaluate(model, ctx):
    d = load_dataset("digits", seed=ctx.seed, test_fraction=0.2)
    with torch.no_grad():
        logits = model(d.test_x.flatten(1))
    return {"test_loss": F.cross_entropy(logits, d.test_y).item(),
            "test_accuracy": (logits.argmax(1) == d.test_y).float().mean().item()}
