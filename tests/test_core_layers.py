"""AdaAgg layers against a straightforward per-sample loop (Eq. 1-2), forward and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zootune.layers import AdaAggConv2d, AdaAggLinear, TemporalEnsemble
from zootune.layers import kernels
from zootune.layers.kernels import kernel_choices

M = 3


def _sources(factory, m=M, seed=0):
    torch.manual_seed(seed)
    return [factory().double() for _ in range(m)]


def _naive_conv(layer: AdaAggConv2d, src: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Sample by sample: gates, W_b = sum_i a_bi T_i W_i, then one ordinary conv of the source."""
    outs = []
    T = layer.align.matrices() if layer.align is not None else None
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        a = layer.gate(xb.mean(dim=(2, 3)))[0]
        wb = 0
        bb = 0
        for i in range(layer.num_sources):
            w_i = layer.weight[i]
            b_i = layer.bias[i] if layer.bias is not None else None
            if T is not None:
                w_i = torch.einsum("oc,c...->o...", T[i], w_i)
                b_i = T[i] @ b_i if b_i is not None else None
            wb = wb + a[i] * w_i
            if b_i is not None:
                bb = bb + a[i] * b_i
        plain = copy.deepcopy(src)
        del plain.weight
        plain.weight = wb
        if layer.bias is not None:
            del plain.bias
            plain.bias = bb
        outs.append(plain(xb))
    return torch.cat(outs)


def _naive_linear(layer: AdaAggLinear, x: torch.Tensor) -> torch.Tensor:
    outs = []
    T = layer.align.matrices() if layer.align is not None else None
    for b in range(x.shape[0]):
        xb = x[b]
        pooled = xb.reshape(-1, xb.shape[-1]).mean(0, keepdim=True)
        a = layer.gate(pooled)[0]
        wb, bb = 0, 0
        for i in range(layer.num_sources):
            w_i, b_i = layer.weight[i], layer.bias[i] if layer.bias is not None else None
            if T is not None:
                w_i = T[i] @ w_i
                b_i = T[i] @ b_i if b_i is not None else None
            wb = wb + a[i] * w_i
            bb = bb + a[i] * b_i if b_i is not None else bb
        outs.append(F.linear(xb, wb, bb if layer.bias is not None else None))
    return torch.stack(outs)


def _grads(module, x, out):
    module.zero_grad()
    if x.grad is not None:
        x.grad = None
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(123))
    (out * weights).sum().backward()
    g = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    g["<input>"] = x.grad.clone()
    return g


CONV_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 5), padding=(1, 2), dilation=(2, 1)),
    dict(in_channels=4, out_channels=6, kernel_size=1),
    dict(in_channels=4, out_channels=6, kernel_size=1, stride=2, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1),
    dict(in_channels=6, out_channels=6, kernel_size=3, groups=6, padding=1),  # depthwise
    dict(in_channels=4, out_channels=5, kernel_size=3, padding="same", dilation=2),
    dict(in_channels=4, out_channels=5, kernel_size=4, padding="same"),  # asymmetric 'same'
    dict(in_channels=4, out_channels=5, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=4, out_channels=4, kernel_size=7, stride=2, padding=3),
    # non-overlapping patches (stride = kernel: unfold's reshape path), input 9x11 is cropped
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(3, 2), groups=2, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 11), stride=(3, 11)),  # no crop in width
]


