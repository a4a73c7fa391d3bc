"""benchmarks/fused_forming.py compares ways of forming per-sample weights; each must compute the
library's per-sample product exactly (else it times something cheaper), and its shapes must be
the convolutions' products."""

from __future__ import annotations

import shutil

import pytest
import torch

from trainer_utils import load_script


@pytest.fixture(scope="module")
def fused():
    return load_script("benchmarks/fused_forming.py")


def _operands(b=5, m=3, c=7, k=11, n=4):
    torch.manual_seed(0)
    return torch.randn(m, c, k), torch.softmax(torch.randn(b, m), 1), torch.randn(b, k, n)


def _naive(v, a, x):
    return torch.stack([sum(a[b, i] * v[i] for i in range(v.shape[0])) @ x[b] for b in range(x.shape[0])])


def test_library_forward_is_the_per_sample_product(fused):
    v, a, x = _operands()
    torch.testing.assert_close(fused.library_forward(v, a, x), _naive(v, a, x))


@pytest.mark.parametrize("rows,block", [(3, 2), (7, 5), (4, 3)])  # partial last tiles and blocks
def test_tiled_torch_is_exact(fused, rows, block):
    v, a, x = _operands()
    torch.testing.assert_close(fused.tiled_torch(v, a, x, rows, block), _naive(v, a, x))


def test_product_shapes_from_floor_rows(fused):
    rows = [{"layer": "layer1.0.conv1", "count": 1, "input": [64, 56, 56], "out_channels": 64,
             "kernel_size": [1, 1], "stride": [1, 1], "padding": [0, 0]},
            {"layer": "layer4.0.conv2", "count": 1, "input": [512, 14, 14], "out_channels": 512,
             "kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1]},
            {"layer": "layer4.0.downsample.0", "count": 1, "input": [1024, 14, 14], "out_channels": 2048,
             "kernel_size": [1, 1], "stride": [2, 2], "padding": [0, 0]}]
    shapes = fused.product_shapes(rows)
    assert [(s["C_out"], s["K"], s["L"]) for s in shapes] == [(512, 4608, 49), (2048, 1024, 49)]


def test_totals_weigh_by_count_and_take_the_best_tile(fused):
    rows = [{"count": 2, "ms": {"one_gemm": 1.0, "floor": 2.0, "library": 3.0, "tiled_torch/a": 5.0,
                                "tiled_torch/b": 4.0}, "best": {"tiled_torch": "tiled_torch/b", "tiled_cpp": None}},
            {"count": 1, "ms": {"one_gemm": 1.0, "floor": 1.0, "library": 1.0, "tiled_torch/a": 2.0},
             "best": {"tiled_torch": "tiled_torch/a", "tiled_cpp": None}}]
    assert fused.totals(rows) == {"one_gemm": 3.0, "floor": 5.0, "library": 7.0, "tiled_torch": 10.0}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_tiled_cpp_prototype_is_exact(fused):
    cpp = fused.cpp_kernel()  # JIT compile, ~30 s the first time (cached in ~/.cache/torch_extensions)
    v, a, x = _operands(b=6, m=5, c=300, k=40, n=9)
    for rows in (128, 256):  # 300 rows: a partial last tile either way
        torch.testing.assert_close(cpp.tiled_forward(v, a, x, rows), _naive(v, a, x), rtol=1e-5, atol=1e-4)
