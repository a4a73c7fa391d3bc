"""input_reuse: two networks on one batch share input-only work, with unchanged results."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zootune.layers.shared_input as R
from zootune.layers import AdaAggConv2d
from zootune.layers.shared_input import input_reuse, memo_size


def _pair(kernel="unfold", seed=0):
    """Two AdaAgg convs with different weights (like an online and a target network)."""
    torch.manual_seed(seed)
    srcs = [nn.Conv2d(4, 6, 5, stride=5).double() for _ in range(2)]
    first = AdaAggConv2d(srcs, kernel=kernel, align=True, lite=False, gate="sigmoid",
                         gate_init="default", gate_hidden=3, te_momentum=0.9, recompute=False)
    second = copy.deepcopy(first)
    with torch.no_grad():
        for p in second.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return first.train(), second.train()


def _count_computes(monkeypatch):
    calls = []
    orig = R.reuse

    def counting(kind, x, key, compute):
        return orig(kind, x, key, lambda: (calls.append(kind), compute())[1])

    import zootune.layers.adaagg as A
    import zootune.layers.kernels as K

    monkeypatch.setattr(A, "reuse", counting)
    monkeypatch.setattr(K, "reuse", counting)
    return calls


def test_two_layers_on_one_input_compute_im2col_and_pooling_once_and_match(monkeypatch):
    first, second = _pair()
    x = torch.randn(3, 4, 22, 21, dtype=torch.float64)  # cropped: 22x21 -> 20x20
    with torch.no_grad():
        want = (first(x), second(x))
    calls = _count_computes(monkeypatch)
    with torch.no_grad(), input_reuse():
        got = (first(x), second(x))
        assert memo_size() == 2  # one im2col, one pooled input
    assert sorted(calls) == ["im2col", "pool_conv"]
    assert memo_size() == 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_an_in_place_change_of_the_input_is_seen(monkeypatch):
    first, second = _pair()
    x = torch.randn(3, 4, 20, 20, dtype=torch.float64)
    calls = _count_computes(monkeypatch)
    with torch.no_grad(), input_reuse():
        first(x)
        x.mul_(2)  # same tensor object, new version: the memo must not answer
        got = second(x)
    assert calls.count("im2col") == 2 and calls.count("pool_conv") == 2
    with torch.no_grad():
        torch.testing.assert_close(got, second(x), rtol=0, atol=0)


def test_a_graph_input_is_not_memoised_and_gradients_stay_exact(monkeypatch):
    """With autograd on and an input that needs a gradient, each layer keeps its own pooled
    input (its own graph); the kernel's im2col (no graph inside the autograd function) may be
    shared, and every gradient equals the one computed without reuse."""
    first, second = _pair()
    x = torch.randn(3, 4, 20, 20, dtype=torch.float64, requires_grad=True)

    def grads():
        for mod in (first, second):
            mod.zero_grad()
        x.grad = None
        (first(x).square().sum() + second(x).sin().sum()).backward()
        return [x.grad.clone()] + [p.grad.clone() for mod in (first, second) for p in mod.parameters()]

    want = grads()
    calls = _count_computes(monkeypatch)
    with input_reuse():
        got = grads()
    assert calls.count("pool_conv") == 2 and calls.count("im2col") == 1
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", ["unfold", "stacked"])
def test_nothing_is_kept_outside_a_block(kernel, monkeypatch):
    first, second = _pair(kernel)
    calls = _count_computes(monkeypatch)
    x = torch.randn(2, 4, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        first(x), second(x)
    assert calls.count("pool_conv") == 2
    assert memo_size() == 0