@pytest.mark.parametrize("cfg", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("kernel", ["grouped", "loop", "unfold", "stacked"])
@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_conv_matches_naive_loop(cfg, kernel, recompute, layout):
    """Every kernel against the naive loop, for NCHW and channels-last inputs (the latter take
    the patch-rows paths of ``unfold`` and ``stacked`` when the patches do not overlap)."""
    _check_conv_against_naive_loop(cfg, kernel, recompute, layout)


@pytest.mark.parametrize("cfg", [CONV_CASES[0], CONV_CASES[4], CONV_CASES[11]],
                         ids=["3x3", "1x1-stride2", "non-overlapping"])
@pytest.mark.parametrize("kernel", ["grouped", "loop", "unfold"])
@pytest.mark.parametrize("recompute", [True, False])
def test_conv_in_column_blocks_matches_naive_loop(cfg, kernel, recompute, monkeypatch):
    """The aggregation and the two weight-gradient contractions in column blocks (as large
    weights run on the CPU), here forced on with a block that does not divide the weight."""
    monkeypatch.setattr(kernels, "COLUMN_BLOCK", 7)
    monkeypatch.setattr(kernels, "AGGREGATE_BLOCKED_FROM", 1)
    monkeypatch.setattr(kernels, "CONTRACT_BLOCKED_FROM", 1)
    calls = []
    blocks = kernels.column_blocks
    monkeypatch.setattr(kernels, "column_blocks", lambda *a: calls.append(blocks(*a)) or calls[-1])
    _check_conv_against_naive_loop(cfg, kernel, recompute, "nchw")
    assert calls and all(len(c) > 1 for c in calls)  # both products ran in several blocks


def test_column_blocks_cover_every_column_once(monkeypatch):
    monkeypatch.setattr(kernels, "COLUMN_BLOCK", 7)
    for n in (1, 6, 7, 8, 50):
        slices = kernels.column_blocks(n, torch.device("cpu"), 1)
        assert [j for s in slices for j in range(n)[s]] == list(range(n))
    n = 3 * kernels.COLUMN_BLOCK + 5
    assert len(kernels.column_blocks(n, torch.device("cpu"), 1)) == 4
    assert kernels.column_blocks(n, torch.device("cpu"), n + 1) == [slice(0, n)]
    assert kernels.column_blocks(n, torch.device("meta"), 1) == [slice(0, n)]  # CPU only


def _check_conv_against_naive_loop(cfg, kernel, recompute, layout):
    srcs = _sources(lambda: nn.Conv2d(**cfg))
    layer = AdaAggConv2d(
        srcs, kernel=kernel, align=True, lite=False, gate="sigmoid", gate_init="default",
        gate_hidden=3, te_momentum=0.9, recompute=recompute,
    )
    with torch.no_grad():  # a non-identity alignment, so T matters in the comparison
        layer.align.delta.normal_(0, 0.1)
    layer.train()
    x = torch.randn(5, cfg["in_channels"], 9, 11, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = layer(x)
    g_fast = _grads(layer, x, out)
    ref = _naive_conv(layer, srcs[0], x)
    g_ref = _grads(layer, x, ref)
    torch.testing.assert_close(out, ref)
    assert g_fast.keys() == g_ref.keys()
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], msg=f"gradient of {n}")


