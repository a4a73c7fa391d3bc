"""Gating network ``A_i^l`` of an AdaAgg layer (paper §3.2, Eq. 2).

``a = act(fc2(relu(fc1(pool(h)))))`` gives one value per source model for every sample. The paper
uses global average pooling and two 1x1 convolutions; on a pooled ``(B, C, 1, 1)`` map a 1x1
convolution is exactly a Linear layer, so Linear layers are used for both convolutions and Linear
layers (for a Linear layer the input is pooled over every axis except batch and features).

Kinds (``kind=``):

* ``"sigmoid"``: the paper's independent sigmoids. At a uniform start every gate is 0.5, so the
  aggregated weight is ``m/2`` times the source average: a following BatchNorm absorbs the scale,
  a Linear layer without a norm after it does not.
* ``"normalized"``: the same sigmoids divided by their sum, so the gates are a convex combination
  (sum 1) and a uniform start equals plain weight averaging. Independent sigmoids still decide
  how much each source gets; only the overall scale is removed.
* ``"softmax"``: a softmax over sources (the mixture-of-experts convention).

Initialisations (``init=``):

* ``"uniform"``: the output layer starts at zero, so every sample starts with equal gates and the
  gates move away from uniform only as far as the target loss asks;
* ``"kaiming"``: Kaiming-normal (fan-out) weights and zero biases in both layers, as the public
  reference code does; gates start sharp and vary strongly between inputs;
* ``"default"``: PyTorch's default Linear initialisation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

GateKind = Literal["sigmoid", "normalized", "softmax"]
GateInit = Literal["uniform", "kaiming", "default"]
GATE_KINDS = ("sigmoid", "normalized", "softmax")
GATE_INITS = ("uniform", "kaiming", "default")


def default_hidden(in_features: int) -> int:
    """Hidden width of the gate: a quarter of the input channels, plus one (as the reference)."""
    return in_features // 4 + 1


class Gate(nn.Module):
    """Per-sample gates ``a`` (B, m) from a layer input (``A^l(h^{l-1})`` in Eq. 2)."""

    def __init__(
        self,
        in_features: int,
        num_sources: int,
        hidden: int | None = None,
        kind: GateKind = "normalized",
        init: GateInit = "uniform",
    ) -> None:
        super().__init__()
        if kind not in GATE_KINDS:
            raise ValueError(f"gate kind {kind!r} is not one of {GATE_KINDS}")
        if init not in GATE_INITS:
            raise ValueError(f"gate init {init!r} is not one of {GATE_INITS}")
        hidden = default_hidden(in_features) if hidden is None else int(hidden)
        if hidden < 1:
            raise ValueError(f"gate hidden size must be >= 1, got {hidden}")
        self.kind = kind
        self.init = init
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_sources)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()
        if self.init == "kaiming":
            for fc in (self.fc1, self.fc2):
                nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(fc.bias)
        elif self.init == "uniform":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "softmax":
            return torch.softmax(logits, dim=-1)
        s = torch.sigmoid(logits)
        if self.kind == "normalized":
            s = s / s.sum(dim=-1, keepdim=True)
        return s

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled`` (B, C_in) -> gates (B, m)."""
        return self.activate(self.fc2(F.relu(self.fc1(pooled))))

    @torch.no_grad()
    def neutral(self) -> torch.Tensor:
        """Gates for an all-zero pooled input: the prior used before any gate was observed."""
        z = torch.zeros(1, self.fc1.in_features, device=self.fc1.weight.device,
                        dtype=self.fc1.weight.dtype)
        return self.forward(z)[0]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, init={self.init}"


def pool_conv_input(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a (B, C, H, W) input -> (B, C)."""
    return x.mean(dim=(-2, -1))


def pool_linear_input(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but batch and features of a (B, *, F) input -> (B, F)."""
    if x.dim() == 2:
        return x
    return x.flatten(1, -2).mean(dim=1)
