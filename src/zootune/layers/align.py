"""Channel alignment ``T_i^l`` (paper §3.2, Eq. 1).

Each source's weight ``W_i`` (C_out, ...) is re-mixed along its output-channel axis by a learnable
``C_out x C_out`` matrix — a 1x1 convolution applied to the weights, not to the activations:
``W~_i = T_i W_i``. Sources trained on different data may use channel ``c`` for different
features; ``T_i`` lets the target re-order and blend them before aggregation.

``T_i`` is stored as ``I + D_i`` with ``D_i`` initialised to zero, which is the paper's identity
initialisation. Storing the offset means that weight decay pulls ``T_i`` towards the identity
(the untouched source) rather than towards zero (which would erase the source), and the
parameter count and maths are unchanged. A bias, having the same output-channel axis, is aligned
by the same ``T_i``.

Lite mode needs only the gated sum ``sum_i g_i T_i W_i`` (Eq. 5), never the aligned weights one
by one: :meth:`ChannelAlign.merge` computes it as one matrix product
``[g_1 T_1 .. g_m T_m] @ [W_1; ..; W_m]`` (the alignment folded into the merge), and its
backward as two more (:class:`AlignedMerge`) — the same FLOPs as aligning then merging, without
writing and re-reading the ``m`` aligned weights and their gradients.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


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
        return AlignedSources.apply(w, self.delta, None, None)

    def sources(
        self, w: torch.Tensor, b: torch.Tensor | None = None, values: tuple | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(T_i w_i, T_i b_i)`` for source weights ``w`` (m, C_out, ...) and biases ``b``
        (m, C_out) or None, as one autograd node (:class:`AlignedSources`). ``values``: these
        very results, computed earlier from the same parameters without autograd (a cache);
        they are returned as they are and only the backward is added."""
        if b is None:
            return AlignedSources.apply(w, self.delta, None, values), None
        return AlignedSources.apply(w, self.delta, b, values)

    def merge(
        self, w: torch.Tensor, gates: torch.Tensor, b: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``sum_i g_i T_i w_i`` (C_out, ...) and ``sum_i g_i T_i b_i`` (C_out,) for source
        weights ``w`` (m, C_out, ...), gates ``g`` (m,) and biases ``b`` (m, C_out) or None:
        Eq. 5 with the alignment folded in (:class:`AlignedMerge`)."""
        t, g = self.matrices().to(w.dtype), gates.to(w.dtype)
        if b is None:
            return AlignedMerge.apply(w, t, g), None
        return AlignedMerge.apply(w, t, g, b)

    def extra_repr(self) -> str:
        return f"num_sources={self.num_sources}, channels={self.channels}"


class AlignedMerge(torch.autograd.Function):
    """``W = sum_i g_i T_i W_i`` (and the bias alike) as ``Tg @ Ws`` with
    ``Tg = [g_1 T_1 .. g_m T_m]`` (C, m*C) and ``Ws`` the sources stacked (m*C, K).

    Backward, with ``G`` the gradient of ``W`` (C, K) and ``G_b`` of the bias:
    ``grad Ws = Tg^T G``; ``P = G Ws^T (+ G_b b^T)`` (C, m*C) with blocks ``P_i = G W_i^T``;
    ``grad T_i = g_i P_i``; ``grad g_i = <G, T_i W_i> = <T_i, P_i>``; ``grad b = Tg^T G_b``.
    (``T_i = I + D_i``: autograd carries ``grad T_i`` to ``D_i``.)
    """

    @staticmethod
    def forward(ctx, w, t, g, b=None):  # type: ignore[override]
        m, c = w.shape[:2]
        tg = AlignedMerge._tg(t, g)
        ctx.save_for_backward(w, t, g, b)
        merged = (tg @ w.reshape(m * c, -1)).view(w.shape[1:])
        if b is None:
            return merged
        return merged, tg @ b.to(w.dtype).reshape(m * c)

    @staticmethod
    def _tg(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``[g_1 T_1 .. g_m T_m]`` as one (C, m*C) matrix."""
        m, c = t.shape[:2]
        return (t * g.view(m, 1, 1)).transpose(0, 1).reshape(c, m * c)

    @staticmethod
    @once_differentiable
    def backward(ctx, gw, gb=None):  # type: ignore[override]
        w, t, g, b = ctx.saved_tensors
        m, c = w.shape[:2]
        need_w, need_t, need_g = ctx.needs_input_grad[:3]
        gw2 = gw.reshape(c, -1).to(w.dtype)
        tg = AlignedMerge._tg(t, g)
        grad_w = (tg.t() @ gw2).view(w.shape) if need_w else None
        grad_t = grad_g = None
        if need_t or need_g:
            p = gw2 @ w.reshape(m * c, -1).t()  # (C, m*C): block i = G W_i^T
            if b is not None and gb is not None:
                p.addr_(gb.to(w.dtype), b.to(w.dtype).reshape(m * c))
            pm = p.view(c, m, c).transpose(0, 1)  # (m, C, C): P_i
            grad_t = pm * g.view(m, 1, 1) if need_t else None
            grad_g = (pm * t).sum(dim=(1, 2)) if need_g else None
        grad_b = None
        if b is not None and ctx.needs_input_grad[3] and gb is not None:
            grad_b = (tg.t() @ gb.to(w.dtype)).view(m, c).to(b.dtype)
        return (grad_w, grad_t, grad_g, grad_b)[: len(ctx.needs_input_grad)]


class AlignedSources(torch.autograd.Function):
    """``A_i = W_i + D_i W_i`` and ``a_i = b_i + D_i b_i`` for every source (``T_i = I + D_i``).

    Backward, with ``G_i``, ``g_i`` the gradients of ``A_i``, ``a_i``: ``grad W_i = T_i^T G_i``,
    ``grad b_i = T_i^T g_i``, ``grad D_i = G_i W_i^T + g_i b_i^T``. One node instead of two
    ``baddbmm`` nodes and their views. Given ``values`` (the results, computed earlier from the
    same tensors), the forward computes nothing: an RL agent aligns once per update when it
    acts and its training forward reuses that (``AdaAggBase._aligned_for_forward``).
    """

    @staticmethod
    def forward(ctx, w, delta, b=None, values=None):  # type: ignore[override]
        ctx.save_for_backward(w, delta, b)
        if values is not None:  # fresh tensor objects: autograd attaches this node to them
            aw, ab = values[0].detach(), (values[1].detach() if b is not None else None)
        else:
            flat = w.reshape(*w.shape[:2], -1)
            aw = torch.baddbmm(flat, delta, flat).view(w.shape)
            ab = None
            if b is not None:
                b3 = b.unsqueeze(-1)
                ab = torch.baddbmm(b3, delta, b3).squeeze(-1)
        return (aw, ab) if b is not None else aw

    @staticmethod
    @once_differentiable
    def backward(ctx, gw, gb=None):  # type: ignore[override]
        w, delta, b = ctx.saved_tensors
        m, c = w.shape[:2]
        need_w, need_d, need_b = ctx.needs_input_grad[:3]
        g = gw.reshape(m, c, -1).to(w.dtype)  # under autocast the gradient comes in its dtype
        dt = delta.transpose(1, 2).to(w.dtype)
        grad_w = torch.baddbmm(g, dt, g).view(w.shape) if need_w else None
        grad_d = torch.bmm(g, w.reshape(m, c, -1).transpose(1, 2)) if need_d else None
        grad_b = None
        if b is not None and gb is not None:
            g3 = gb.unsqueeze(-1).to(w.dtype)
            if need_d:
                grad_d.baddbmm_(g3, b.unsqueeze(1).to(w.dtype))
            if need_b:
                grad_b = torch.baddbmm(g3, dt, g3).squeeze(-1).to(b.dtype)
        if grad_d is not None:
            grad_d = grad_d.to(delta.dtype)
        return grad_w, grad_d, grad_b, None
