"""The mini-zoo architecture: a small CNN (about 0.14M parameters) for 1x16x16 images.

Five 3x3 convolutions (each followed by BatchNorm and ReLU; max-pools after the first and the
third, so only the stem runs at full resolution: about 3.6M multiply-adds per image), global
average pooling and a linear classifier named ``head``. It has the ingredients Zoo-Tuning cares about — k>1 convs
(aligned by default), BatchNorm after every conv (which absorbs the scale of independent sigmoid
gates), and a task head that is replaced for the target (``zoo_tune(..., exclude=["head"])``) —
while training in seconds on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MiniCNN", "RESOLUTION"]

#: Input resolution of the demo (images are 1 x RESOLUTION x RESOLUTION, values in [0, 1]).
RESOLUTION = 16


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MiniCNN(nn.Module):
    """``features`` (conv-BN-ReLU x5, two 2x2 max-pools, global average pool) -> ``head`` (Linear).

    ``width`` is the channel count of the first convolutions (then 2x and 4x).
    """

    #: What the model expects (read by :mod:`zootune.zoo` when it builds a MiniCNN): grey-scale
    #: 16x16 images with values in [0, 1], not normalised (mean 0, std 1 is the identity).
    zootune_preprocessing = {"input_size": (1, RESOLUTION, RESOLUTION), "resize_size": RESOLUTION,
                             "mean": (0.0,), "std": (1.0,), "interpolation": "bilinear"}

    def __init__(self, num_classes: int, width: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(in_channels, w), nn.MaxPool2d(2),
            *_block(w, w), *_block(w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 2 * w), *_block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)
        self.num_classes = num_classes
        self.width = width

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
