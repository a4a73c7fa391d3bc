"""Adaptive Aggregation (AdaAgg) layers: one layer built from the same layer of ``m`` sources.

For every sample ``b`` (paper Eq. 2)::

    W_b = sum_i a_bi * T_i W_i          a_b = A(h_b)  (gate.py),  T_i = I + D_i  (align.py)
    b_b = sum_i a_bi * T_i bias_i       (biases aggregate the same way)

and the layer applies ``W_b`` to sample ``b`` with an exact per-sample kernel (kernels.py) — or,
with ``kernel="stacked"``, never forms ``W_b``: one convolution with the ``m`` aligned weights
stacked along the output channels and a per-sample weighted sum of its ``m`` outputs.

Lite mode (§3.3): in training, every sample of the batch uses the batch-mean gate, so the layer
runs one ordinary convolution with one merged kernel; the batch means feed the temporal ensemble
``abar`` (Eq. 4, temporal_ensemble.py). In eval the kernel is ``sum_i abar_i T_i W_i`` (Eq. 5),
computed once and cached, and the gate network is not evaluated at all.

Gate statistics (the temporal ensemble in lite mode, the running mean of observed gates in
per-sample mode) are updated by training-mode forwards only while the plain attribute
``track_gates`` is ``True`` (the default, like BatchNorm's ``track_running_stats``: a plain
training loop keeps them). Turning it off freezes the statistics — for forwards that are not
training steps (a gradient probe, a feature pass in train mode, a second forward of one step)
— while the layer computes exactly the same outputs and gradients: lite training always
uses the differentiable batch-mean gate. ``ZooModel.track_gates`` sets it on every layer. The
flag is not part of the state dict.

Caching: when autograd is off (``torch.no_grad`` / ``torch.inference_mode``) the aligned source
weights (per-sample mode) or the merged kernel (lite eval) are computed once and reused until a
parameter or the temporal ensemble changes (tracked by tensor version counters). Alignment is
data-independent, so at inference it costs nothing per batch (paper §3.4); lite training-mode
forwards without autograd (an RL agent acting, target networks) reuse the aligned weights too
and only merge them with the batch-mean gate.

The source weights of all ``m`` sources live in one parameter ``weight`` of shape
``(m, *source_weight_shape)``; ``bias`` is ``(m, C_out)``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .align import ChannelAlign
from .gate import Gate, GateInit, GateKind, pool_conv_input, pool_linear_input
from .shared_input import reuse
from .kernels import ConvSpec, PerSampleLinear, conv_kernel, per_sample
from .temporal_ensemble import TemporalEnsemble, global_batch_mean


class AdaAggBase(nn.Module):
    """What AdaAgg convolutions and linear layers share: sources, alignment, gate, ensemble.

    ``track_gates`` (bool, default ``True``): whether training-mode forwards update the gate
    statistics (``te``). A class attribute too, so layers pickled before it existed have it.
    """

    track_gates: bool = True

    def __init__(
        self,
        sources: list[nn.Module],
        gate_in_features: int,
        *,
        align: bool,
        lite: bool,
        gate: GateKind,
        gate_init: GateInit,
        gate_hidden: int | None,
        te_momentum: float,
        recompute: bool,
    ) -> None:
        super().__init__()
        first = sources[0]
        m = len(sources)
        with torch.no_grad():
            weight = torch.stack([s.weight.detach() for s in sources]).clone()
            bias = (
                torch.stack([s.bias.detach() for s in sources]).clone()
                if first.bias is not None
                else None
            )
        self.num_sources = m
        self.lite = bool(lite)
        self.recompute = bool(recompute)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None
        out_channels = weight.shape[1]
        self.align = ChannelAlign(m, out_channels) if align else None
        self.gate = Gate(gate_in_features, m, gate_hidden, gate, gate_init)
        self.te = TemporalEnsemble(m, te_momentum)
        self.track_gates = True
        self.to(device=weight.device, dtype=weight.dtype)
        # The original layer with its tensors on the meta device: the class and hyper-parameters
        # that export rebuilds (not a registered child, so not in state_dict / parameters).
        shell = copy.deepcopy(first).to("meta")
        self.__dict__["_shell"] = shell
        self._cache_key: tuple | None = None
        self._cache: tuple | None = None

    # ---- weights ----------------------------------------------------------------------------

    def aligned(self, values: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(T_i W_i, T_i bias_i)`` for every source: shapes (m, ...) and (m, C_out).
        ``values``: these results computed earlier from the same parameters without autograd
        (:meth:`ChannelAlign.sources` then only adds the backward)."""
        w, b = self.weight, self.bias
        if self.align is None:
            return w, b
        # one node for both (AlignedSources); the bias is aligned on its own: a concatenated
        # [W | b] would be copied in and sliced out again, in forward and backward
        return self.align.sources(w, b, values)

    def _aligned_for_forward(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`aligned` for a per-sample forward: cached while autograd is off; with it on,
        the cached values are reused when they are current (an agent that acted since its last
        update) and only the alignment's backward is added, so it is computed once a step."""
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._cached("aligned", self.aligned)
        values = self._cache if self._cache_key == self._key("aligned") else None
        if values is not None and (values[0].is_inference()  # autograd cannot save those
                                   or torch.is_autocast_enabled(self.weight.device.type)):
            values = None  # (and under autocast the forward computes in another dtype)
        return self.aligned(values)

    def gate_value(self) -> torch.Tensor:
        """``abar`` (m,): the temporal ensemble (lite) or running mean of observed gates."""
        return self.te.value(prior=self.gate.neutral())

    def merged(
        self, gates: torch.Tensor | None = None, aligned: tuple | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``sum_i g_i T_i W_i`` and the merged bias (Eq. 5); ``gates`` default to ``abar``.
        Given ``aligned`` (the result of :meth:`aligned`, e.g. cached), one weighted sum of it;
        otherwise the alignment is folded into the merge (:meth:`ChannelAlign.merge`)."""
        g = self.gate_value() if gates is None else gates
        if aligned is None and self.align is not None:  # one product, alignment folded in
            return self.align.merge(self.weight, g, self.bias)
        w, b = self.aligned() if aligned is None else aligned
        m = w.shape[0]
        g = g.to(w.dtype)
        # matrix-vector products: BLAS handles (K x m)(m) far better than (1 x m)(m x K) (~6x here)
        merged_w = torch.mv(w.reshape(m, -1).t(), g).view(w.shape[1:])
        merged_b = torch.mv(b.t(), g) if b is not None else None
        return merged_w, merged_b

    def _cached(self, kind: str, fn):
        """Reuse ``fn()`` while autograd is off and nothing it depends on has changed.

        Not inside ``torch.compile``: the key compares data pointers and version counters, which
        a graph cannot; a compiled model recomputes ``fn()`` in its graph (small next to the
        convolutions unless the batch is tiny)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return fn()
        key = self._key(kind)
        if self._cache_key != key:
            self._cache = fn()
            self._cache_key = key
        return self._cache

    def _key(self, kind: str) -> tuple:
        """What a cached result depends on, by storage and in-place version: the aligned
        weights on the source weights, biases and alignment; anything else (the merged kernel)
        on every parameter and the ensemble."""
        if kind == "aligned":  # read directly: this key is built on every per-sample forward
            align = self.align
            tensors = (self.weight, self.bias, align.delta if align is not None else None)
        else:
            tensors = [p for p in self.parameters(recurse=True)] + [self.te.accumulator, self.te.steps]
        return (kind,) + tuple((t.data_ptr(), t._version) for t in tensors if t is not None)

    def _forget_cache(self) -> None:
        self._cache_key = None
        self._cache = None

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): drop stale caches
        self._forget_cache()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):  # deepcopy / pickle: never carry cached tensors along
        state = self.__dict__.copy()
        state["_cache_key"] = None
        state["_cache"] = None
        return state

    # ---- gates ------------------------------------------------------------------------------

    def _gates(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.gate(pooled.to(self.gate.fc1.weight.dtype))

    def _lite_train_gates(self, a: torch.Tensor) -> torch.Tensor:
        """Batch-mean gate (differentiable, global under DDP), recorded in the ensemble while
        ``track_gates`` is on."""
        mean = global_batch_mean(a, differentiable=True)
        if self.track_gates:
            self.te.update(mean)
        return mean

    def _lite_weights(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The merged weight for the batch-mean gate ``g`` in lite training: with autograd on,
        the folded product of :meth:`ChannelAlign.merge`; with it off (an agent acting, target
        values) the aligned weights are cached across calls and only the cheap weighted sum
        is redone."""
        if torch.is_grad_enabled():
            return self.merged(g)
        return self.merged(g, self._cached("aligned", self.aligned))

    def _observe(self, a: torch.Tensor) -> None:
        """Per-sample mode: feed the running mean of observed gates (training, tracking on)."""
        if self.training and self.track_gates:
            self.te.update(global_batch_mean(a.detach(), differentiable=False))

    # ---- export -----------------------------------------------------------------------------

    @torch.no_grad()
    def to_plain(self, gates: torch.Tensor | None = None) -> nn.Module:
        """An ordinary layer of the original class holding the merged weights (Eq. 5)."""
        w, b = self.merged(gates)
        plain = copy.deepcopy(self.__dict__["_shell"]).to_empty(device=w.device)
        plain.to(w.dtype)
        plain.weight.copy_(w)
        if b is not None:
            plain.bias.copy_(b)
        plain.weight.requires_grad_(True)
        return plain

    def extra_repr(self) -> str:
        return (
            f"num_sources={self.num_sources}, weight={tuple(self.weight.shape[1:])}, "
            f"bias={self.bias is not None}, align={self.align is not None}, lite={self.lite}"
            + ("" if self.track_gates else ", track_gates=False")
        )


class AdaAggConv2d(AdaAggBase):
    """AdaAgg version of ``nn.Conv2d`` (any kernel, stride, padding, dilation, groups, bias)."""

    def __init__(self, sources: list[nn.Conv2d], *, kernel: str = "auto", **kwargs) -> None:
        first = sources[0]
        super().__init__(sources, first.in_channels, **kwargs)
        self.kernel = kernel
        #: the kernel the last training forward used (``kernel="auto"`` resolves per shape)
        self.train_kernel: str | None = None
        self.in_channels = first.in_channels
        self.out_channels = first.out_channels
        self.kernel_size = tuple(first.kernel_size)
        self.stride = tuple(first.stride)
        self.dilation = tuple(first.dilation)
        self.groups = first.groups
        self.padding_mode = first.padding_mode
        # Padding the input explicitly (for 'same' and non-zero padding modes) lets every kernel
        # run with numeric zero padding.
        self._pre_pad, padding = _explicit_padding(first)
        self.spec = ConvSpec(self.stride, padding, self.dilation, self.groups)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self._pre_pad is None:
            return x
        pads, mode = self._pre_pad
        return F.pad(x, pads, mode=mode) if mode != "zeros" else F.pad(x, pads)

    def _conv(self, x, w, b):
        s = self.spec
        return F.conv2d(x, w, b, s.stride, s.padding, s.dilation, s.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"AdaAggConv2d expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if self.lite and not self.training:
            w, b = self._cached("merged", self.merged)
            y = self._conv(self._pad(x), w.to(x.dtype), b.to(x.dtype) if b is not None else None)
        else:
            a = self._gates(reuse("pool_conv", x, (), lambda: pool_conv_input(x)))
            xp = self._pad(x)
            if self.lite:
                w, b = self._lite_weights(self._lite_train_gates(a))
                y = self._conv(xp, w, b)
            else:
                self._observe(a)
                w, b = self._aligned_for_forward()
                if x.shape[0] == 1 and not torch.is_grad_enabled():
                    # one sample (an agent acting): its weight sum_i a_0i T_i W_i is one ordinary
                    # kernel, so a plain convolution replaces the per-sample machinery
                    wm, bm = self.merged(a[0], (w, b))
                    y = self._conv(xp, wm.to(xp.dtype), bm.to(xp.dtype) if bm is not None else None)
                    return y.squeeze(0) if unbatched else y
                kern = conv_kernel(self.kernel, self.spec, xp, (x.shape[0],) + tuple(w.shape[1:]),
                                   num_sources=self.num_sources, recompute=self.recompute)
                if torch.is_grad_enabled():
                    self.train_kernel = kern.name  # what "auto" picked for training (a plan entry)
                y = per_sample(xp, a, w, kern, self.recompute, b)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, groups={self.groups}, " + super().extra_repr()
        )


class AdaAggLinear(AdaAggBase):
    """AdaAgg version of ``nn.Linear`` on inputs ``(B, *, in_features)``.

    The gate pools the input over every axis except batch and features, so a token sequence
    ``(B, N, D)`` gets one gate per sequence, as a feature map gets one per image.
    """

    def __init__(self, sources: list[nn.Linear], **kwargs) -> None:
        first = sources[0]
        kwargs.pop("kernel", None)
        super().__init__(sources, first.in_features, **kwargs)
        self.in_features = first.in_features
        self.out_features = first.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"AdaAggLinear expects input (B, *, {self.in_features}) with a batch axis, "
                f"got {tuple(x.shape)}"
            )
        if self.lite and not self.training:
            w, b = self._cached("merged", self.merged)
            return F.linear(x, w.to(x.dtype), b.to(x.dtype) if b is not None else None)
        a = self._gates(reuse("pool_linear", x, (), lambda: pool_linear_input(x)))
        if self.lite:
            w, b = self._lite_weights(self._lite_train_gates(a))
            return F.linear(x, w, b)
        self._observe(a)
        w, b = self._aligned_for_forward()
        bsz = x.shape[0]
        x3 = x.reshape(bsz, -1, self.in_features)
        y = per_sample(x3, a, w, PerSampleLinear(), self.recompute, b)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


def _explicit_padding(conv: nn.Conv2d) -> tuple[tuple | None, tuple[int, int]]:
    """Turn a conv's padding into (input pre-padding or None, numeric conv padding).

    ``padding='same'`` and non-``zeros`` padding modes are applied to the input with ``F.pad``
    so every per-sample kernel can use plain numeric zero padding.
    """
    pad = conv.padding
    if isinstance(pad, str):
        if pad == "valid":
            return None, (0, 0)
        # 'same' (stride 1): total padding d*(k-1) per axis, the extra pixel at the end.
        pads: list[int] = []
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return (tuple(pads), conv.padding_mode), (0, 0)
    pad = tuple(pad)
    if conv.padding_mode != "zeros" and any(pad):
        pads = (pad[1], pad[1], pad[0], pad[0])
        return (pads, conv.padding_mode), (0, 0)
    return None, pad
