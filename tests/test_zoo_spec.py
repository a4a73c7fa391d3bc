"""Zoo spec parsing and preset expansion (no models built)."""

from __future__ import annotations

import re

import pytest

from zootune.errors import ZootuneError
from zootune.zoo import ZooSpecError, expand_specs, parse_spec
from zootune.zoo.presets import MOCO_V1_URL, ZOO_PRESETS


def test_every_kind_parses():
    s = parse_spec("timm:resnet50.a1_in1k")
    assert (s.kind, s.target, s.weights) == ("timm", "resnet50.a1_in1k", None)
    s = parse_spec("torchvision:resnet50:IMAGENET1K_V1")
    assert (s.kind, s.target, s.weights) == ("torchvision", "resnet50", "IMAGENET1K_V1")
    s = parse_spec("torchvision-backbone:maskrcnn_resnet50_fpn")
    assert (s.kind, s.target, s.weights) == ("torchvision-backbone", "maskrcnn_resnet50_fpn", None)
    s = parse_spec("hf:timm/resnet18.a1_in1k@abc123")
    assert (s.kind, s.target, s.revision, s.weights) == ("hf", "timm/resnet18.a1_in1k", "abc123", None)
    s = parse_spec("hf:org/repo:weights/moco.pth arch=resnet50")
    assert (s.target, s.weights, s.arch) == ("org/repo", "weights/moco.pth", "resnet50")
    s = parse_spec("file:/tmp/x.pth arch=timm:resnet50 name=mine strict=false")
    assert (s.kind, s.target, s.arch, s.name, s.strict) == ("file", "/tmp/x.pth", "timm:resnet50", "mine", False)
    s = parse_spec(f"url:{MOCO_V1_URL} arch=resnet50")
    assert s.kind == "url" and s.target == MOCO_V1_URL and s.label == "moco_v1_200ep_pretrain"


def test_mapping_form_and_overrides():
    s = parse_spec({"spec": "file:/a b/c.pt", "arch": "resnet18", "name": "c"})
    assert (s.target, s.arch, s.name) == ("/a b/c.pt", "resnet18", "c")
    s = parse_spec("file:/a b/c.pt arch=resnet18")
    assert (s.target, s.arch) == ("/a b/c.pt", "resnet18")
    s = parse_spec("file:/x.pt", arch="resnet18")
    assert s.arch == "resnet18"
    # an explicit arch= in the spec wins over the keyword
    assert parse_spec("file:/x.pt arch=resnet34", arch="resnet18").arch == "resnet34"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("resnet50", "names no source"),
        ("tim:resnet50", "did you mean 'timm'"),
        ("file:/x.pth", "needs arch="),
        ("url:https://a/b.pth", "needs arch="),
        ("url:notaurl arch=resnet50", "expected url:"),
        ("hf:justname", "expected hf:ORG/REPO"),
        ("hf:org/repo:file.pth", "needs arch="),
        ("timm:resnet50 foo=1", "unknown option 'foo'"),
        ("timm:resnet50 arch", "key=value"),
        ("file:/x.pth arch=resnet50 strict=maybe", "not a boolean"),
        ("missing.pth", "no such checkpoint file"),
    ],
)
def test_bad_specs_raise_one_clear_error(text, fragment):
    with pytest.raises(ZooSpecError) as exc:
        parse_spec(text)
    assert isinstance(exc.value, ZootuneError)
    assert fragment in str(exc.value)


def test_bare_existing_path_is_a_file_spec(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"x")
    s = parse_spec(f"{p} arch=resnet18")
    assert s.kind == "file" and s.target == str(p)


def test_paper_preset_expands_to_the_five_documented_models():
    specs, defaults = expand_specs("paper-resnet50")
    assert [s.name for s in specs] == ["imagenet", "moco", "maskrcnn", "deeplabv3", "keypointrcnn"]
    texts = [s.text for s in specs]
    assert texts[0] == "torchvision:resnet50:IMAGENET1K_V1"
    assert specs[1].kind == "url" and "moco_v1_200ep" in specs[1].target
    assert specs[1].arch == "torchvision:resnet50"
    assert texts[2:] == [
        "torchvision-backbone:maskrcnn_resnet50_fpn:COCO_V1",
        "torchvision-backbone:deeplabv3_resnet50:COCO_WITH_VOC_LABELS_V1",
        "torchvision-backbone:keypointrcnn_resnet50_fpn:COCO_V1",
    ]
    assert defaults["strip_heads"] is True
    # presets mix with specs, underscores accepted
    specs, _ = expand_specs(["paper_resnet50", "timm:resnet18"])
    assert len(specs) == 6 and specs[-1].kind == "timm"
    assert set(ZOO_PRESETS) >= {"paper-resnet50", "paper-resnet50-mocov2", "demo"}


def test_preset_weights_exist_in_torchvision():
    """The documented torchvision weights names resolve to the documented files."""
    from torchvision.models import get_weight

    files = {
        "ResNet50_Weights.IMAGENET1K_V1": "resnet50-0676ba61.pth",
        "MaskRCNN_ResNet50_FPN_Weights.COCO_V1": "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1": "deeplabv3_resnet50_coco-cd0a2569.pth",
        "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1": "keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
    }
    for name, fname in files.items():
        assert get_weight(name).url.endswith(fname)


def test_unknown_name_is_not_a_preset():
    with pytest.raises(ZooSpecError, match="presets: demo, paper-mini, paper-resnet50"):
        expand_specs("paper-resnet51")


def test_preset_members_selected_in_order_with_repeats():
    from zootune.zoo.load import expand_specs
    from zootune.zoo.presets import expand_preset

    whole = dict(expand_preset("paper-mini"))
    sub = expand_preset("paper-mini[contrastive, keypoints]")
    assert sub == [("contrastive", whole["contrastive"]), ("keypoints", whole["keypoints"])]
    specs, defaults = expand_specs("paper_mini[base,base,base]")
    assert [s.text for s in specs] == [whole["base"]] * 3
    assert defaults == {"strip_heads": True}  # the preset's defaults still apply
    from zootune.zoo.load import unique_names

    assert unique_names([s.label for s in specs]) == ["base", "base#2", "base#3"]


@pytest.mark.parametrize("text, fragment", [
    ("paper-mini[foo]", "unknown member 'foo'; members of 'paper-mini': base, script"),
    ("paper-mini[]", "no member given"),
    ("paper-mini[base", "PRESET[m1,m2,...]"),
])
def test_bad_preset_member_selection_is_one_clear_error(text, fragment):
    from zootune.zoo.load import expand_specs

    with pytest.raises(ZooSpecError, match=re.escape(fragment)):
        expand_specs(text)
