"""The ``stacked`` per-sample convolution (one convolution with the m source weights stacked along
the output channels + a per-sample weighted sum) against the straightforward per-sample loop.

The full grid of conv shapes x recompute is in ``test_core_layers.py`` (``kernel="stacked"``);
here: the other gradient paths (input without gradient, frozen gates, no source gradient), the
explicit 1x1 case, unbatched input, ``auto`` choosing it, and the autograd function alone.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from test_core_layers import _grads, _naive_conv, _sources
from zootune.layers import AdaAggConv2d
from zootune.layers.kernels import (
    ConvSpec,
    PerSampleShape,
    StackedConv,
    aggregate,
    choose_conv_kernel,
    conv_kernel,
    per_sample,
)


def _layer(cfg, recompute=True, m=3, kernel="stacked"):
    srcs = _sources(lambda: nn.Conv2d(**cfg), m=m)
    layer = AdaAggConv2d(srcs, kernel=kernel, align=True, lite=False, gate="sigmoid",
                         gate_init="default", gate_hidden=3, te_momentum=0.9, recompute=recompute)
    with torch.no_grad():
        layer.align.delta.normal_(0, 0.1)
    return srcs, layer.train()


CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1, bias=False),
    dict(in_channels=6, out_channels=6, kernel_size=3, groups=6, padding=1),  # depthwise
    dict(in_channels=4, out_channels=8, kernel_size=5, stride=5),  # the RL network's shape
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("recompute", [True, False])
def test_input_without_gradient(cfg, recompute):
    """The RL network's first conv: no input gradient, so the gate gradient needs the m
    outputs (kept, or recomputed)."""
    srcs, layer = _layer(cfg, recompute)
    x = torch.randn(4, cfg["in_channels"], 12, 11, dtype=torch.float64)
    out = layer(x)
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(5))
    layer.zero_grad()
    (out * w).sum().backward()
    g_fast = {n: p.grad.clone() for n, p in layer.named_parameters()}
    ref = _naive_conv(layer, srcs[0], x)
    layer.zero_grad()
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(g_fast[n], p.grad, msg=f"gradient of {n}")


@pytest.mark.parametrize("recompute", [True, False])
def test_frozen_gates_and_frozen_sources(recompute):
    """Gradients of only some inputs (freeze_gates: no gate gradient; frozen sources)."""
    cfg = dict(in_channels=4, out_channels=6, kernel_size=3, padding=1)
    for freeze in ("gate", "weight"):
        srcs, layer = _layer(cfg, recompute)
        if freeze == "gate":
            layer.gate.requires_grad_(False)
        else:
            layer.weight.requires_grad_(False)
        x = torch.randn(3, 4, 7, 8, dtype=torch.float64, requires_grad=True)
        out = layer(x)
        g_fast = _grads(layer, x, out)
        ref = _naive_conv(layer, srcs[0], x)
        g_ref = _grads(layer, x, ref)
        torch.testing.assert_close(out, ref)
        assert g_fast.keys() == g_ref.keys()
        for n in g_ref:
            torch.testing.assert_close(g_fast[n], g_ref[n], msg=f"{freeze} frozen: gradient of {n}")


def test_pointwise_by_name_and_unbatched_input():
    cfg = dict(in_channels=4, out_channels=6, kernel_size=1, stride=2)
    srcs, layer = _layer(cfg)
    spec = layer.spec
    assert isinstance(conv_kernel("stacked", spec, torch.zeros(1, 4, 5, 5), (1, 6, 4, 1, 1)), StackedConv)
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    g_fast = _grads(layer, x, out)
    ref = _naive_conv(layer, srcs[0], x)
    g_ref = _grads(layer, x, ref)
    torch.testing.assert_close(out, ref)
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], msg=f"gradient of {n}")
    torch.testing.assert_close(layer(x[0]), out[0])


def test_autograd_function_gradcheck_with_groups():
    """The autograd function alone, numerically (float64), grouped and strided with dilation."""
    spec = ConvSpec((2, 1), (1, 2), (1, 2), 2)
    k = StackedConv(spec)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    a = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    for recompute in (True, False):
        assert torch.autograd.gradcheck(lambda x, a, w: per_sample(x, a, w, k, recompute), (x, a, w),
                                        fast_mode=True)
    # and the forward equals the aggregated per-sample weights applied sample by sample
    wb = aggregate(a, w)
    ref = torch.cat([torch.nn.functional.conv2d(x[i : i + 1], wb[i], None, spec.stride, spec.padding,
                                                spec.dilation, spec.groups) for i in range(3)])
    assert ref.shape == (3, 4, 3, 6)
    torch.testing.assert_close(per_sample(x, a, w, k), ref)


def test_float32_gates_with_float64_input_keep_their_dtypes():
    k = StackedConv(ConvSpec((1, 1), (1, 1), (1, 1), 1))
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    a = torch.rand(2, 2, requires_grad=True)
    w = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    per_sample(x, a, w, k).sum().backward()
    assert a.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    assert x.grad.dtype == torch.float64


def test_auto_times_stacked_with_the_number_of_sources(monkeypatch):
    """With the layer's m known, ``auto`` times ``stacked`` as a candidate; what it picks is exact."""
    import zootune.layers.kernels as K

    spec = ConvSpec((5, 5), (0, 0), (1, 1), 1)
    x = torch.randn(4, 3, 20, 20, dtype=torch.float64)
    timed = []
    real = K._best_times

    def spy(steps, x, repeats=3):
        timed.extend(steps)
        return {name: 0.0 if name == "stacked" else 1.0 for name in steps}

    monkeypatch.setattr(K, "_best_times", spy)
    monkeypatch.setattr(K, "_CHOICES", {})
    assert choose_conv_kernel(spec, x, PerSampleShape((4, 5, 3, 5, 5), 2, False)) == "stacked"
    assert "stacked" in timed and "grouped" in timed
    assert choose_conv_kernel(spec, x, (4, 5, 3, 5, 5)) == "grouped"  # plain shape: as before
    monkeypatch.setattr(K, "_best_times", real)
    srcs, layer = _layer(dict(in_channels=3, out_channels=5, kernel_size=5, stride=5), kernel="auto", m=2)
    xg = x.clone().requires_grad_(True)
    out = layer(xg)
    assert layer.train_kernel in ("grouped", "stacked")
    g_fast = _grads(layer, xg, out)
    ref = _naive_conv(layer, srcs[0], xg)
    g_ref = _grads(layer, xg, ref)
    torch.testing.assert_close(out, ref)
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], msg=f"gradient of {n}")


