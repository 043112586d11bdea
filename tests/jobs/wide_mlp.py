"""A wide MLP on the digits (2.5M parameters): big enough that an all-reduce over a 20 Mbit/s
link takes seconds (tests/cluster/test_slow_link.py)."""

from torch.nn import functional as F

from potluck.data import load_dataset
from potluck.recipes.models import MLP

WIDTH = 1536


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
