"""Exact kernels for a layer whose weight differs for every sample of the batch.

Zoo-Tuning's per-sample aggregation (Eq. 2) gives sample ``b`` its own weight
``W_b = sum_i a_bi * W~_i``. A plain ``nn.Conv2d`` cannot take a batch of weights, so this module
offers several exact ways to apply ``W_b`` to ``x_b``, all with the FLOPs of one ordinary layer:

* ``grouped``: the batch folded into the channel axis, one convolution with ``groups = B * g``;
* ``loop``:    one ordinary convolution per sample (fast when each sample's work is large);
* ``unfold``:  im2col (``F.unfold``) then a batched matrix product with the per-sample weights
  (fast at small spatial sizes, where the other two are dominated by per-sample overheads);
* ``bmm``:     a batched matrix product, for 1x1 convolutions (padding 0, groups 1) and Linear;
* ``stacked``: no per-sample weights at all. A convolution is linear in its weight, so
  ``conv(x_b, sum_i a_bi W~_i) = sum_i a_bi conv(x_b, W~_i)``: ONE ordinary convolution of the
  whole batch with the ``m`` aligned source weights stacked along the output channels
  (``m * C_out`` outputs), then a per-sample weighted sum of the ``m`` outputs with the gates.
  About ``m`` times the FLOPs of one layer, but no ``B x |W|`` tensor in memory and a backward
  of ordinary convolution passes — it wins for small ``m`` with small kernels or few output
  positions (the RL network), loses for ``m = 5`` ResNet-50 convolutions
  (:class:`StackedConv`, :class:`StackedPerSample`).

For a convolution whose patches do not overlap (stride = kernel size, no padding, dilation 1,
groups 1 — the DER network's), im2col is a reordering of the input (patches.py): ``stacked``
then runs as ONE matrix product of the patch rows with the stacked source weights
(:class:`StackedRowsPerSample`: the DER's conv2 at batch 32, forward + backward, 1.04x the plain
convolution's time instead of 1.77x — the per-layer table of ``benchmarks/rl_speed.py``), and
``unfold`` takes its product per patch (a channels-last input's patch rows, or an NCHW input's
columns transposed); both hand their output over channels-last.

Which of ``grouped``, ``loop``, ``unfold`` and ``stacked`` is fastest depends on the shape and
the backend; ``auto`` times them once per layer shape and remembers the winner
(:func:`choose_conv_kernel`).

:class:`AggregatedPerSample` is the autograd function that ties aggregation and kernel together:
it computes ``W_b`` from the gates ``a`` (B, m) and the aligned source weights ``w`` (m, ...),
applies the kernel, and in backward returns the gradients of ``x``, ``a`` and ``w``. With
``recompute=True`` (the default) it does not keep the ``B x |W|`` per-sample weights for backward
but recomputes them there — one small matrix product — which saves most of the memory Zoo-Tuning
would otherwise add to a training step. Large weights are aggregated and their gradients
contracted in column blocks on the CPU (:func:`column_blocks`; both contractions share each
block while it is in cache).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .patches import (image_from_rows, is_channels_last, patch_rows, rows_of_image, rows_to_image,
                      weight_from_rows, weight_rows)
from .shared_input import reuse
from .workspace import scratch

CONV_KERNELS = ("auto", "grouped", "loop", "unfold", "stacked")


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

    def non_overlapping(self, kernel_size: tuple[int, int]) -> bool:
        """Stride = kernel size, no padding, dilation 1: every input pixel is read at most once,
        so im2col is a reordering of the input (patches.py)."""
        return (tuple(self.stride) == tuple(kernel_size) and tuple(self.padding) == (0, 0)
                and tuple(self.dilation) == (1, 1))


# --------------------------------------------------------------------------------------------
# Kernels: forward(x, W) -> y and backward(x, W, gy, need_x, need_w) -> (gx, gW), with W (B, ...)
# --------------------------------------------------------------------------------------------


class Kernel:
    """An exact way to apply per-sample weights ``W`` (B, ...) to inputs ``x`` (B, ...)."""

    name = "base"
    #: the output's channel axis (where a per-sample bias is added)
    channel_dim = 1

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_keep(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward`, plus an intermediate that :meth:`backward` can take as ``kept``
        instead of recomputing it (``None``: nothing worth keeping)."""
        return self.forward(x, w), None

    def backward(
        self, x: torch.Tensor, w: torch.Tensor, gy: torch.Tensor, need_x: bool, need_w: bool,
        kept: torch.Tensor | None = None,
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

    def backward(self, x, w, gy, need_x, need_w, kept=None):
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

    def backward(self, x, w, gy, need_x, need_w, kept=None):
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


def _patch_rows(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """:func:`~.patches.patch_rows`, computed once per input inside ``input_reuse``."""
    return reuse("patch_rows", x, (kh, kw), lambda: patch_rows(x, kh, kw))


class UnfoldConv(Kernel):
    """im2col + batched matrix product: ``y_b = W_b cols(x_b)`` (groups split the matrices).

    When the patches do not overlap (stride = kernel size, no padding, dilation 1 — e.g. the
    DER network's 5x5 stride-5 convolutions) im2col is a reshape of the (cropped) input and
    col2im its inverse, one copy each instead of ``F.unfold``/``F.fold``'s general gather and
    scatter-add; :meth:`ConvSpec.non_overlapping` says when, and a test keeps both paths equal.
    """

    name = "unfold"

    def __init__(self, spec: ConvSpec):
        self.spec = spec

    def _per_patch(self, w) -> bool:
        """Non-overlapping patches, groups 1: the product is taken per patch, ``(L, K)(K, C_out)``,
        and the output comes out channels-last whatever the input layout. The next
        non-overlapping convolution (the DER's conv2) then reads its patch rows as runs of
        ``kw * C`` numbers instead of runs of ``kw`` (patches.py); in the DER step this, with the
        weight gradient taken as ``(K, L)(L, C_out)`` (:meth:`_columns_backward`), measured
        0.4-0.5 ms (1.5%) faster than an NCHW output (``benchmarks/results/rl_speed.md``)."""
        return self.spec.groups == 1 and self.spec.non_overlapping(tuple(w.shape[-2:]))

    def _rows(self, x, w) -> bool:
        """A channels-last input with non-overlapping patches (groups 1) is read as patch rows
        (B, L, kH*kW*C_in) in ``(kh, kw, c)`` order (patches.py); an NCHW one as columns (its
        natural reordering), whose transposed view serves as the rows."""
        return is_channels_last(x) and self._per_patch(w)

    def _cols(self, x, w):
        """im2col of ``x`` as (B*g, C_in/g*kH*kW, L), or the patch rows (B, L, kH*kW*C_in) of a
        channels-last input (:meth:`_rows`); computed once per input inside
        :func:`~zootune.layers.shared_input.input_reuse` (e.g. a target and an online network
        reading the same batch)."""
        s = self.spec
        kh, kw = w.shape[-2:]
        if self._rows(x, w):
            return _patch_rows(x, kh, kw)
        key = (kh, kw, tuple(s.stride), tuple(s.padding), tuple(s.dilation), s.groups)
        return reuse("im2col", x, key, lambda: self._im2col(x, kh, kw))

    def _im2col(self, x, kh, kw):
        s = self.spec
        b, g = x.shape[0], s.groups
        if self.spec.non_overlapping((kh, kw)):
            ho, wo = x.shape[2] // kh, x.shape[3] // kw
            xc = x[:, :, : ho * kh, : wo * kw].reshape(b, x.shape[1], ho, kh, wo, kw)
            cols = xc.permute(0, 1, 3, 5, 2, 4).reshape(b, x.shape[1] * kh * kw, ho * wo)
        else:
            cols = F.unfold(x, (kh, kw), dilation=s.dilation, padding=s.padding, stride=s.stride)
        return cols.view(b * g, cols.shape[1] // g, cols.shape[2])

    def _fold(self, gcols, x, w):
        """The input gradient from the column gradient ``gcols`` (B*g, C_in/g*kH*kW, L)."""
        s = self.spec
        b, c, h, wd = x.shape
        kh, kw = w.shape[-2:]
        if self.spec.non_overlapping((kh, kw)):
            ho, wo = h // kh, wd // kw
            patches = gcols.view(b, c, kh, kw, ho, wo).permute(0, 1, 4, 2, 5, 3)
            if ho * kh == h and wo * kw == wd:
                return patches.reshape(b, c, h, wd)
            gx = x.new_zeros(x.shape)  # the cropped border gets no gradient
            gx[:, :, : ho * kh, : wo * kw] = patches.reshape(b, c, ho * kh, wo * kw)
            return gx
        return F.fold(gcols.view(b, -1, gcols.shape[-1]), (h, wd), (kh, kw),
                      dilation=s.dilation, padding=s.padding, stride=s.stride)

    def _out_hw(self, x, w):
        s, (kh, kw) = self.spec, w.shape[-2:]
        h = (x.shape[2] + 2 * s.padding[0] - s.dilation[0] * (kh - 1) - 1) // s.stride[0] + 1
        wd = (x.shape[3] + 2 * s.padding[1] - s.dilation[1] * (kw - 1) - 1) // s.stride[1] + 1
        return h, wd

    def forward(self, x, w):
        return self.forward_keep(x, w)[0]

    def forward_keep(self, x, w):
        """The columns are kept: the weight gradient needs them again."""
        b, g = x.shape[0], self.spec.groups
        cout = w.shape[1]
        cols = self._cols(x, w)
        if self._per_patch(w):  # (B, L, K) @ (B, K, C_out): the output comes out channels-last
            if self._rows(x, w):
                y = torch.bmm(cols, weight_rows(w, True).transpose(1, 2))
            else:  # the columns (B, K, L) transposed, with the weights in their (c, kh, kw) order
                y = torch.bmm(cols.transpose(1, 2), w.reshape(b, cout, -1).transpose(1, 2))
            return image_from_rows(y, *self._out_hw(x, w)), cols
        y = torch.bmm(w.reshape(b * g, cout // g, -1), cols)
        return y.view(b, cout, *self._out_hw(x, w)), cols

    def backward(self, x, w, gy, need_x, need_w, kept=None):
        s = self.spec
        b, g, cout = x.shape[0], s.groups, w.shape[1]
        if self._rows(x, w):
            return self._rows_backward(x, w, gy, need_x, need_w, kept)
        if self._per_patch(w):
            return self._columns_backward(x, w, gy, need_x, need_w, kept)
        g2 = gy.reshape(b * g, cout // g, -1)
        gw = gx = None
        if need_w:
            gw = scratch("per_sample_weight_grad", tuple(w.shape), w.dtype, w.device)
            cols = self._cols(x, w) if kept is None else kept
            torch.bmm(g2, cols.transpose(1, 2), out=gw.view(b * g, cout // g, -1))
        if need_x:
            gx = self._fold(torch.bmm(w.reshape(b * g, cout // g, -1).transpose(1, 2), g2), x, w)
        return gx, gw

    def _columns_backward(self, x, w, gy, need_x, need_w, kept):
        """Backward of the per-patch product on an NCHW input's columns (B, K, L), ``gy`` as
        per-patch rows (B, L, C_out). The weight gradient is taken as ``(K, L)(L, C_out)`` and
        returned as a transposed view (its memory (B, K, C_out)), which
        :class:`AggregatedPerSample` contracts in that order: that product ran 0.39 vs 0.64 ms
        for the DER's conv1 at batch 32 here (the other order transposes both operands)."""
        b, cout = x.shape[0], w.shape[1]
        g2 = rows_of_image(gy)
        gw = gx = None
        if need_w:
            cols = self._cols(x, w) if kept is None else kept
            gwt = scratch("per_sample_weight_grad", tuple(w.shape), w.dtype, w.device).view(b, -1, cout)
            torch.bmm(cols, g2, out=gwt)
            gw = gwt.transpose(1, 2).view(w.shape)
        if need_x:
            gx = self._fold(torch.bmm(w.reshape(b, cout, -1).transpose(1, 2), g2.transpose(1, 2)), x, w)
        return gx, gw

    def _rows_backward(self, x, w, gy, need_x, need_w, kept):
        """Backward of the patch-rows path: ``gy`` as per-patch rows (B, L, C_out)."""
        g2 = rows_of_image(gy)  # a view of a channels-last gradient
        gw = gx = None
        if need_w:
            rows = self._cols(x, w) if kept is None else kept
            gw = scratch("per_sample_weight_grad", tuple(w.shape), w.dtype, w.device)
            gw.copy_(weight_from_rows(torch.bmm(g2.transpose(1, 2), rows), w.shape, True))
        if need_x:
            kh, kw = w.shape[-2:]
            gx = rows_to_image(torch.bmm(g2, weight_rows(w, True)), x.shape, kh, kw, True)
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

    def backward(self, x, w, gy, need_x, need_w, kept=None):
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
    channel_dim = -1

    def forward(self, x, w):
        return torch.bmm(x, w.transpose(1, 2))

    def backward(self, x, w, gy, need_x, need_w, kept=None):
        gx = torch.bmm(gy, w) if need_x else None
        gw = None
        if need_w:
            gw = scratch("per_sample_weight_grad", tuple(w.shape), w.dtype, w.device)
            torch.bmm(gy.transpose(1, 2), x, out=gw)
        return gx, gw


class StackedConv:
    """``y_b = sum_i a_bi conv(x_b, W~_i)``: one convolution with the ``m`` source weights
    stacked along the output channels, then a per-sample weighted sum with the gates.

    Unlike the :class:`Kernel` classes it takes the gates and the aligned source weights, not
    per-sample weights; :func:`per_sample` runs it through :class:`StackedPerSample`. With
    ``groups = g`` the stacked weight is laid out group by group (``g x m x C_out/g`` outputs),
    so one grouped convolution still serves every source. Works for every convolution the
    other kernels handle (1x1 included, when asked for by name).
    """

    name = "stacked"
    channel_dim = 1

    def __init__(self, spec: ConvSpec):
        self.spec = spec

    # layouts ---------------------------------------------------------------------------------

    def stack(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (m, C_out, C_in/g, kH, kW) -> the stacked weight (g*m*C_out/g, C_in/g, kH, kW)."""
        m, cout, g = w.shape[0], w.shape[1], self.spec.groups
        if g == 1:
            return w.reshape(m * cout, *w.shape[2:])
        return w.view(m, g, cout // g, *w.shape[2:]).transpose(0, 1).reshape(m * cout, *w.shape[2:])

    def unstack(self, ws: torch.Tensor, m: int) -> torch.Tensor:
        """Inverse of :meth:`stack` (for the weight gradient)."""
        g = self.spec.groups
        cout = ws.shape[0] // m
        if g == 1:
            return ws.view(m, cout, *ws.shape[1:])
        return ws.view(g, m, cout // g, *ws.shape[1:]).transpose(0, 1).reshape(m, cout, *ws.shape[1:])

    def transposed(self, w: torch.Tensor) -> torch.Tensor:
        """The weight of the transposed convolution that gives every source's input gradient
        ``conv^T(gy_b, W~_i)`` at once: (C_out, m*C_in/g, kH, kW), grouped like the input."""
        m, cout, cin_g = w.shape[:3]
        return w.transpose(0, 1).reshape(cout, m * cin_g, *w.shape[3:])

    def rows(self, x: torch.Tensor, w: torch.Tensor) -> bool:
        """Whether :class:`StackedRowsPerSample` serves ``x``: patches that do not overlap, so
        one matrix product replaces the convolution (patches.py)."""
        ks = tuple(w.shape[-2:])
        # a 1x1 kernel on an NCHW input would reorder the whole input for nothing
        return self.spec.groups == 1 and self.spec.non_overlapping(ks) and (
            ks != (1, 1) or is_channels_last(x))

    # pieces ----------------------------------------------------------------------------------

    def conv(self, x: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return F.conv2d(x, ws, None, s.stride, s.padding, s.dilation, s.groups)

    def combine(self, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``sum_i a_bi t_bi`` for ``t`` (B, g*m*C/g, ...) laid out as :meth:`stack` -> (B, C, ...)."""
        b, m, g = a.shape[0], a.shape[1], self.spec.groups
        tv = t.reshape(b * g, m, -1)
        ag = a if g == 1 else a.repeat_interleave(g, dim=0)
        y = torch.bmm(ag.unsqueeze(1), tv)  # (B*g, 1, K)
        return y.view(b, t.shape[1] // m, *t.shape[2:])

    def gate_grad(self, t: torch.Tensor, g_out: torch.Tensor, m: int) -> torch.Tensor:
        """``<g_out_b, t_bi>`` for every sample and source -> (B, m)."""
        b, g = t.shape[0], self.spec.groups
        ga = torch.bmm(t.reshape(b * g, m, -1), g_out.reshape(b * g, -1, 1))  # (B*g, m, 1)
        return ga.view(b, g, m).sum(1) if g > 1 else ga.view(b, m)

    def spread(self, a: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        """``a_bi * gy_b`` laid out as the stacked output: the gradient of ``t``."""
        b, m, g = a.shape[0], a.shape[1], self.spec.groups
        out = a.view(b, 1, m, 1) * gy.reshape(b, g, 1, -1)
        return out.view(b, m * gy.shape[1], *gy.shape[2:])

    def input_grads(self, w: torch.Tensor, gy: torch.Tensor, in_hw: tuple[int, int]) -> torch.Tensor:
        """Every source's input gradient ``conv^T(gy_b, W~_i)``: (B, g*m*C_in/g, H, W)."""
        s, (kh, kw) = self.spec, w.shape[-2:]
        pad = []
        for n, o, st, p, d, k in zip(in_hw, gy.shape[-2:], s.stride, s.padding, s.dilation, (kh, kw)):
            pad.append(n - ((o - 1) * st - 2 * p + d * (k - 1) + 1))
        return F.conv_transpose2d(gy, self.transposed(w), None, s.stride, s.padding, tuple(pad),
                                  s.groups, s.dilation)


class StackedPerSample(torch.autograd.Function):
    """``y_b = sum_i a_bi conv(x_b, w_i)`` (:class:`StackedConv`) with exact gradients.

    With ``t_bi = conv(x_b, w_i)`` (one stacked convolution) and ``gy`` the output gradient:
    ``grad w_i = sum_b conv_wgrad(x_b, a_bi gy_b)`` and ``grad x_b = sum_i a_bi conv^T(gy_b, w_i)``
    (one ordinary convolution backward with the stacked weight), and
    ``grad a_bi = <gy_b, t_bi> = <conv^T(gy_b, w_i), x_b>``.

    ``recompute=False`` keeps ``t`` (m outputs per sample) for the gate gradient.
    ``recompute=True`` keeps only ``x, a, w``, like the per-sample kernels: when the input needs
    a gradient the gate gradient comes from the per-source input gradients (no extra FLOPs: the
    transposed convolution replaces the input-gradient pass), otherwise ``t`` is recomputed.
    """

    @staticmethod
    def forward(ctx, x, a, w, bias, kernel: StackedConv, recompute: bool):  # type: ignore[override]
        ac, wc = a.to(x.dtype), w.to(x.dtype)
        t = kernel.conv(x, kernel.stack(wc))
        y = add_bias(kernel.combine(ac, t), ac, bias, kernel.channel_dim)
        need_a = ctx.needs_input_grad[1]
        ctx.kernel = kernel
        ctx.dtypes = (a.dtype, w.dtype)
        ctx.keep_t = need_a and not recompute
        ctx.save_for_backward(x, a, w, bias, *((t,) if ctx.keep_t else ()))
        return _own(y)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):  # type: ignore[override]
        k: StackedConv = ctx.kernel
        s = k.spec
        x, a, w, bias = ctx.saved_tensors[:4]
        t = ctx.saved_tensors[4] if ctx.keep_t else None
        need_x, need_a, need_w = ctx.needs_input_grad[:3]
        m = w.shape[0]
        ac, wc = a.to(x.dtype), w.to(x.dtype)
        gy = gy.to(x.dtype)
        gx = ga = None
        # the gate gradient from the input side: per-source input gradients (no t needed)
        via_input = need_a and t is None and need_x
        if via_input:
            gxs = k.input_grads(wc, gy, tuple(x.shape[-2:]))  # (B, g*m*C_in/g, H, W)
            ga = k.gate_grad(gxs, x, m)
            gx = k.combine(ac, gxs)
        elif need_a:
            if t is None:
                t = k.conv(x, k.stack(wc))
            ga = k.gate_grad(t, gy, m)
        ws = k.stack(wc)
        want_x = need_x and not via_input
        gw = None
        if want_x or need_w:
            gxc, gws, _ = torch.ops.aten.convolution_backward(
                k.spread(ac, gy), x, ws, None, list(s.stride), list(s.padding), list(s.dilation),
                False, [0, 0], s.groups, [want_x, need_w, False],
            )
            if want_x:
                gx = gxc
            if need_w:
                gw = k.unstack(gws, m).to(ctx.dtypes[1])
        ga, gb = bias_backward(gy, ac, bias, k.channel_dim, ga, ctx.needs_input_grad[3])
        if ga is not None:
            ga = ga.to(ctx.dtypes[0])
        return gx, ga, gw, gb, None, None


class StackedRowsPerSample(torch.autograd.Function):
    """:class:`StackedPerSample` for a convolution whose patches do not overlap
    (stride = kernel size, no padding, dilation 1, groups 1: the DER's convolutions).

    With ``R`` the patch rows of ``x`` (B*L, K) and ``S = [W~_1; ..; W~_m]`` the source weights
    in the same order (m*C_out, K) (patches.py): ``t = R S^T`` is one matrix product, and
    ``y_b = sum_i a_bi t_bi`` comes out channels-last (whatever the input layout). Backward, with
    ``gt_bi = a_bi gy_b``: ``grad S = gt^T R``, ``grad R = gt S`` (back to the image, in the
    input's layout), ``grad a_bi = <gy_b, t_bi>``.
    ``recompute=True`` keeps ``x, a, w`` only (``R`` is a reordering of ``x``; ``t`` is recomputed
    when the gates need a gradient); otherwise ``R``, ``S`` (a copy for a channels-last input)
    and ``t`` are kept.
    """

    @staticmethod
    def forward(ctx, x, a, w, bias, kernel: StackedConv, recompute: bool):  # type: ignore[override]
        m, cout, kh, kw = w.shape[0], w.shape[1], w.shape[-2], w.shape[-1]
        ac = a.to(x.dtype)
        rows = _patch_rows(x, kh, kw)
        b, n, k = rows.shape
        cl = is_channels_last(x)
        s = weight_rows(w.to(x.dtype), cl).reshape(m * cout, k)
        t = torch.mm(rows.reshape(b * n, k), s.t()).view(b, n, m, cout)
        y = add_bias((t * ac.view(b, 1, m, 1)).sum(2), ac, bias, -1)  # (B, L, C_out)
        need_a = ctx.needs_input_grad[1]
        ctx.dtypes = (a.dtype, w.dtype)
        ctx.x_shape = x.shape
        ctx.channels_last = cl
        ctx.recompute = recompute
        if recompute:
            ctx.save_for_backward(x, a, w, bias)
        else:  # also the weights in row order (a copy for a channels-last input)
            ctx.save_for_backward(rows, a, w, bias, s, *((t,) if need_a else ()))
        return _own(image_from_rows(y, x.shape[2] // kh, x.shape[3] // kw))

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):  # type: ignore[override]
        saved = ctx.saved_tensors
        a, w, bias = saved[1:4]
        need_x, need_a, need_w = ctx.needs_input_grad[:3]
        m, cout, kh, kw = w.shape[0], w.shape[1], w.shape[-2], w.shape[-1]
        rows = patch_rows(saved[0], kh, kw) if ctx.recompute else saved[0]
        b, n, k = rows.shape
        cl = ctx.channels_last
        s = weight_rows(w.to(rows.dtype), cl).reshape(m * cout, k) if ctx.recompute else saved[4]
        g = rows_of_image(gy.to(rows.dtype)).reshape(b, n, 1, cout)
        ga = gx = gw = None
        if need_a:
            t = saved[5] if not ctx.recompute else torch.mm(rows.reshape(b * n, k), s.t()).view(b, n, m, cout)
            ga = (t * g).sum((1, 3))
        ga, gb = bias_backward(g.view(b, n, cout), a.to(rows.dtype), bias, -1, ga,
                               ctx.needs_input_grad[3])
        if ga is not None:
            ga = ga.to(ctx.dtypes[0])
        gt = (g * a.to(rows.dtype).view(b, 1, m, 1)).reshape(b * n, m * cout)
        if need_w:
            gs = torch.mm(gt.t(), rows.reshape(b * n, k))
            gw = weight_from_rows(gs.view(m, cout, k), w.shape, cl).contiguous().to(ctx.dtypes[1])
        if need_x:
            gx = rows_to_image(torch.mm(gt, s).view(b, n, k), ctx.x_shape, kh, kw, cl)
        return gx, ga, gw, gb, None, None


# --------------------------------------------------------------------------------------------
# Choosing a convolution kernel
# --------------------------------------------------------------------------------------------

_CHOICES: dict[tuple, str] = {}


def _best_times(steps: dict[str, Callable[[], None]], x: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each ``steps[name]()``, after one warm-up call each
    (allocator, backend kernel selection), synchronising the device of ``x`` around each timed
    call. The candidates are timed **interleaved** (round 1: every step once, round 2: ...), so a
    load change on a shared machine hits all of them instead of deciding the ranking."""
    def once(step: Callable[[], None]) -> float:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        step()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - t0

    for step in steps.values():
        once(step)
    best = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            best[name] = min(best[name], once(step))
    return best


def _kernel_step(kernel: Kernel, x: torch.Tensor, w: torch.Tensor, training: bool, need_x: bool
                 ) -> Callable[[], None]:
    """One forward (+ backward when ``training``) of a bare kernel, for timing."""
    gy = torch.randn_like(kernel.forward(x, w))

    def step():
        kernel.forward(x, w)
        if training:
            kernel.backward(x, w, gy, need_x, True)

    return step


def _op_step(kernel, x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, training: bool, need_x: bool,
             recompute: bool) -> Callable[[], None]:
    """One ``per_sample`` forward (+ backward with every gradient when ``training``), for timing."""
    x = x.detach().requires_grad_(need_x)
    a = a.detach().requires_grad_(training)
    w = w.detach().requires_grad_(training)
    with torch.no_grad():
        gy = torch.randn_like(per_sample(x, a, w, kernel, recompute))

    def step():
        if training:
            with torch.enable_grad():
                per_sample(x, a, w, kernel, recompute).backward(gy)
            x.grad = a.grad = w.grad = None
        else:
            with torch.no_grad():
                per_sample(x, a, w, kernel, recompute)

    return step


#: Below this many multiply-adds per forward, ``auto`` does not time the per-sample kernels
#: (``grouped``: one call beats B calls); with the number of sources known it still times
#: ``grouped`` against ``stacked`` (small layers are where ``stacked`` wins, and timing them is cheap).
AUTOTUNE_MIN_MACS = 50_000_000


def _macs(x: torch.Tensor, weight_shape: tuple[int, ...], spec: ConvSpec) -> int:
    b, cout, cin_g, kh, kw = weight_shape
    h = (x.shape[2] + 2 * spec.padding[0] - spec.dilation[0] * (kh - 1) - 1) // spec.stride[0] + 1
    w = (x.shape[3] + 2 * spec.padding[1] - spec.dilation[1] * (kw - 1) - 1) // spec.stride[1] + 1
    return b * cout * cin_g * kh * kw * max(h, 0) * max(w, 0)


class PerSampleShape(tuple):
    """A per-sample weight shape ``(B, C_out, C_in/groups, kH, kW)`` that also says how the
    layer aggregates: ``num_sources`` (m) and ``recompute``. Given this (rather than a plain
    tuple), :func:`choose_conv_kernel` times every candidate as the whole aggregated operation
    (aggregation, kernel, and in training the backward with the gate and source gradients) and
    includes ``stacked``."""

    num_sources: int
    recompute: bool

    def __new__(cls, shape, num_sources: int, recompute: bool = True):
        obj = super().__new__(cls, tuple(int(v) for v in shape))
        obj.num_sources = int(num_sources)
        obj.recompute = bool(recompute)
        return obj


def choose_conv_kernel(
    spec: ConvSpec, x: torch.Tensor, weight_shape: tuple[int, ...]
) -> str:
    """Time the candidate kernels once for this shape and remember the fastest.

    ``weight_shape`` is the per-sample weight's (B, C_out, C_in/groups, kH, kW). A plain tuple
    times ``grouped``, ``loop`` and ``unfold`` as bare kernels; a :class:`PerSampleShape`
    (what AdaAgg layers pass) times them and ``stacked`` as the whole aggregated operation, with
    the layer's ``num_sources`` and ``recompute``. Below :data:`AUTOTUNE_MIN_MACS` only
    ``grouped`` (and ``stacked`` when m is known) are considered. Training (autograd on) times
    forward + backward, inference the forward only. The key holds everything that changes which
    is faster: shapes, hyper-parameters, m, recompute, dtype, device and memory format. The
    timing runs on random data of the real shape, the candidates interleaved (:func:`_best_times`).
    """
    training = torch.is_grad_enabled()  # inference only needs the forward to be fast
    need_x = training and x.requires_grad
    m = getattr(weight_shape, "num_sources", None)
    recompute = getattr(weight_shape, "recompute", True)
    key = (
        tuple(x.shape),
        tuple(weight_shape),
        spec,
        x.dtype,
        x.device.type,
        x.is_contiguous(memory_format=torch.channels_last),
        training,
        need_x,
    ) + ((m, recompute) if m is not None else ())
    choice = _CHOICES.get(key)
    if choice is not None:
        return choice
    small = _macs(x, tuple(weight_shape), spec) < AUTOTUNE_MIN_MACS
    if m is None:
        if small:
            choice = "grouped"  # too small to be worth timing: one call beats B calls
        else:
            with torch.no_grad():
                xs = torch.randn_like(x)
                ws = torch.randn(tuple(weight_shape), dtype=x.dtype, device=x.device)
                times = _best_times({k.name: _kernel_step(k, xs, ws, training, need_x)
                                     for k in (GroupedConv(spec), LoopConv(spec), UnfoldConv(spec))}, x)
            choice = min(times, key=times.get)
    else:
        cands = [GroupedConv(spec), StackedConv(spec)]
        if not small:
            cands[1:1] = [LoopConv(spec), UnfoldConv(spec)]
        xs = torch.randn_like(x)
        a = torch.rand(x.shape[0], m, dtype=x.dtype, device=x.device)
        w = torch.randn((m, *tuple(weight_shape)[1:]), dtype=x.dtype, device=x.device)
        times = _best_times({k.name: _op_step(k, xs, a, w, training, need_x, recompute) for k in cands}, x)
        choice = min(times, key=times.get)
    _CHOICES[key] = choice
    return choice


def kernel_choices() -> dict[tuple, str]:
    """The kernels chosen so far by ``auto``, keyed by shape (for reports and benchmarks)."""
    return dict(_CHOICES)


def conv_kernel(
    name: str, spec: ConvSpec, x: torch.Tensor, weight_shape: tuple[int, ...],
    num_sources: int | None = None, recompute: bool = True,
) -> Kernel | StackedConv:
    """The kernel for a per-sample convolution; ``name`` is one of ``CONV_KERNELS``.

    ``weight_shape`` is the per-sample weight's (B, C_out, C_in/groups, kH, kW);
    ``num_sources`` and ``recompute`` (what the layer aggregates and how) let ``auto`` time
    ``stacked`` too. 1x1 convolutions without padding or groups use the batched matrix product
    unless ``stacked`` is asked for by name.
    """
    if name == "stacked":
        return StackedConv(spec)
    if spec.is_pointwise(tuple(weight_shape[-2:])):
        return PointwiseConv(spec)
    if name == "auto":
        shape = weight_shape if num_sources is None else PerSampleShape(weight_shape, num_sources, recompute)
        name = choose_conv_kernel(spec, x, shape)
    if name == "grouped":
        return GroupedConv(spec)
    if name == "loop":
        return LoopConv(spec)
    if name == "unfold":
        return UnfoldConv(spec)
    if name == "stacked":
        return StackedConv(spec)
    raise ValueError(f"unknown per-sample conv kernel {name!r}; choose one of {CONV_KERNELS}")


# --------------------------------------------------------------------------------------------
# Aggregation + kernel as one autograd function
# --------------------------------------------------------------------------------------------


def _own(y: torch.Tensor) -> torch.Tensor:
    """A forward's output as a tensor of its own for autograd, not a view of an intermediate
    (``y.view``/``permute`` of a product): autograd forbids in-place changes of a custom
    Function's view outputs, and a layer after this one may modify its input in place (e.g.
    ``ReLU(inplace=True)``). Nothing else holds the intermediate, so the alias is safe."""
    return y.detach() if y._base is not None else y


def add_bias(y: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None, channel_dim: int) -> torch.Tensor:
    """``y + sum_i a_bi bias_i`` along ``channel_dim`` (Eq. 2's aggregated bias), in place: ``y``
    is the fresh output of a forward above (one pass fewer over it than an autograd ``add``)."""
    if bias is None:
        return y
    bb = a @ bias.to(y.dtype)  # (B, C_out)
    shape = [1] * y.dim()
    shape[0], shape[channel_dim] = bb.shape
    return y.add_(bb.to(y.dtype).view(shape))


def bias_backward(gy: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None, channel_dim: int,
                  ga: torch.Tensor | None, need_bias: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The aggregated bias's share of the gradients: with ``gbb_b`` the output gradient summed
    over every axis but batch and channel, ``grad a_bi += <gbb_b, bias_i>`` and
    ``grad bias_i = sum_b a_bi gbb_b``. Returns ``(ga, grad bias)``."""
    if bias is None or (ga is None and not need_bias):
        return ga, None
    cdim = channel_dim % gy.dim()
    dims = [d for d in range(1, gy.dim()) if d != cdim]
    gbb = gy.sum(dims) if dims else gy
    if cdim != 1:
        gbb = gbb.reshape(gy.shape[0], -1)
    bc = bias.to(gbb.dtype)
    if ga is not None:
        ga = ga + gbb @ bc.t()
    gb = (a.t() @ gbb).to(bias.dtype) if need_bias else None
    return ga, gb


#: Column blocks for the products over all per-sample weights on the CPU: ``aggregate``'s
#: ``(B, m)(m, n)`` and the two backward contractions ``(m, n)(n, B)`` / ``(m, B)(B, n)`` run as
#: one product per block of ``COLUMN_BLOCK`` columns when ``n`` (the numbers of one weight) is at
#: least the size below. Measured offline at the paper shape (B = 48, m = 5; an AMD EPYC VM's MKL,
#: ``benchmarks/column_blocks.py``): one product over 2.4M columns writes ~7 GB/s, blocks ~10;
#: the two contractions there took 205 ms unblocked and 113 ms blocked, one pass over each block
#: of the gradient while it is in cache. Below these sizes blocks measured no faster.
COLUMN_BLOCK = 16384
AGGREGATE_BLOCKED_FROM = 1 << 19
CONTRACT_BLOCKED_FROM = 1 << 17


def column_blocks(n: int, device: torch.device, blocked_from: int) -> list[slice]:
    """The column slices of an ``n``-column product: blocks of :data:`COLUMN_BLOCK` on the CPU
    from ``blocked_from`` columns on, else one slice over all of them."""
    if device.type != "cpu" or n < blocked_from:
        return [slice(0, n)]
    return [slice(j, min(j + COLUMN_BLOCK, n)) for j in range(0, n, COLUMN_BLOCK)]


def aggregate(a: torch.Tensor, w: torch.Tensor, scratch_name: str | None = None) -> torch.Tensor:
    """``W_b = sum_i a_bi w_i`` for gates ``a`` (B, m) and weights ``w`` (m, ...) (Eq. 2).

    With ``scratch_name`` the result is written into a shared scratch buffer (workspace.py)
    instead of a fresh allocation; it is then only valid until the next call that uses it.
    Large weights are written in column blocks (:func:`column_blocks`); each number is the
    same sum over the m sources either way.
    """
    m, b = w.shape[0], a.shape[0]
    shape = (b, *w.shape[1:])
    if torch.is_grad_enabled() and (a.requires_grad or w.requires_grad):
        return (a @ w.reshape(m, -1)).view(shape)  # differentiable, for a caller under autograd
    if scratch_name is None:
        out = torch.empty(shape, dtype=w.dtype, device=w.device)
    else:
        out = scratch(scratch_name, shape, w.dtype, w.device)
    w2, o2 = w.reshape(m, -1), out.view(b, -1)
    for cols in column_blocks(w2.shape[1], w.device, AGGREGATE_BLOCKED_FROM):
        torch.mm(a, w2[:, cols], out=o2[:, cols])
    return out


def contract_weight_grads(
    gflat: torch.Tensor, a: torch.Tensor, w_flat: torch.Tensor, need_a: bool, need_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """From the per-sample weight gradients ``gflat`` (B, n): ``grad a_bi = <gW_b, w_i>`` (B, m)
    and ``grad w_i = sum_b a_bi gW_b`` (m, n), for gates ``a`` (B, m) and weights ``w_flat``
    (m, n). Large ``n`` goes block by block (:func:`column_blocks`), both products on a block
    while it is in cache: one read of ``B x n`` numbers instead of two."""
    m, b, n = w_flat.shape[0], gflat.shape[0], gflat.shape[1]
    ga_t = gw = None
    if need_w:
        gw = torch.empty((m, n), dtype=gflat.dtype, device=gflat.device)
    at = a.t()
    for i, cols in enumerate(column_blocks(n, gflat.device, CONTRACT_BLOCKED_FROM)):
        g = gflat[:, cols]
        if need_a:  # (m x n)(n x B) runs faster than (B x n)(n x m) here
            ga_t = w_flat[:, cols] @ g.t() if i == 0 else ga_t.addmm_(w_flat[:, cols], g.t())
        if need_w:
            torch.mm(at, g, out=gw[:, cols])
    return (ga_t.t() if ga_t is not None else None), gw


class AggregatedPerSample(torch.autograd.Function):
    """``y_b = kernel(x_b, sum_i a_bi w_i) (+ sum_i a_bi bias_i)`` with exact gradients for ``x``,
    ``a``, ``w`` (and ``bias``).

    Backward: with ``gW_b`` the gradient of the per-sample weight from the kernel,
    ``grad a_bi = <gW_b, w_i>`` and ``grad w_i = sum_b a_bi gW_b`` — two matrix products.
    """

    @staticmethod
    def forward(ctx, x, a, w, bias, kernel: Kernel, recompute: bool):  # type: ignore[override]
        # recomputed in backward -> a scratch buffer is enough; kept for backward -> its own tensor
        wb = aggregate(a.to(x.dtype), w.to(x.dtype), "per_sample_weight" if recompute else None)
        ctx.kernel = kernel
        ctx.recompute = recompute
        ctx.dtypes = (a.dtype, w.dtype)
        if recompute:
            y = kernel.forward(x, wb)
            ctx.save_for_backward(x, a, w, bias)
        else:  # keep the per-sample weights and what the kernel's backward would recompute
            y, kept = kernel.forward_keep(x, wb)
            ctx.save_for_backward(x, a, w, bias, wb, *(() if kept is None else (kept,)))
        return _own(add_bias(y, a.to(x.dtype), bias, kernel.channel_dim))

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):  # type: ignore[override]
        kept = None
        x, a, w, bias = ctx.saved_tensors[:4]
        if ctx.recompute:
            wb = aggregate(a.to(x.dtype), w.to(x.dtype), "per_sample_weight")
        else:
            wb = ctx.saved_tensors[4]
            kept = ctx.saved_tensors[5] if len(ctx.saved_tensors) > 5 else None
        need_x, need_a, need_w = ctx.needs_input_grad[:3]
        gy = gy.to(x.dtype)
        gx, gwb = ctx.kernel.backward(x, wb, gy, need_x, need_a or need_w, kept)
        ga = gw = None
        if gwb is not None:
            m, b = w.shape[0], a.shape[0]
            g3 = gwb.reshape(b, gwb.shape[1], -1)
            wc = w.to(x.dtype)
            # a kernel may store the gradient (B, K, C_out) (UnfoldConv._columns_backward):
            # contract in that order rather than copy B x |W| numbers into (B, C_out, K)
            transposed = not g3.is_contiguous() and g3.transpose(1, 2).is_contiguous()
            if transposed:
                gflat = g3.transpose(1, 2).reshape(b, -1)
                w_flat = wc.reshape(m, w.shape[1], -1).transpose(1, 2).reshape(m, -1)
            else:
                gflat = g3.reshape(b, -1)
                w_flat = wc.reshape(m, -1)
            ga, gw = contract_weight_grads(gflat, a.to(x.dtype), w_flat, need_a, need_w)
            if need_w:
                if transposed:
                    gw = gw.view(m, -1, w.shape[1]).transpose(1, 2)
                gw = gw.reshape(w.shape).to(ctx.dtypes[1])
        ga, gb = bias_backward(gy, a.to(x.dtype), bias, ctx.kernel.channel_dim, ga,
                               ctx.needs_input_grad[3])
        if ga is not None:
            ga = ga.to(ctx.dtypes[0])
        return gx, ga, gw, gb, None, None


def per_sample(
    x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, kernel: Kernel | StackedConv,
    recompute: bool = True, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y_b = conv_or_linear(x_b, sum_i a_bi w_i) + sum_i a_bi bias_i`` for gates ``a`` (B, m),
    aligned source weights ``w`` (m, ...) and biases ``bias`` (m, C_out) or ``None`` (Eq. 2):
    :class:`AggregatedPerSample` for the per-sample kernels, :class:`StackedRowsPerSample` /
    :class:`StackedPerSample` for ``stacked``. ``recompute``: keep only ``x, a, w`` for backward
    (True) or also the kernel's intermediate (per-sample weights, or stacked outputs).

    The aggregated bias is added inside the function, in place on its fresh output
    (:func:`add_bias`), and its gradients come from the output gradient summed per channel
    (:func:`bias_backward`): one pass fewer over the output than an autograd ``add`` after it."""
    if isinstance(kernel, StackedConv):
        if kernel.rows(x, w):
            return StackedRowsPerSample.apply(x, a, w, bias, kernel, recompute)
        return StackedPerSample.apply(x, a, w, bias, kernel, recompute)
    return AggregatedPerSample.apply(x, a, w, bias, kernel, recompute)


