"""Variable-length sequences, padded: the number of loss terms differs per sample."""

import torch
from torch import nn
from torch.nn import functional as F

import potluck

POTLUCK = {"global_batch": 30, "steps": 4, "lr": 0.5}
PAD = -100
MEAN_LOSS = False  # the test flips this to show a mean loss is not exact


class Sequences:
    def __init__(self, n: int = 120) -> None:
        g = torch.Generator().manual_seed(3)
        self.lengths = torch.randint(1, 12, (n,), generator=g)
        self.tokens = torch.randint(0, 10, (n, 12), generator=g)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int):
        x = self.tokens[i].clone()
        y = (x + 1) % 10
        y[self.lengths[i]:] = PAD
        return x, y


def dataset(ctx):
    return Sequences()


def model(ctx):
    return nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))


def loss(model, batch, ctx):
    x, y = batch
    logits = model(x).reshape(-1, 10)
    if MEAN_LOSS:
        return F.cross_entropy(logits, y.reshape(-1), ignore_index=PAD)
    total = F.cross_entropy(logits, y.reshape(-1), ignore_index=PAD, reduction="sum")
    return potluck.TokenLoss(total, int((y != PAD).sum()))
