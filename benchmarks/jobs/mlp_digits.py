"""The built-in ``mlp`` on ``digits`` written as a job file (benchmarks/jobfile.py compares the
two). ``PER_SAMPLE`` selects a data set with a Python ``__getitem__`` per sample instead of a
``TensorDataset`` (which potluck gathers in one indexing operation, like the built-ins)."""

import math
import os

import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from potluck.data import load_dataset
from potluck.recipes.models import MLP

PER_SAMPLE = os.environ.get("POTLUCK_BENCH_PER_SAMPLE") == "1"


class Digits:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def dataset(ctx):
    d = load_dataset("digits", seed=ctx.seed, test_fraction=0.2)
    return Digits(d.train_x, d.train_y) if PER_SAMPLE else TensorDataset(d.train_x, d.train_y)


def model(ctx):
    d = load_dataset("digits", seed=ctx.seed, test_fraction=0.2)
    return MLP(math.prod(d.train_x.shape[1:]), 10)


def loss(model, batch, ctx):
    x, y = batch
    return F.cross_entropy(model(x), y)


def optimizer(params, ctx):
    return torch.optim.SGD(params, lr=ctx.spec.optimizer.lr, momentum=ctx.spec.optimizer.momentum)
