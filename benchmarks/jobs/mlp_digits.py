"""The built-in ``mlp`` on ``digits`` written as a job file (benchmarks/jobfile.py compares the two)."""

import math

import torch
from torch.nn import functional as F

from potluck.data import load_dataset
from potluck.recipes.models import MLP


class Digits:
    def __init__(self, seed: int) -> None:
        d = load_dataset("digits", seed=seed, test_fraction=0.2)
        self.x, self.y = d.train_x, d.train_y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def dataset(ctx):
    return Digits(ctx.seed)


def model(ctx):
    d = Digits(ctx.seed)
    return MLP(math.prod(d.x.shape[1:]), 10)


def loss(model, batch, ctx):
    x, y = batch
    return F.cross_entropy(model(x), y)


def optimizer(params, ctx):
    return torch.optim.SGD(params, lr=ctx.spec.optimizer.lr, momentum=ctx.spec.optimizer.momentum)