@pytest.mark.parametrize("kernel", ["grouped", "loop", "unfold", "stacked"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride", [1, 3])
def test_output_may_be_modified_in_place(kernel, bias, stride):
    """A layer after an AdaAgg conv may change its output in place (an in-place ReLU): the
    per-sample autograd functions return tensors of their own, not views of an intermediate
    (autograd forbids in-place changes of those), and the bias they add in place inside keeps
    every gradient exact. Stride 3 takes the per-patch (non-overlapping) paths."""
    srcs = _sources(lambda: nn.Conv2d(4, 6, 3, stride=stride, bias=bias))
    layer = AdaAggConv2d(srcs, kernel=kernel, align=True, lite=False, gate="sigmoid",
                         gate_init="default", gate_hidden=3, te_momentum=0.9, recompute=False).train()
    x = torch.randn(3, 4, 9, 11, dtype=torch.float64, requires_grad=True)
    out_ref = torch.relu(layer(x))
    g_ref = _grads(layer, x, out_ref)
    out = torch.relu_(layer(x))
    g = _grads(layer, x, out)
    torch.testing.assert_close(out, out_ref)
    assert g.keys() == g_ref.keys()
    for n in g_ref:
        torch.testing.assert_close(g[n], g_ref[n], msg=f"gradient of {n}")


@pytest.mark.parametrize("kernel", ["unfold", "stacked"])
def test_single_sample_without_autograd_matches_the_per_sample_kernel(kernel):
    """Acting (batch 1, no autograd) takes the merged-weight shortcut; it must compute what the
    per-sample kernel computes for that sample, batched or unbatched."""
    srcs = _sources(lambda: nn.Conv2d(4, 6, 5, stride=5))
    layer = AdaAggConv2d(srcs, kernel=kernel, align=True, lite=False, gate="normalized",
                         gate_init="default", gate_hidden=3, te_momentum=0.9, recompute=False).train()
    with torch.no_grad():
        layer.align.delta.normal_(0, 0.1)
    x = torch.randn(1, 4, 22, 21, dtype=torch.float64)
    with torch.enable_grad():
        ref = layer(x.requires_grad_()).detach()
    x = x.detach()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref)
        torch.testing.assert_close(layer(x[0]), ref[0])
        two = layer(torch.cat([x, x]))  # a batch of two still runs the per-sample kernel
    torch.testing.assert_close(two[0], ref[0])


@pytest.mark.parametrize("shape", [(5, 7), (5, 3, 7), (2, 3, 4, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_naive_loop_any_rank(shape, bias):
    srcs = _sources(lambda: nn.Linear(7, 6, bias=bias))
    layer = AdaAggLinear(
        srcs, align=True, lite=False, gate="sigmoid", gate_init="default", gate_hidden=4,
        te_momentum=0.9, recompute=True,
    )
    with torch.no_grad():
        layer.align.delta.normal_(0, 0.1)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    g_fast = _grads(layer, x, out)
    ref = _naive_linear(layer, x)
    g_ref = _grads(layer, x, ref)
    torch.testing.assert_close(out, ref)
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], msg=f"gradient of {n}")


def test_auto_kernel_is_exact_and_remembered():
    srcs = _sources(lambda: nn.Conv2d(3, 4, 3, padding=1))
    kw = dict(align=False, lite=False, gate="normalized", gate_init="default", gate_hidden=None,
              te_momentum=0.9, recompute=True)
    auto = AdaAggConv2d(srcs, kernel="auto", **kw)
    grouped = AdaAggConv2d(srcs, kernel="grouped", **kw)
    grouped.load_state_dict(auto.state_dict())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    before = len(kernel_choices())
    torch.testing.assert_close(auto(x), grouped(x))
    assert len(kernel_choices()) == before + 1
    assert set(kernel_choices().values()) <= {"grouped", "loop", "unfold", "stacked"}


def test_gradients_reach_every_source_alignment_and_gate():
    srcs = _sources(lambda: nn.Conv2d(3, 4, 3, padding=1, bias=True))
    layer = AdaAggConv2d(srcs, kernel="grouped", align=True, lite=False, gate="sigmoid",
                         gate_init="default", gate_hidden=None, te_momentum=0.9, recompute=True)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    (layer(x) ** 2).sum().backward()
    for i in range(M):
        assert layer.weight.grad[i].abs().sum() > 0, f"no gradient for W_{i}"
        assert layer.bias.grad[i].abs().sum() > 0, f"no gradient for bias_{i}"
        assert layer.align.delta.grad[i].abs().sum() > 0, f"no gradient for T_{i}"
    for n, p in layer.gate.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for gate.{n}"


def test_uniform_gate_init_starts_equal_and_learns():
    srcs = _sources(lambda: nn.Conv2d(3, 4, 3, padding=1))
    layer = AdaAggConv2d(srcs, kernel="grouped", align=False, lite=False, gate="normalized",
                         gate_init="uniform", gate_hidden=None, te_momentum=0.9, recompute=True)
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64)
    a = layer.gate(x.mean(dim=(2, 3)))
    torch.testing.assert_close(a, torch.full_like(a, 1 / M))
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        (layer(x) ** 2).mean().backward()
        opt.step()
    a = layer.gate(x.mean(dim=(2, 3)))
    assert a.std(dim=0).max() > 0, "gates should become input-dependent after training"
    torch.testing.assert_close(a.sum(-1), torch.ones(6, dtype=a.dtype))


def test_sigmoid_gate_scale_is_half_per_source_at_uniform_init():
    srcs = _sources(lambda: nn.Linear(5, 3))
    layer = AdaAggLinear(srcs, align=False, lite=False, gate="sigmoid", gate_init="uniform",
                         gate_hidden=None, te_momentum=0.9, recompute=True)
    x = torch.randn(4, 5, dtype=torch.float64)
    w = sum(s.weight for s in srcs) * 0.5
    b = sum(s.bias for s in srcs) * 0.5
    torch.testing.assert_close(layer(x), F.linear(x, w, b))


def test_kaiming_gate_init_varies_between_inputs():
    srcs = _sources(lambda: nn.Conv2d(16, 4, 3))
    layer = AdaAggConv2d(srcs, kernel="grouped", align=False, lite=False, gate="sigmoid",
                         gate_init="kaiming", gate_hidden=None, te_momentum=0.9, recompute=True)
    a = layer.gate(torch.randn(32, 16, dtype=torch.float64))
    assert a.std(dim=0).mean() > 0.05


def _lite_conv() -> AdaAggConv2d:
    """A lite 3x3 conv layer in training mode with a non-identity alignment."""
    srcs = _sources(lambda: nn.Conv2d(3, 4, 3, padding=1))
    layer = AdaAggConv2d(srcs, kernel="grouped", align=True, lite=True, gate="sigmoid",
                         gate_init="default", gate_hidden=None, te_momentum=0.9, recompute=True)
    with torch.no_grad():
        layer.align.delta.normal_(0, 0.1)
    return layer.train()


def test_lite_training_uses_batch_mean_gate_and_one_merged_kernel():
    layer = _lite_conv()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    calls = []
    orig = F.conv2d

    def spy(inp, weight, *args, **kwargs):
        calls.append(tuple(weight.shape))
        return orig(inp, weight, *args, **kwargs)

    F.conv2d = spy
    try:
        out = layer(x)
    finally:
        F.conv2d = orig
    assert calls == [(4, 3, 3, 3)], "lite training must run one ordinary convolution"
    a_mean = layer.gate(x.mean(dim=(2, 3))).mean(0)
    T = layer.align.matrices()
    w = sum(a_mean[i] * torch.einsum("oc,c...->o...", T[i], layer.weight[i]) for i in range(M))
    b = sum(a_mean[i] * T[i] @ layer.bias[i] for i in range(M))
    torch.testing.assert_close(out, F.conv2d(x, w, b, padding=1))
    # first update of the bias-corrected ensemble equals the first batch mean
    torch.testing.assert_close(layer.gate_value(), a_mean.detach())


def _alignment_case(m: int, bias: bool):
    """A ChannelAlign with non-trivial T_i = I + D_i, source weights (m, 5, 3, 2, 2) and biases
    (m, 5) or None, all float64 and requiring gradients."""
    from zootune.layers.align import ChannelAlign

    torch.manual_seed(m)
    al = ChannelAlign(m, 5).double()
    with torch.no_grad():
        al.delta.normal_(0, 0.3)
    w = torch.randn(m, 5, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(m, 5, dtype=torch.float64, requires_grad=True) if bias else None
    return al, w, b


@pytest.mark.parametrize("m,bias", [(3, True), (1, False), (4, False)])
def test_folded_aligned_merge_equals_align_then_sum_with_gradients(m, bias):
    """ChannelAlign.merge (one product [g_1 T_1 .. g_m T_m] @ [W_1; ..; W_m]) against the
    straightforward T_i W_i per source, then the gated sum — values and every gradient."""
    al, w, b = _alignment_case(m, bias)
    g = torch.rand(m, dtype=torch.float64, requires_grad=True)

    def fast():
        mw, mb = al.merge(w, g, b)
        return (mw, mb) if bias else (mw,)

    def straightforward():
        t = al.matrices()
        mw = sum(g[i] * torch.einsum("oc,c...->o...", t[i], w[i]) for i in range(m))
        return (mw, sum(g[i] * t[i] @ b[i] for i in range(m))) if bias else (mw,)

    inputs = [w, al.delta, g] + ([b] if bias else [])
    outs_fast, outs_ref = fast(), straightforward()
    for f, r in zip(outs_fast, outs_ref):
        torch.testing.assert_close(f, r)
    seeds = [torch.randn_like(o) for o in outs_ref]
    grads_fast = torch.autograd.grad(outs_fast, inputs, seeds)
    grads_ref = torch.autograd.grad(outs_ref, inputs, seeds)
    for gf, gr in zip(grads_fast, grads_ref):
        torch.testing.assert_close(gf, gr)
    assert torch.autograd.gradcheck(lambda *_: fast(), inputs)


@pytest.mark.parametrize("m,bias", [(3, True), (2, False)])
def test_aligned_sources_node_equals_per_source_products_with_gradients(m, bias):
    """ChannelAlign.sources (one autograd node, AlignedSources) against T_i W_i and T_i b_i
    source by source — values and every gradient; given precomputed values it returns them
    and adds the same backward."""
    al, w, b = _alignment_case(m, bias)
    t = al.matrices()
    ref = (torch.einsum("moc,mc...->mo...", t, w),) + ((torch.einsum("moc,mc->mo", t, b),) if bias else ())
    inputs = [w, al.delta] + ([b] if bias else [])
    seeds = [torch.randn_like(r) for r in ref]
    grads_ref = torch.autograd.grad(ref, inputs, seeds)
    with torch.no_grad():
        cached = al.sources(w, b)
    for values in (None, cached):
        out = al.sources(w, b, values)
        out = out if bias else out[:1]
        for o, r in zip(out, ref):
            torch.testing.assert_close(o, r)
        for gf, gr in zip(torch.autograd.grad(out, inputs, seeds), grads_ref):
            torch.testing.assert_close(gf, gr)
    assert torch.autograd.gradcheck(lambda *_: al.sources(w, b)[: 2 if bias else 1], inputs)


def test_training_forward_reuses_current_aligned_values_only():
    """A per-sample training forward after a forward without autograd (an agent acting) takes
    the aligned weights from that cache: the same outputs and gradients as computing them
    (exact), and a parameter changed in place in between is noticed (no stale values). Gate
    statistics (``te``) do not invalidate the aligned cache."""
    srcs = _sources(lambda: nn.Conv2d(3, 4, 3, padding=1))
    layer = AdaAggConv2d(srcs, kernel="unfold", align=True, lite=False, gate="normalized",
                         gate_init="default", gate_hidden=None, te_momentum=0.9, recompute=True)
    with torch.no_grad():
        layer.align.delta.normal_(0, 0.2)
    fresh = copy.deepcopy(layer)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64, requires_grad=True)

    def act():  # a forward without autograd or gate statistics: fills the aligned cache
        layer.track_gates = False
        with torch.no_grad():
            layer(x[:1].detach())
        layer.track_gates = True

    act()
    key = layer._cache_key
    y = layer(x)  # training forward: updates te, reuses the cache
    assert layer._cache_key == key and int(layer.te.steps) == 1
    torch.testing.assert_close(y, fresh(x), rtol=0, atol=0)
    torch.testing.assert_close(_grads(layer, x, y), _grads(fresh, x, fresh(x)), rtol=0, atol=0)
    with torch.no_grad():
        layer._cache[0].add_(1.0)  # poison the cache: a reusing training forward shows it
    assert not torch.equal(layer(x), fresh(x))
    layer._forget_cache()
    act()
    with torch.no_grad():
        for p, q in ((layer.align.delta, fresh.align.delta), (layer.weight, fresh.weight)):
            p.add_(0.05)  # an optimizer step in place: the cache is stale from here
            q.add_(0.05)
    torch.testing.assert_close(layer(x), fresh(x), rtol=0, atol=0)


def test_lite_training_gradients_equal_the_unfolded_merge(monkeypatch):
    """The lite layer's training step (folded merge) gives the gradients of aligning every
    source and then merging (the path the layer takes with autograd off)."""
    layer = _lite_conv()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    g_fast = _grads(layer, x, layer(x))
    monkeypatch.setattr(type(layer), "_lite_weights", lambda self, g: self.merged(g, self.aligned()))
    g_ref = _grads(layer, x, layer(x))
    assert g_fast.keys() == g_ref.keys() and "align.delta" in g_ref
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], msg=f"gradient of {n}")


