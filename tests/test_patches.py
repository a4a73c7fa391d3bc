"""The patch-rows path of non-overlapping convolutions (zootune.layers.patches): im2col as a
reordering in both input layouts, its adjoint, and which kernels take it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zootune.layers import AdaAggConv2d
from zootune.layers.patches import (
    is_channels_last,
    patch_rows,
    rows_to_image,
    weight_from_rows,
    weight_rows,
)


def _x(layout: str, shape=(3, 4, 11, 13)) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("k", [(2, 3), (5, 5), (1, 1)])
def test_patch_rows_times_weight_rows_is_the_convolution(layout, k):
    """Rows (B, L, K) @ weight rows (C_out, K)^T equals a stride = kernel convolution, with the
    bottom/right remainder cropped, for both input layouts (their K orders differ)."""
    x = _x(layout)
    w = torch.randn(6, 4, *k, dtype=torch.float64)
    cl = is_channels_last(x)
    rows = patch_rows(x, *k)
    ref = F.conv2d(x, w, stride=k)
    got = (rows @ weight_rows(w, cl).t()).view(x.shape[0], *ref.shape[2:], 6).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(weight_from_rows(weight_rows(w, cl), w.shape, cl), w)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_rows_to_image_is_the_adjoint_of_patch_rows(layout):
    """<patch_rows(x), g> == <x, rows_to_image(g)>: the input gradient is exact, zero in the
    cropped border, and has the input's layout."""
    x = _x(layout)
    rows = patch_rows(x, 3, 4)
    g = torch.randn_like(rows)
    back = rows_to_image(g, x.shape, 3, 4, is_channels_last(x))
    assert back.shape == x.shape and is_channels_last(back) == is_channels_last(x)
    torch.testing.assert_close((rows * g).sum(), (x * back).sum())
    assert back[:, :, 9:].abs().sum() == 0 and back[:, :, :, 12:].abs().sum() == 0


def _layer(kernel: str, conv: nn.Conv2d) -> AdaAggConv2d:
    torch.manual_seed(0)
    srcs = [conv] + [nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride)
                     for _ in range(2)]
    return AdaAggConv2d([s.double() for s in srcs], kernel=kernel, align=True, lite=False,
                        gate="sigmoid", gate_init="default", gate_hidden=3, te_momentum=0.9,
                        recompute=False).train()


@pytest.mark.parametrize("kernel", ["unfold", "stacked"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_which_non_overlapping_paths_return_channels_last(kernel, layout):
    """The per-patch products of non-overlapping convolutions (stacked and unfold, any input
    layout) hand their output over channels-last; overlapping convolutions keep NCHW."""
    layer = _layer(kernel, nn.Conv2d(4, 6, 5, stride=5))
    assert is_channels_last(layer(_x(layout, (2, 4, 22, 21))))
    overlapping = _layer(kernel, nn.Conv2d(4, 6, 3, stride=2))
    assert not is_channels_last(overlapping(_x("nchw", (2, 4, 22, 21))))


def test_stacked_1x1_on_nchw_keeps_the_convolution():
    """A 1x1 kernel on an NCHW input would reorder the whole input for the product: not taken."""
    layer = _layer("stacked", nn.Conv2d(4, 6, 1))
    assert not is_channels_last(layer(_x("nchw", (2, 4, 5, 5))))
    assert is_channels_last(layer(_x("channels_last", (2, 4, 5, 5))))
