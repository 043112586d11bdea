"""Built-in models in plain torch.

No BatchNorm or dropout on purpose: a model whose output for a sample depends only on that
sample keeps the uneven split exact (the weighted update equals one big machine's).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from potluck.errors import ModelError

MODELS = ("mlp", "simple_cnn")


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


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build ``name`` with weights drawn from ``seed`` (every replica builds the same model)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if name == "mlp":
            model: nn.Module = MLP(math.prod(input_shape), num_classes)
        elif name == "simple_cnn":
            model = SimpleCNN(input_shape[0], input_shape[-1], num_classes)
        else:
            raise ModelError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    finally:
        torch.random.set_rng_state(generator_state)
    return model
