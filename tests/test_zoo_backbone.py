"""Trunks of torchvision detection / segmentation models mapped onto ``resnet50`` keys.

Each detection/segmentation model is built once per session with random weights
(``weights=None, weights_backbone=None``); every floating tensor is then overwritten with
distinct random values (trunk tensors), so a wrong mapping (a swapped key, a statistic left at its default)
cannot pass by accident.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from zootune.zoo import load
from zootune.zoo.builders import trunk_of
from zootune.zoo.keymap import map_state_dict

MODELS = {
    "maskrcnn_resnet50_fpn": "backbone.body.",
    "keypointrcnn_resnet50_fpn": "backbone.body.",
    "fasterrcnn_resnet50_fpn": "backbone.body.",
    "deeplabv3_resnet50": "backbone.",
    "fcn_resnet50": "backbone.",
}


@pytest.fixture(scope="module")
def resnet50_state():
    return torchvision.models.resnet50(weights=None).state_dict()


@pytest.fixture(scope="module")
def source_states():
    """{model name: randomised state dict}, each model built once for the module."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for name in MODELS:
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        sd = {}
        for k, v in model.state_dict().items():
            if v.is_floating_point() and k.startswith(MODELS[name]):
                sd[k] = torch.rand(v.shape, generator=g) + 0.5  # positive: valid variances
            else:
                sd[k] = v.clone()
        out[name] = sd
        del model
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_trunk_maps_onto_every_resnet50_key(name, source_states, resnet50_state):
    src = source_states[name]
    arch, prefix = trunk_of(name)
    assert (arch, prefix) == ("resnet50", MODELS[name])
    mapped, report = map_state_dict(src, resnet50_state, head="fc")
    assert report.prefix == prefix
    trunk_keys = [k for k in resnet50_state if not k.startswith("fc.")]
    # every trunk key is present, with the source's values
    assert set(trunk_keys) <= set(mapped)
    for k in trunk_keys:
        if k in report.filled:
            continue
        assert torch.equal(mapped[k], src[prefix + k]), k
    # BatchNorm statistics come from the source (FrozenBatchNorm2d buffers included)
    for k in trunk_keys:
        if k.endswith(("running_mean", "running_var")):
            assert k not in report.filled and torch.equal(mapped[k], src[prefix + k])
    # only the counters FrozenBatchNorm2d lacks are synthesised
    assert all(k.endswith("num_batches_tracked") for k in report.filled)
    frozen = not any(k.endswith("num_batches_tracked") for k in src)
    if frozen:
        n_bn = sum(k.endswith("running_mean") for k in trunk_keys)
        assert len(report.filled) == n_bn
    # the head is the only thing missing, and it is reported
    assert sorted(report.missing) == ["fc.bias", "fc.weight"] and report.head_missing
    # nothing silently dropped: every source key is either mapped or listed as dropped
    used = {prefix + k for k in mapped if k not in report.filled}
    assert used | set(report.dropped) == set(src)
    assert not used & set(report.dropped)
    assert not any(k.startswith(prefix + "layer") or k.startswith(prefix + "conv1")
                   for k in report.dropped)
    assert report.dropped  # heads / FPN exist in every one of these models
    assert "dropped" in report.summary()


def test_backbone_spec_loads_with_random_weights():
    m = load("torchvision-backbone:maskrcnn_resnet50_fpn", pretrained=False)
    assert type(m) is torchvision.models.ResNet
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    rep = m.zootune_load_report
    assert rep.prefix == "backbone.body." and rep.head_missing
    assert any(k.startswith("rpn.") for k in rep.dropped)


def test_backbone_spec_pretrained_from_checkpoint_dir(tmp_path, source_states, request):
    """The pretrained path, offline: the weights file sits in a checkpoint directory under
    the name torchvision publishes it with."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    request.addfinalizer(lambda: torch.hub.set_dir(old))
    src = source_states["deeplabv3_resnet50"]
    fname = "deeplabv3_resnet50_coco-cd0a2569.pth"
    torch.save(src, tmp_path / fname)
    m = load("torchvision-backbone:deeplabv3_resnet50:COCO_WITH_VOC_LABELS_V1",
             offline=True, checkpoint_dir=tmp_path)
    sd = m.state_dict()
    assert torch.equal(sd["layer4.2.conv3.weight"], src["backbone.layer4.2.conv3.weight"])
    assert torch.equal(sd["bn1.running_var"], src["backbone.bn1.running_var"])
    assert m.zootune_preprocessing.resize_size == 520
    assert any(k.startswith("classifier.") for k in m.zootune_load_report.dropped)


def test_backbone_spec_errors():
    from zootune.zoo import ZooSpecError

    with pytest.raises(ZooSpecError, match="supported: "):
        load("torchvision-backbone:ssd300_vgg16", pretrained=False)
    with pytest.raises(ZooSpecError, match="torchvision-backbone:maskrcnn_resnet50_fpn"):
        load("torchvision:maskrcnn_resnet50_fpn", pretrained=False)
    with pytest.raises(ZooSpecError, match="no weights 'COCO_V9'"):
        load("torchvision-backbone:maskrcnn_resnet50_fpn:COCO_V9", pretrained=False)
