"""ResNet-18 and ResNet-50 (He et al., 2015) in plain torch.

The standard architecture (basic blocks 2-2-2-2, bottleneck blocks 3-4-6-3, widths
64-128-256-512, stride on the 3x3 convolution) with two changes:

* GroupNorm (32 groups) where the paper has BatchNorm: a sample's output must depend on that
  sample only, or an uneven split of the batch across replicas would change the update. The
  parameter count is the same (a scale and a shift per channel).
* Images of at most 64 pixels get a 3x3 stride-1 stem without max-pool (the usual CIFAR
  variant), so an 8x8 digit or a 32x32 CIFAR image keeps its resolution into the first stage.

The last normalisation of each residual branch starts at zero, so every block starts as the
identity (Goyal et al., 2017), which trains well without BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

SMALL_IMAGE = 64
"""Inputs up to this many pixels a side get the 3x3 stem without max-pool."""


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            _conv(cin, width, 3, stride), _norm(width), nn.ReLU(inplace=True),
            _conv(width, width, 3), _norm(width),
        )
        self.shortcut = _shortcut(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.branch = nn.Sequential(
            _conv(cin, width, 1), _norm(width), nn.ReLU(inplace=True),
            _conv(width, width, 3, stride), _norm(width), nn.ReLU(inplace=True),
            _conv(width, cout, 1), _norm(cout),
        )
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(_conv(cin, cout, 1, stride), _norm(cout))


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...],
                 in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        if image_size <= SMALL_IMAGE:
            self.stem = nn.Sequential(_conv(in_channels, 64, 3), _norm(64), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(_conv(in_channels, 64, 7, 2), _norm(64), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        stages: list[nn.Module] = []
        cin = 64
        for i, depth in enumerate(depths):
            width = 64 * 2**i
            for j in range(depth):
                stages.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.stages.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                last = m.branch[-1]
                assert isinstance(last, nn.GroupNorm)
                nn.init.zeros_(last.weight)  # each block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def resnet18(in_channels: int, image_size: int, num_classes: int) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, image_size, num_classes)


def resnet50(in_channels: int, image_size: int, num_classes: int) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, image_size, num_classes)
