"""Channel alignment ``T_i^l`` (paper §3.2, Eq. 1).

Each source's weight ``W_i`` (C_out, ...) is re-mixed along its output-channel axis by a learnable
``C_out x C_out`` matrix — a 1x1 convolution applied to the weights, not to the activations:
``W~_i = T_i W_i``. Sources trained on different data may use channel ``c`` for different
features; ``T_i`` lets the target re-order and blend them before aggregation.

``T_i`` is stored as ``I + D_i`` with ``D_i`` initialised to zero, which is the paper's identity
initialisation. Storing the offset means that weight decay pulls ``T_i`` towards the identity
(the untouched source) rather than towards zero (which would erase the source), and the
parameter count and maths are unchanged. A bias, having the same output-channel axis, is aligned
by the same ``T_i`` (it is the extra last column of the flattened weight).
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAlign(nn.Module):
    """``m`` alignment matrices ``T_i = I + D_i`` acting on the output channels of a weight."""

    def __init__(self, num_sources: int, channels: int) -> None:
        super().__init__()
        self.num_sources = num_sources
        self.channels = channels
        self.delta = nn.Parameter(torch.empty(num_sources, channels, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.delta)

    def matrices(self) -> torch.Tensor:
        """The alignment matrices ``T`` (m, C, C)."""
        eye = torch.eye(self.channels, dtype=self.delta.dtype, device=self.delta.device)
        return self.delta + eye

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (m, C_out, *) -> ``T_i w_i`` for every source, same shape."""
        m, c = w.shape[:2]
        flat = w.reshape(m, c, -1)
        return torch.baddbmm(flat, self.delta, flat).view(w.shape)

    def extra_repr(self) -> str:
        return f"num_sources={self.num_sources}, channels={self.channels}"
