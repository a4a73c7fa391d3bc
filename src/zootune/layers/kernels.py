"""Exact kernels for a layer whose weight differs for every sample of the batch.

Zoo-Tuning's per-sample aggregation (Eq. 2) gives sample ``b`` its own weight
``W_b = sum_i a_bi * W~_i``. A plain ``nn.Conv2d`` cannot take a batch of weights, so this module
offers several exact ways to apply ``W_b`` to ``x_b``, all with the FLOPs of one ordinary layer:

* ``grouped``: the batch folded into the channel axis, one convolution with ``groups = B * g``;
* ``loop``:    one ordinary convolution per sample (fast when each sample's work is large);
* ``unfold``:  im2col (``F.unfold``) then a batched matrix product with the per-sample weights
  (fast at small spatial sizes, where the other two are dominated by per-sample overheads);
* ``bmm``:     a batched matrix product, for 1x1 convolutions (padding 0, groups 1) and Linear.

Which of ``grouped``, ``loop`` and ``unfold`` is fastest depends on the shape and the backend;
``auto`` times them once per layer shape and remembers the winner (:func:`choose_conv_kernel`).

:class:`AggregatedPerSample` is the autograd function that ties aggregation and kernel together:
it computes ``W_b`` from the gates ``a`` (B, m) and the aligned source weights ``w`` (m, ...),
applies the kernel, and in backward returns the gradients of ``x``, ``a`` and ``w``. With
``recompute=True`` (the default) it does not keep the ``B x |W|`` per-sample weights for backward
but recomputes them there — one small matrix product — which saves most of the memory Zoo-Tuning
would otherwise add to a training step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .workspace import scratch

CONV_KERNELS = ("auto", "grouped", "loop", "unfold")


@dataclass(frozen=True)
class ConvSpec:
    """Hyper-parameters of a 2-d convolution with numeric padding (zeros)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def is_pointwise(self, kernel_size: tuple[int, int]) -> bool:
        """A 1x1 convolution without padding or groups is a (strided) matrix product."""
        return kernel_size == (1, 1) and self.padding == (0, 0) and self.groups == 1


# --------------------------------------------------------------------------------------------
# Kernels: forward(x, W) -> y and backward(x, W, gy, need_x, need_w) -> (gx, gW), with W (B, ...)
# --------------------------------------------------------------------------------------------


