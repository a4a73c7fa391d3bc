"""benchmarks/per_sample_floor.py times the products a per-sample convolution must run; they
must be the convolution's own products (else the floor measures something else), and its
network sums must weigh every layer by its count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer_utils import load_script
from zootune.layers.kernels import ConvSpec


@pytest.fixture(scope="module")
def floor():
    return load_script("benchmarks/per_sample_floor.py")


@pytest.mark.parametrize("ks,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (1, 1, 0)])
def test_floor_products_are_the_convolutions_products(floor, ks, stride, pad, monkeypatch):
    monkeypatch.setattr(floor, "GRAD_COLUMNS", 5)  # several chunks, the last one partial
    torch.manual_seed(0)
    x = torch.randn(3, 4, 7, 7, requires_grad=True)
    w = torch.randn(6, 4, ks, ks, requires_grad=True)
    spec = ConvSpec((stride, stride), (pad, pad), (1, 1), 1)
    y = F.conv2d(x, w, None, spec.stride, spec.padding)
    gy = torch.randn_like(y)
    y.backward(gy)
    g3 = gy.reshape(3, 6, -1)
    with torch.no_grad():
        steps = floor.floor_steps(x.detach(), w.detach(), spec, True, g3)
        assert torch.allclose(steps["forward/N"]().view_as(y), y, atol=1e-5)
        assert torch.allclose(steps["forward/T"]().transpose(1, 2).reshape(y.shape), y, atol=1e-5)
        gx_n, gx_t = steps["grad_x/N"](), steps["grad_x/T"]().transpose(1, 2)
        assert torch.allclose(gx_n, gx_t, atol=1e-5)
        if ks == 1:  # the columns are the (subsampled) input: scatter the gradient back
            gx = torch.zeros_like(x)
            gx[:, :, ::stride, ::stride] = gx_n.reshape(3, 4, *y.shape[-2:])
        else:
            gx = F.fold(gx_n, (7, 7), ks, padding=pad, stride=stride)
        assert torch.allclose(gx, x.grad, atol=1e-4)
        # per-sample weight gradients of the last K-chunk: their sum over the batch is the
        # ordinary weight gradient's last columns
        k = 4 * ks * ks
        last = slice((k - 1) // 5 * 5, k)
        gw = w.grad.reshape(6, k)[:, last]
        assert torch.allclose(steps["grad_w/N"]().sum(0), gw, atol=1e-4)
        assert torch.allclose(steps["grad_w/T"]().sum(0).t(), gw, atol=1e-4)


def test_network_totals_weigh_layers_by_count_and_bound_by_the_better(floor):
    rows = [
        {"count": 3, "ms": {"plain/infer": 10.0, "library/infer": 20.0, "plain/train": 30.0,
                            "library/train": 60.0}, "floor_ms": {"infer": 12.0, "train": 70.0}},
        {"count": 1, "ms": {"plain/infer": 5.0, "library/infer": 4.0, "plain/train": 15.0,
                            "library/train": 14.0}},  # no floor (e.g. grouped): library's time
    ]
    t = floor.totals(rows)
    assert t["infer"]["plain_ms"] == 35.0 and t["infer"]["library_ms"] == 64.0
    assert t["infer"]["bound_ms"] == 3 * 12.0 + 4.0
    assert t["train"]["bound_ms"] == 3 * 60.0 + 14.0  # the floor above the library: library
    assert t["train"]["bound_ratio"] == pytest.approx(194.0 / 105.0)


def test_rows_are_reused_only_under_the_same_setup(tmp_path, monkeypatch):
    """benchmarks/common.py: a resumable benchmark skips rows measured under the same setup (CPU
    and LD_PRELOAD included) and re-measures everything else."""
    import json

    common = load_script("benchmarks/common.py")
    monkeypatch.setenv("LD_PRELOAD", "/lib/libtcmalloc.so")
    setup = common.run_setup(batch=48, m=5)
    assert setup["ld_preload"] == "/lib/libtcmalloc.so" and setup["cpu"] == common.cpu_name()
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"setup": setup, "rows": [{"layer": "a"}, {"layer": "b"}]}))
    key = lambda r: r["layer"]  # noqa: E731
    assert set(common.reusable_rows(path, setup, key)[1]) == {"a", "b"}
    assert common.reusable_rows(path, setup, key, force=True) == ({}, {})
    monkeypatch.setenv("LD_PRELOAD", "")
    assert common.reusable_rows(path, common.run_setup(batch=48, m=5), key)[1] == {}  # other allocator
    assert common.reusable_rows(path, {**setup, "m": 3}, key)[1] == {}
    assert common.reusable_rows(tmp_path / "missing.json", setup, key) == ({}, {})
    assert common.command_line().startswith("python ")  # LD_PRELOAD empty: no prefix
    monkeypatch.setenv("LD_PRELOAD", "/lib/libtcmalloc.so")
    assert common.command_line().startswith("LD_PRELOAD=/lib/libtcmalloc.so python ")
    fresh = common.provenance(2)
    assert fresh["command"] == common.command_line() and fresh["environment"]["threads"] == 2
    old = {"command": "python x.py", "environment": {"written": "then"}, "rows": []}
    assert common.provenance(2, old) == {"command": "python x.py", "environment": {"written": "then"}}
