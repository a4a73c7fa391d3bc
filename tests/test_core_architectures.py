"""zoo_tune on real architectures (random weights, nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zootune
from zootune.layers import AdaAggConv2d, AdaAggLinear

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def _zoo(factory, m=2):
    torch.manual_seed(0)
    return [factory().eval() for _ in range(m)]


def _check(zoo, x, *, expect_conv: int, expect_linear: int, atol=1e-4):
    zm = zootune.zoo_tune(zoo, lite=True)
    layers = zm.adaagg_layers().values()
    assert sum(isinstance(l, AdaAggConv2d) for l in layers) == expect_conv
    assert sum(isinstance(l, AdaAggLinear) for l in layers) == expect_linear
    zm.train()
    zm(x).float().pow(2).mean().backward()  # one lite training step's forward/backward
    zm.eval()
    plain = zm.export()
    assert type(plain) is type(zoo[0])
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in zoo[0].parameters())
    with torch.no_grad():
        y = zm(x)
        assert y.shape == zoo[0](x).shape
        assert (plain(x) - y).abs().max().item() <= atol
    per_sample = zootune.zoo_tune(zoo)
    per_sample.train()
    per_sample(x[:2]).float().pow(2).mean().backward()
    return zm


@pytest.mark.slow
def test_torchvision_resnet50():
    zoo = _zoo(lambda: torchvision.models.resnet50(num_classes=10))
    zm = _check(zoo, torch.randn(2, 3, 64, 64), expect_conv=53, expect_linear=1)
    paper = zootune.zoo_tune(zoo, align="paper")
    assert paper.settings["align"] == ["conv1"] + [f"layer3.{i}.conv2" for i in range(6)] + [
        f"layer4.{i}.conv2" for i in range(3)
    ]
    default_aligned = zm.settings["align"]
    assert len(default_aligned) == 17 and all(
        zm.adaagg_layers()[n].kernel_size != (1, 1) for n in default_aligned
    )


def test_torchvision_resnet18_and_mobilenet_depthwise():
    _check(_zoo(lambda: torchvision.models.resnet18(num_classes=4)), torch.randn(3, 3, 32, 32),
           expect_conv=20, expect_linear=1)
    _check(_zoo(lambda: torchvision.models.mobilenet_v3_small(num_classes=4)),
           torch.randn(3, 3, 32, 32), expect_conv=52, expect_linear=2)


def test_timm_cnn_with_depthwise_convs():
    _check(_zoo(lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=4)),
           torch.randn(2, 3, 32, 32), expect_conv=81, expect_linear=1)


def test_timm_vision_transformer():
    factory = lambda: timm.create_model(  # noqa: E731
        "vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8
    )
    # patch embedding conv + per block (qkv, proj, fc1, fc2) + head
    _check(_zoo(factory), torch.randn(2, 3, 32, 32), expect_conv=1, expect_linear=12 * 4 + 1)


def test_torchvision_vit_skips_multihead_attention_out_proj():
    factory = lambda: torchvision.models.VisionTransformer(  # noqa: E731
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=3,
    )
    zm = _check(_zoo(factory), torch.randn(2, 3, 32, 32), expect_conv=1, expect_linear=2 * 2 + 1)
    assert not any("out_proj" in n for n in zm.layer_names)
    with pytest.raises(zootune.ZootuneError, match="MultiheadAttention"):
        zootune.zoo_tune(_zoo(factory), layers=["encoder.layers.encoder_layer_0.self_attention.out_proj"])