def test_temporal_ensemble_math_and_no_autograd_history():
    te = TemporalEnsemble(3, momentum=0.9).double()
    prior = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    torch.testing.assert_close(te.value(prior), prior)  # before any update: the prior
    means = [torch.rand(3, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    for v in means:
        te.update(v * 2)  # an expression with autograd history
    acc = torch.zeros(3, dtype=torch.float64)
    for v in means:
        acc = 0.9 * acc + 0.1 * (v.detach() * 2)
    torch.testing.assert_close(te.value(), acc / (1 - 0.9**4))
    # bias-corrected value is a weighted average: constant inputs give that constant
    te2 = TemporalEnsemble(2, momentum=0.9)
    for _ in range(3):
        te2.update(torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(te2.value(), torch.tensor([0.25, 0.75]))
    assert te.accumulator.grad_fn is None and not te.accumulator.requires_grad


def test_lite_layer_keeps_no_graph_and_deepcopies_after_training():
    srcs = _sources(lambda: nn.Conv2d(3, 4, 3, padding=1))
    layer = AdaAggConv2d(srcs, kernel="grouped", align=True, lite=True, gate="normalized",
                         gate_init="default", gate_hidden=None, te_momentum=0.9, recompute=True)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(4, 3, 6, 6, dtype=torch.float64)).sum().backward()
        opt.step()
    assert layer.te.accumulator.grad_fn is None
    assert int(layer.te.steps) == 3
    clone = copy.deepcopy(layer)
    clone.eval()
    layer.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(clone(x), layer(x))


def test_eval_cache_follows_parameter_updates():
    srcs = _sources(lambda: nn.Conv2d(3, 4, 3, padding=1))
    layer = AdaAggConv2d(srcs, kernel="grouped", align=True, lite=False, gate="normalized",
                         gate_init="default", gate_hidden=None, te_momentum=0.9, recompute=True)
    layer.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        y1 = layer(x)
        assert layer._cache is not None
        layer.align.delta.add_(0.1)  # in-place change: the cache must notice
        y2 = layer(x)
    y_ref = layer(x)  # autograd on: no cache
    torch.testing.assert_close(y2, y_ref)
    assert not torch.allclose(y1, y2)


def test_bad_input_shape_is_a_clear_error():
    srcs = _sources(lambda: nn.Conv2d(3, 4, 3))
    layer = AdaAggConv2d(srcs, kernel="grouped", align=False, lite=False, gate="normalized",
                         gate_init="uniform", gate_hidden=None, te_momentum=0.9, recompute=True)
    with pytest.raises(ValueError, match=r"expects input \(B, 3, H, W\)"):
        layer(torch.randn(2, 5, 8, 8, dtype=torch.float64))
