"""A small CNN for tiny images (8x8 digits up to 32x32 glyphs): conv blocks + global pool + fc.

Used by example configs and tests; its classifier is the attribute ``fc`` like torchvision's
ResNets, so the classification head helper treats it the same way.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(min(4, c), c)
    return nn.Identity()


class SmallCNN(nn.Module):
    """``in_channels`` -> widths[0] -> ... (3x3 conv, norm, ReLU; stride 2 after the first) -> fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 widths: tuple[int, ...] = (16, 32, 64),
                 norm: Literal["batch", "group", "none"] = "batch") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=norm == "none"),
                       _norm(norm, w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def small_cnn(num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] | list[int] = (16, 32, 64),
              norm: Literal["batch", "group", "none"] = "batch") -> SmallCNN:
    return SmallCNN(num_classes, in_channels, tuple(widths), norm)