class Kernel:
    """An exact way to apply per-sample weights ``W`` (B, ...) to inputs ``x`` (B, ...)."""

    name = "base"

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def backward(
        self, x: torch.Tensor, w: torch.Tensor, gy: torch.Tensor, need_x: bool, need_w: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError


class GroupedConv(Kernel):
    """Fold the batch into channels: one convolution with ``groups = B * groups``."""

    name = "grouped"

    def __init__(self, spec: ConvSpec):
        self.spec = spec

    def forward(self, x, w):
        b, cin, h, wd = x.shape
        s = self.spec
        y = F.conv2d(
            x.reshape(1, b * cin, h, wd),
            w.reshape(b * w.shape[1], *w.shape[2:]),
            None,
            s.stride,
            s.padding,
            s.dilation,
            b * s.groups,
        )
        return y.view(b, w.shape[1], *y.shape[2:])

    def backward(self, x, w, gy, need_x, need_w):
        b, cin, h, wd = x.shape
        s = self.spec
        gx, gw, _ = torch.ops.aten.convolution_backward(
            gy.reshape(1, b * gy.shape[1], *gy.shape[2:]),
            x.reshape(1, b * cin, h, wd),
            w.reshape(b * w.shape[1], *w.shape[2:]),
            None,
            list(s.stride),
            list(s.padding),
            list(s.dilation),
            False,
            [0, 0],
            b * s.groups,
            [need_x, need_w, False],
        )
        return (
            gx.view_as(x) if gx is not None else None,
            gw.view_as(w) if gw is not None else None,
        )


class LoopConv(Kernel):
    """One ordinary convolution per sample (no batch folding)."""

    name = "loop"

    def __init__(self, spec: ConvSpec):
        self.spec = spec

    def forward(self, x, w):
        s = self.spec
        return torch.cat(
            [
                F.conv2d(x[i : i + 1], w[i], None, s.stride, s.padding, s.dilation, s.groups)
                for i in range(x.shape[0])
            ]
        )

    def backward(self, x, w, gy, need_x, need_w):
        s = self.spec
        gxs = []
        gws = scratch("per_sample_weight_grad", tuple(w.shape), w.dtype, w.device) if need_w else None
        for i in range(x.shape[0]):
            gx, gw, _ = torch.ops.aten.convolution_backward(
                gy[i : i + 1],
                x[i : i + 1],
                w[i],
                None,
                list(s.stride),
                list(s.padding),
                list(s.dilation),
                False,
                [0, 0],
                s.groups,
                [need_x, need_w, False],
            )
            gxs.append(gx)
            if need_w:
                gws[i].copy_(gw)
        return torch.cat(gxs) if need_x else None, gws


class UnfoldConv(Kernel):
    """im2col + batched matrix product: ``y_b = W_b cols(x_b)`` (groups split the matrices)."""

    name = "unfold"

    def __init__(self, spec: ConvSpec):
        self.spec = spec

    def _cols(self, x, w):
        s = self.spec
        cols = F.unfold(x, w.shape[-2:], dilation=s.dilation, padding=s.padding, stride=s.stride)
        b, g = x.shape[0], s.groups
        return cols.view(b * g, cols.shape[1] // g, cols.shape[2])

    def _out_hw(self, x, w):
        s, (kh, kw) = self.spec, w.shape[-2:]
        h = (x.shape[2] + 2 * s.padding[0] - s.dilation[0] * (kh - 1) - 1) // s.stride[0] + 1
        wd = (x.shape[3] + 2 * s.padding[1] - s.dilation[1] * (kw - 1) - 1) // s.stride[1] + 1
        return h, wd

    def forward(self, x, w):
        b, g = x.shape[0], self.spec.groups
        cout = w.shape[1]
        y = torch.bmm(w.reshape(b * g, cout // g, -1), self._cols(x, w))
        return y.view(b, cout, *self._out_hw(x, w))

    def backward(self, x, w, gy, need_x, need_w):
        s = self.spec
        b, g, cout = x.shape[0], s.groups, w.shape[1]
        cols = self._cols(x, w)
        g2 = gy.reshape(b * g, cout // g, -1)
        gw = gx = None
        if need_w:
            gw = scratch("per_sample_weight_grad", tuple(w.shape), w.dtype, w.device)
            torch.bmm(g2, cols.transpose(1, 2), out=gw.view(b * g, cout // g, -1))
        if need_x:
            gcols = torch.bmm(w.reshape(b * g, cout // g, -1).transpose(1, 2), g2)
            gx = F.fold(gcols.view(b, -1, gcols.shape[-1]), x.shape[-2:], w.shape[-2:],
                        dilation=s.dilation, padding=s.padding, stride=s.stride)
        return gx, gw


class PointwiseConv(Kernel):
    """A 1x1 convolution (padding 0, groups 1, any stride) as a batched matrix product."""

    name = "bmm"

    def __init__(self, spec: ConvSpec):
        self.stride = spec.stride

    def _subsample(self, x):
        sh, sw = self.stride
        return x if (sh, sw) == (1, 1) else x[:, :, ::sh, ::sw]

    def forward(self, x, w):
        xs = self._subsample(x)
        b, cin, h, wd = xs.shape
        y = torch.bmm(w.view(b, w.shape[1], cin), xs.reshape(b, cin, h * wd))
        return y.view(b, w.shape[1], h, wd)

    def backward(self, x, w, gy, need_x, need_w):
        xs = self._subsample(x)
        b, cin, h, wd = xs.shape
        g = gy.reshape(b, gy.shape[1], h * wd)
        w2 = w.view(b, w.shape[1], cin)
        gw = None
        if need_w:
            gw = scratch("per_sample_weight_grad", tuple(w.shape), w.dtype, w.device)
            torch.bmm(g, xs.reshape(b, cin, h * wd).transpose(1, 2), out=gw.view(b, w.shape[1], cin))
        gx = None
        if need_x:
            gxs = torch.bmm(w2.transpose(1, 2), g).view(b, cin, h, wd)
            if xs is x:
                gx = gxs
            else:
                gx = x.new_zeros(x.shape)
                gx[:, :, :: self.stride[0], :: self.stride[1]] = gxs
        return gx, gw


class PerSampleLinear(Kernel):
    """``y_b = x_b W_b^T`` for ``x`` (B, N, in) and ``W`` (B, out, in)."""

    name = "bmm"

    def forward(self, x, w):
        return torch.bmm(x, w.transpose(1, 2))

    def backward(self, x, w, gy, need_x, need_w):
        gx = torch.bmm(gy, w) if need_x else None
        gw = None
        if need_w:
            gw = scratch("per_sample_weight_grad", tuple(w.shape), w.dtype, w.device)
            torch.bmm(gy.transpose(1, 2), x, out=gw)
        return gx, gw


# --------------------------------------------------------------------------------------------
# Choosing a convolution kernel
# --------------------------------------------------------------------------------------------

_CHOICES: dict[tuple, str] = {}


def _time_kernel(
    kernel: Kernel, x: torch.Tensor, w: torch.Tensor, training: bool, need_x: bool, repeats: int = 3
) -> float:
    """Best-of-``repeats`` seconds of forward (+ backward when ``training``)."""
    gy = torch.randn_like(kernel.forward(x, w))

    def step():
        kernel.forward(x, w)
        if training:
            kernel.backward(x, w, gy, need_x, True)

    step()  # warm-up (allocator, backend kernel selection)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        best = min(best, time.perf_counter() - t0)
    return best


#: Below this many multiply-adds per forward, ``auto`` picks ``grouped`` without timing.
AUTOTUNE_MIN_MACS = 50_000_000


def _macs(x: torch.Tensor, weight_shape: tuple[int, ...], spec: ConvSpec) -> int:
    b, cout, cin_g, kh, kw = weight_shape
    h = (x.shape[2] + 2 * spec.padding[0] - spec.dilation[0] * (kh - 1) - 1) // spec.stride[0] + 1
    w = (x.shape[3] + 2 * spec.padding[1] - spec.dilation[1] * (kw - 1) - 1) // spec.stride[1] + 1
    return b * cout * cin_g * kh * kw * max(h, 0) * max(w, 0)


def choose_conv_kernel(
    spec: ConvSpec, x: torch.Tensor, weight_shape: tuple[int, ...]
) -> str:
    """Time ``grouped``, ``loop`` and ``unfold`` once for this shape and remember the fastest.

    Training (autograd on) times forward + backward, inference the forward only. ``weight_shape`` is the per-sample weight's (B, C_out, C_in/groups, kH, kW). The key holds
    everything that changes which is faster: shapes, hyper-parameters, dtype, device and memory
    format. The timing runs outside autograd on random data of the real shape.
    """
    training = torch.is_grad_enabled()  # inference only needs the forward to be fast
    need_x = training and x.requires_grad
    key = (
        tuple(x.shape),
        tuple(weight_shape),
        spec,
        x.dtype,
        x.device.type,
        x.is_contiguous(memory_format=torch.channels_last),
        training,
        need_x,
    )
    choice = _CHOICES.get(key)
    if choice is None and _macs(x, weight_shape, spec) < AUTOTUNE_MIN_MACS:
        choice = _CHOICES[key] = "grouped"  # too small to be worth timing: one call beats B calls
    if choice is None:
        with torch.no_grad():
            xs = torch.randn_like(x)
            ws = torch.randn(weight_shape, dtype=x.dtype, device=x.device)
            times = {
                k.name: _time_kernel(k, xs, ws, training, need_x)
                for k in (GroupedConv(spec), LoopConv(spec), UnfoldConv(spec))
            }
        choice = min(times, key=times.get)
        _CHOICES[key] = choice
    return choice


def kernel_choices() -> dict[tuple, str]:
    """The kernels chosen so far by ``auto``, keyed by shape (for reports and benchmarks)."""
    return dict(_CHOICES)


def conv_kernel(
    name: str, spec: ConvSpec, x: torch.Tensor, weight_shape: tuple[int, ...]
) -> Kernel:
    """The kernel for a per-sample convolution; ``name`` is one of ``CONV_KERNELS``.

    1x1 convolutions without padding or groups always use the batched matrix product.
    """
    if spec.is_pointwise(tuple(weight_shape[-2:])):
        return PointwiseConv(spec)
    if name == "auto":
        name = choose_conv_kernel(spec, x, weight_shape)
    if name == "grouped":
        return GroupedConv(spec)
    if name == "loop":
        return LoopConv(spec)
    if name == "unfold":
        return UnfoldConv(spec)
    raise ValueError(f"unknown per-sample conv kernel {name!r}; choose one of {CONV_KERNELS}")


# --------------------------------------------------------------------------------------------
# Aggregation + kernel as one autograd function
# --------------------------------------------------------------------------------------------


def aggregate(a: torch.Tensor, w: torch.Tensor, scratch_name: str | None = None) -> torch.Tensor:
    """``W_b = sum_i a_bi w_i`` for gates ``a`` (B, m) and weights ``w`` (m, ...) (Eq. 2).

    With ``scratch_name`` the result is written into a shared scratch buffer (workspace.py)
    instead of a fresh allocation; it is then only valid until the next call that uses it.
    """
    m, b = w.shape[0], a.shape[0]
    shape = (b, *w.shape[1:])
    if scratch_name is None:
        return (a @ w.reshape(m, -1)).view(shape)
    out = scratch(scratch_name, shape, w.dtype, w.device)
    torch.mm(a, w.reshape(m, -1), out=out.view(b, -1))
    return out


class AggregatedPerSample(torch.autograd.Function):
    """``y_b = kernel(x_b, sum_i a_bi w_i)`` with exact gradients for ``x``, ``a`` and ``w``.

    Backward: with ``gW_b`` the gradient of the per-sample weight from the kernel,
    ``grad a_bi = <gW_b, w_i>`` and ``grad w_i = sum_b a_bi gW_b`` — two matrix products.
    """

    @staticmethod
    def forward(ctx, x, a, w, kernel: Kernel, recompute: bool):  # type: ignore[override]
        # recomputed in backward -> a scratch buffer is enough; kept for backward -> its own tensor
        wb = aggregate(a.to(x.dtype), w.to(x.dtype), "per_sample_weight" if recompute else None)
        y = kernel.forward(x, wb)
        ctx.kernel = kernel
        ctx.recompute = recompute
        ctx.dtypes = (a.dtype, w.dtype)
        if recompute:
            ctx.save_for_backward(x, a, w)
        else:
            ctx.save_for_backward(x, a, w, wb)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):  # type: ignore[override]
        if ctx.recompute:
            x, a, w = ctx.saved_tensors
            wb = aggregate(a.to(x.dtype), w.to(x.dtype), "per_sample_weight")
        else:
            x, a, w, wb = ctx.saved_tensors
        need_x, need_a, need_w = ctx.needs_input_grad[:3]
        gx, gwb = ctx.kernel.backward(x, wb, gy.to(x.dtype), need_x, need_a or need_w)
        ga = gw = None
        if gwb is not None:
            m, b = w.shape[0], a.shape[0]
            gflat = gwb.reshape(b, -1)
            w_flat = w.to(x.dtype).reshape(m, -1)
            if need_a:  # <gW_b, w_i>; (m x K)(K x B) runs faster than (B x K)(K x m) here
                ga = (w_flat @ gflat.t()).t().to(ctx.dtypes[0])
            if need_w:
                gw = (a.to(x.dtype).t() @ gflat).view(w.shape).to(ctx.dtypes[1])
        return gx, ga, gw, None, None


def per_sample(
    x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, kernel: Kernel, recompute: bool = True
) -> torch.Tensor:
    """Apply per-sample aggregated weights (see :class:`AggregatedPerSample`)."""
    return AggregatedPerSample.apply(x, a, w, kernel, recompute)


