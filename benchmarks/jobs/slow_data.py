"""A data set whose ``__getitem__`` costs 1 ms (a file read and decode): does data stall compute?"""

import time

import torch
from torch import nn
from torch.nn import functional as F

GETITEM_S = 1e-3


class Slow:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(4096, 64, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        time.sleep(GETITEM_S)  # waiting on a disk or a decoder, not holding the GIL
        return self.x[i], self.y[i]


def dataset(ctx):
    return Slow()


def model(ctx):
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 2))


def loss(model, batch, ctx):
    x, y = batch
    return F.cross_entropy(model(x), y)
