"""``find_head`` / ``strip_head``: the one head finder, for torchvision, timm-like and plain models."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from zootune.errors import HeadError
from zootune.zoo import find_head, strip_head
from zootune.zoo.heads import HEAD_ATTRS


def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1,
                             hidden_dim=8, mlp_dim=8, num_classes=5)


class TimmLike(nn.Module):
    """What timm models expose: ``pretrained_cfg["classifier"]``, ``get_classifier``,
    ``reset_classifier``; the trunk has an ``fc`` of its own that is NOT the head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)  # a trunk layer that happens to be called fc
        self.head = nn.Sequential()
        self.head.add_module("drop", nn.Dropout())
        self.head.add_module("fc", nn.Linear(6, 3))
        self.pretrained_cfg = {"classifier": "head.fc"}
        self.num_features = 6
        self.reset_calls = 0

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.reset_calls += 1
        self.head.fc = nn.Identity() if num_classes == 0 else nn.Linear(6, num_classes)

    def forward(self, x):
        return self.head(self.fc(x))


class GetClassifierOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)
        self.late = nn.Linear(2, 2)  # registered last, but not the classifier

    def get_classifier(self) -> nn.Module:
        return self.out


def test_finds_torchvision_and_plain_heads():
    assert find_head(torchvision.models.resnet18()) == "fc"
    assert find_head(torchvision.models.mobilenet_v3_small()) == "classifier.3"
    assert find_head(_vit()) == "heads.head"
    assert find_head(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))) == "2"
    assert find_head(nn.Sequential(nn.Conv2d(1, 2, 3))) is None
    from zootune.demo.model import MiniCNN

    assert find_head(MiniCNN(3, width=4)) == "head"
    assert set(HEAD_ATTRS) >= {"fc", "classifier", "heads", "head", "last_linear"}


def test_timm_metadata_comes_before_attribute_names_and_last_linear():
    m = TimmLike()
    assert find_head(m) == "head.fc"  # not the trunk's 'fc'
    m.pretrained_cfg = {}  # without metadata: get_classifier() still names it
    assert find_head(m) == "head.fc"
    assert find_head(GetClassifierOnly()) == "out"
    m = TimmLike()
    m.pretrained_cfg = {"classifier": ["head.fc", "head_dist"]}  # distilled models list two
    assert find_head(m) == "head.fc"


def test_explicit_name_unknown_name_and_name_without_linear():
    mobilenet = torchvision.models.mobilenet_v3_small()
    assert find_head(mobilenet, "classifier") == "classifier.3"  # last Linear inside it
    assert find_head(mobilenet, "classifier.0") == "classifier.0"
    assert find_head(mobilenet, "features") is None  # exists, holds no Linear
    with pytest.raises(HeadError, match="MobileNetV3 has no module named 'clasifier'.*did you mean classifier"):
        find_head(mobilenet, "clasifier")
    assert issubclass(HeadError, ValueError)


def test_a_stripped_head_is_not_replaced_by_a_trunk_linear():
    vit = _vit()
    assert strip_head(vit) == "heads.head"
    assert isinstance(vit.heads.head, nn.Identity)
    # the encoder's MLP Linear layers are not a head
    assert find_head(vit) is None
    assert strip_head(vit) is None
    assert any(isinstance(m, nn.Linear) for m in vit.encoder.modules())
    assert vit(torch.zeros(1, 3, 32, 32)).shape == (1, 8)


def test_strip_head_plain_and_timm_like():
    r = torchvision.models.resnet18()
    assert strip_head(r) == "fc" and isinstance(r.fc, nn.Identity) and r.num_features == 512
    assert find_head(r) is None and strip_head(r) is None
    assert r.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    m = TimmLike()
    assert strip_head(m) == "head.fc" and m.reset_calls == 1
    assert isinstance(m.head.fc, nn.Identity) and isinstance(m.fc, nn.Linear)
    assert find_head(m) is None  # timm metadata still names head.fc, which is now stripped
    seq = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    assert strip_head(seq) == "2" and isinstance(seq[2], nn.Identity) and seq.num_features == 5


def test_the_zoo_uses_the_same_finder():
    import importlib

    builders, check, load = (importlib.import_module(f"zootune.zoo.{m}")
                             for m in ("builders", "check", "load"))

    assert builders.find_head is find_head and check.find_head is find_head
    assert load.find_head is find_head and load.strip_head is strip_head
    assert builders.head_name is find_head  # old import path, same function
