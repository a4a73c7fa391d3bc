"""``file:`` specs: round trips for each format and wrapper/prefix style, and bad files."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from zootune.errors import ZootuneError
from zootune.zoo import (
    CheckpointError,
    NonFiniteWeightsError,
    UnsafeCheckpointError,
    load,
    read_checkpoint,
)


@pytest.fixture(scope="module")
def ref_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}


def _assert_loaded(model, ref, skip_head=False):
    sd = model.state_dict()
    for k, v in ref.items():
        if skip_head and k.startswith("fc."):
            continue
        assert torch.equal(sd[k], v), k


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


@pytest.mark.parametrize(
    "fname, wrap",
    [
        ("plain.safetensors", lambda sd: sd),
        ("plain.pt", lambda sd: sd),
        ("plain.pth", lambda sd: sd),
        ("wrapped.pth", lambda sd: {"state_dict": sd, "epoch": 3}),
        ("model.pt", lambda sd: {"model": sd, "args": {"lr": 0.1}}),
        ("ddp.pth", lambda sd: _prefixed(sd, "module.")),
        ("ddp_wrapped.pth.tar", lambda sd: {"state_dict": _prefixed(sd, "module."), "arch": "resnet18"}),
        ("lightning.ckpt", lambda sd: {"state_dict": _prefixed(sd, "model."), "epoch": 1}),
        ("ddp.safetensors", lambda sd: _prefixed(sd, "module.")),
    ],
)
def test_round_trip(tmp_path, ref_state, fname, wrap):
    path = tmp_path / fname
    obj = wrap(ref_state)
    if fname.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    m = load(f"file:{path} arch=resnet18")
    _assert_loaded(m, ref_state)
    rep = m.zootune_load_report
    assert not rep.missing and not rep.dropped and not rep.filled


def test_moco_checkpoint_uses_query_encoder(tmp_path, ref_state):
    """MoCo v1 layout: module.encoder_q / module.encoder_k, a 128-d fc, a queue."""
    q = {k: v for k, v in ref_state.items() if not k.startswith("fc.")}
    k_enc = {k: v + 1.0 if v.is_floating_point() else v for k, v in q.items()}
    sd = _prefixed(q, "module.encoder_q.") | _prefixed(k_enc, "module.encoder_k.")
    sd["module.encoder_q.fc.weight"] = torch.randn(128, 512)
    sd["module.encoder_q.fc.bias"] = torch.randn(128)
    sd["module.encoder_k.fc.weight"] = torch.randn(128, 512)
    sd["module.encoder_k.fc.bias"] = torch.randn(128)
    sd["module.queue"] = torch.randn(128, 64)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "moco_v1_200ep_pretrain.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {"lr": 0.03}}, path)
    m = load(f"file:{path} arch=resnet18")
    _assert_loaded(m, q, skip_head=True)
    assert m.fc.out_features == 128  # head rebuilt to the checkpoint's shape, weights kept
    assert torch.equal(m.fc.weight, sd["module.encoder_q.fc.weight"])
    rep = m.zootune_load_report
    assert rep.prefix == "module.encoder_q." and rep.wrapper == ["state_dict"]
    assert any(k.startswith("module.encoder_k.") for k in rep.dropped)
    assert "module.queue" in rep.dropped


def test_moco_v2_mlp_head_is_dropped_and_reported(tmp_path, ref_state):
    q = {k: v for k, v in ref_state.items() if not k.startswith("fc.")}
    sd = _prefixed(q, "module.encoder_q.")
    sd["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, 512)
    path = tmp_path / "mocov2.pth"
    torch.save({"state_dict": sd}, path)
    m = load(f"file:{path} arch=resnet18")
    _assert_loaded(m, q, skip_head=True)
    rep = m.zootune_load_report
    assert rep.head_missing and "module.encoder_q.fc.0.weight" in rep.dropped


@pytest.mark.parametrize("prefix", ["backbone.body.", "backbone."])
def test_detection_and_segmentation_state_dicts_are_recognised(tmp_path, ref_state, prefix):
    trunk = {k: v for k, v in ref_state.items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    sd = _prefixed(trunk, prefix)
    sd["backbone.fpn.inner_blocks.0.0.weight"] = torch.randn(256, 64, 1, 1)
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.randn(91, 1024)
    path = tmp_path / "det.pth"
    torch.save(sd, path)
    m = load(f"file:{path} arch=torchvision:resnet18")
    _assert_loaded(m, trunk)
    rep = m.zootune_load_report
    assert rep.prefix == prefix
    assert {"backbone.fpn.inner_blocks.0.0.weight", "roi_heads.box_predictor.cls_score.weight"} <= set(rep.dropped)
    assert all(k.endswith("num_batches_tracked") for k in rep.filled) and rep.filled


def test_timm_arch_and_safetensors_metadata(tmp_path):
    import json

    import timm

    src = timm.create_model("resnet10t", pretrained=False)
    pre = {"input_size": [3, 160, 160], "resize_size": 180, "mean": [0.5, 0.5, 0.5],
           "std": [0.25, 0.25, 0.25], "interpolation": "bicubic"}
    path = tmp_path / "r10t.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path),
              metadata={"preprocessing": json.dumps(pre)})
    m = load(f"file:{path} arch=timm:resnet10t")
    _assert_loaded(m, src.state_dict())
    p = m.zootune_preprocessing
    assert p.input_size == (3, 160, 160) and p.mean == (0.5, 0.5, 0.5) and p.interpolation == "bicubic"


# ----------------------------------------------------------------------------- errors


def test_truncated_and_corrupt_files(tmp_path, ref_state):
    good_pt = tmp_path / "good.pth"
    torch.save(ref_state, good_pt)
    good_st = tmp_path / "good.safetensors"
    save_file(ref_state, str(good_st))
    cases = {}
    for src in (good_pt, good_st):
        data = src.read_bytes()
        cut = tmp_path / f"cut{src.suffix}"
        cut.write_bytes(data[: len(data) // 2])
        cases[cut] = "corrupt or truncated"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    cases[garbage] = "cannot read"
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    cases[empty] = "empty"
    cases[tmp_path / "absent.pth"] = "not found"
    for path, fragment in cases.items():
        with pytest.raises(CheckpointError) as exc:
            load(f"file:{path} arch=resnet18")
        assert fragment in str(exc.value), (path, str(exc.value))
        assert str(path) in str(exc.value)
        assert "\n" not in str(exc.value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path, ref_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": ref_state, "payload": _Evil(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as exc:
        load(f"file:{path} arch=resnet18")
    assert not marker.exists()
    assert "refused" in str(exc.value) and "system" in str(exc.value)
    assert isinstance(exc.value, ZootuneError)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_named(tmp_path, ref_state, bad):
    sd = {k: v.clone() for k, v in ref_state.items()}
    sd["layer3.1.conv2.weight"][0, 0, 0, 0] = bad
    path = tmp_path / "nan.safetensors"
    save_file(sd, str(path))
    with pytest.raises(NonFiniteWeightsError) as exc:
        load(f"file:{path} arch=resnet18")
    msg = str(exc.value)
    assert "layer3.1.conv2.weight" in msg and ("NaN" if bad != bad else "Inf") in msg


def test_missing_trunk_keys_fail_unless_not_strict(tmp_path, ref_state):
    sd = {k: v for k, v in ref_state.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="layer4.0.conv1.weight"):
        load(f"file:{path} arch=resnet18")
    m = load(f"file:{path} arch=resnet18 strict=false")
    assert torch.equal(m.state_dict()["layer3.0.conv1.weight"], ref_state["layer3.0.conv1.weight"])
    assert any("strict=false" in n for n in m.zootune_load_report.notes)


def test_wrong_architecture_is_reported(tmp_path, ref_state):
    path = tmp_path / "r18.pth"
    torch.save(ref_state, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load(f"file:{path} arch=resnet34")
    from zootune.zoo import ZooSpecError

    with pytest.raises(ZooSpecError, match="no torchvision or timm architecture"):
        load(f"file:{path} arch=resnet9000")


def test_read_checkpoint_reports_non_tensor_entries(tmp_path, ref_state):
    path = tmp_path / "x.pth"
    torch.save({"model": ref_state, "epoch": 7}, path)
    raw = read_checkpoint(path)
    assert raw.wrapper == ["model"] and set(raw.tensors) == set(ref_state)
    torch.save({"epoch": 7, "note": "no weights"}, path)
    with pytest.raises(CheckpointError, match="no state dict found"):
        read_checkpoint(path)