def test_lite_train_mode_without_autograd_caches_alignment_exactly():
    """Lite, training mode, autograd off (acting / target networks): the aligned weights are
    cached, the output equals the uncached forward, and the cache follows parameter updates."""
    srcs = _sources(lambda: nn.Conv2d(3, 4, 3, padding=1))
    layer = AdaAggConv2d(srcs, kernel="grouped", align=True, lite=True, gate="normalized",
                         gate_init="default", gate_hidden=None, te_momentum=0.9, recompute=True)
    layer.track_gates = False
    with torch.no_grad():
        layer.align.delta.normal_(0, 0.1)
    layer.train()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        y1 = layer(x)
        assert layer._cache is not None and layer._cache_key[0] == "aligned"
        torch.testing.assert_close(layer(x), y1)
    torch.testing.assert_close(layer(x), y1)  # autograd on: computed afresh, same numbers
    with torch.no_grad():
        layer.align.delta.add_(0.05)
        y2 = layer(x)
    torch.testing.assert_close(y2, layer(x))
    assert not torch.allclose(y1, y2)


def test_kernel_timing_is_interleaved():
    """Candidates are timed round by round (a load change hits all of them), best of the rounds."""
    import time

    import zootune.layers.kernels as K

    calls = []
    steps = {"slow": lambda: (calls.append("slow"), time.sleep(0.003)), "fast": lambda: calls.append("fast")}
    best = K._best_times(steps, torch.zeros(1), repeats=3)
    assert calls == ["slow", "fast"] * 4  # one warm-up round, then 3 timed rounds
    assert best["fast"] < 0.003 <= best["slow"]
