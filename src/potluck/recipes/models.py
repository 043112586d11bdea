"""Built-in models in plain torch (their recipes are in ``recipes/builtin.py``; ResNets are in
``recipes/resnet.py``, transformers in ``recipes/transformer.py``).

No BatchNorm or dropout on purpose: a model whose output for a sample depends only on that
sample keeps the uneven split exact (the weighted update equals one big machine's).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SimpleCNN(nn.Module):
    def __init__(self, in_channels: int, size: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width * 2, width * 2, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 2 * 4, num_classes))
        del size  # the adaptive pool makes the head independent of the input size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ByteImages(nn.Module):
    """Maps uint8 pixels (data sets kept as bytes, like cifar10) to floats in [-1, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        return x.float().mul_(2.0 / 255.0).sub_(1.0)


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with weights drawn from ``seed``, leaving the global RNG as it was
    (every replica builds the same model)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(generator_state)
