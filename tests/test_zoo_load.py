"""``load`` for every spec kind (no network), offline behaviour, and ``load_zoo`` checks."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file

from zootune.errors import ZootuneError
from zootune.zoo import (
    DownloadError,
    OfflineError,
    PreprocessingWarning,
    UnrelatedZooWarning,
    ZooMismatchError,
    ZooSpecError,
    build_transform,
    load,
    load_zoo,
    relatedness,
)
from zootune.zoo import cache as zcache


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """Empty torch-hub and Hugging Face caches, no checkpoint dir, no offline env."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    monkeypatch.setattr(zcache, "hf_cache_dir", lambda: tmp_path / "hf-cache")
    for var in ("ZOOTUNE_OFFLINE", "HF_HUB_OFFLINE", "ZOOTUNE_CHECKPOINT_DIR"):
        monkeypatch.delenv(var, raising=False)
    yield
    torch.hub.set_dir(old)


def _save_timm_repo(folder, arch="resnet10t", seed=0):
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": arch, "num_classes": 1000,
           "pretrained_cfg": {"input_size": [3, 176, 176], "interpolation": "bicubic",
                              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                              "crop_pct": 0.875, "classifier": "fc"}}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    return model


# ------------------------------------------------------------------ spec kinds, random


def test_timm_and_torchvision_random():
    m = load("timm:resnet10t", pretrained=False)
    assert type(m).__module__.startswith("timm.")
    assert m.zootune_preprocessing.interpolation == "bicubic"
    assert m.zootune_spec == "timm:resnet10t"
    t = load("torchvision:resnet18:IMAGENET1K_V1", pretrained=False)
    assert type(t) is torchvision.models.ResNet
    p = t.zootune_preprocessing
    assert (p.input_size, p.resize_size, p.interpolation) == ((3, 224, 224), 256, "bilinear")


def test_file_and_url_random_need_no_file():
    m = load("file:/nonexistent/x.pth arch=resnet18", pretrained=False)
    assert type(m) is torchvision.models.ResNet
    u = load("url:https://example.invalid/w.pth arch=timm:resnet10t", pretrained=False, offline=True)
    assert type(u).__module__.startswith("timm.")


def test_hf_random_from_hf_cache_layout(tmp_path):
    """A directory laid out like the Hugging Face cache works as a checkpoint dir."""
    repo = tmp_path / "ckpts" / "models--someone--tiny" / "snapshots" / ("a" * 40)
    _save_timm_repo(repo)
    refs = tmp_path / "ckpts" / "models--someone--tiny" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    m = load("hf:someone/tiny", pretrained=False, offline=True, checkpoint_dir=tmp_path / "ckpts")
    assert type(m).__module__.startswith("timm.")
    assert m.zootune_preprocessing.input_size == (3, 176, 176)


def test_hf_pretrained_from_local_folder(tmp_path):
    src = _save_timm_repo(tmp_path / "ckpts" / "someone" / "tiny")
    m = load("hf:someone/tiny", offline=True, checkpoint_dir=tmp_path / "ckpts")
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert m.zootune_preprocessing.mean == (0.5, 0.5, 0.5)


def test_hf_file_into_arch(tmp_path):
    ref = torchvision.models.resnet18().state_dict()
    folder = tmp_path / "ckpts" / "org" / "moco"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in ref.items()}},
               folder / "moco.pth.tar")
    m = load("hf:org/moco:moco.pth.tar arch=resnet18", offline=True,
             checkpoint_dir=tmp_path / "ckpts")
    assert torch.equal(m.state_dict()["layer2.0.conv1.weight"], ref["layer2.0.conv1.weight"])


# --------------------------------------------------------------- pretrained, offline


def test_torchvision_pretrained_from_checkpoint_dir(tmp_path):
    ref = torchvision.models.resnet18().state_dict()
    torch.save(ref, tmp_path / "resnet18-f37072fd.pth")  # torchvision's published file name
    m = load("torchvision:resnet18:IMAGENET1K_V1", offline=True, checkpoint_dir=str(tmp_path))
    for k, v in ref.items():
        assert torch.equal(m.state_dict()[k], v), k


def test_timm_pretrained_from_checkpoint_dir(tmp_path):
    import timm

    src = timm.create_model("resnet10t", pretrained=False)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / "resnet10t.c3_in1k.safetensors"))
    m = load("timm:resnet10t.c3_in1k", offline=True, checkpoint_dir=tmp_path)
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


@pytest.mark.parametrize(
    "spec",
    [
        "torchvision:resnet18:IMAGENET1K_V1",
        "torchvision-backbone:fcn_resnet50",
        "timm:resnet10t.c3_in1k",
        "hf:someone/absent",
        "url:https://example.invalid/moco.pth arch=resnet18",
    ],
)
def test_offline_without_cache_fails_fast_naming_spec_and_cache(spec, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(OfflineError) as exc:
        load(spec, offline=True, checkpoint_dir=tmp_path / "mine")
    msg = str(exc.value)
    assert spec in msg and str(tmp_path / "mine") in msg
    assert ("torch-hub" in msg) or ("hf-cache" in msg)
    assert isinstance(exc.value, ZootuneError)
    assert time.perf_counter() - t0 < 60  # generous: a hang would be far longer


@pytest.mark.parametrize("var", ["ZOOTUNE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_environment_variables(var, monkeypatch):
    monkeypatch.setenv(var, "1")
    with pytest.raises(OfflineError):
        load("torchvision:resnet18:IMAGENET1K_V1")
    # an explicit argument wins over the environment
    monkeypatch.setattr(zcache, "_download", _refuse_download)
    with pytest.raises(DownloadError, match="would download"):
        load("torchvision:resnet18:IMAGENET1K_V1", offline=False)


def _refuse_download(url, dst, spec):
    raise DownloadError(f"{spec}: would download {url}")


def test_checkpoint_dir_from_environment(tmp_path, monkeypatch):
    ref = torchvision.models.resnet18().state_dict()
    torch.save(ref, tmp_path / "resnet18-f37072fd.pth")
    monkeypatch.setenv("ZOOTUNE_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("ZOOTUNE_OFFLINE", "1")
    m = load("torchvision:resnet18:IMAGENET1K_V1")
    assert torch.equal(m.state_dict()["fc.weight"], ref["fc.weight"])


def test_unknown_models_and_weights():
    with pytest.raises(ZooSpecError, match="timm has no model"):
        load("timm:resnet50000", pretrained=False)
    with pytest.raises(ZooSpecError, match="did you mean"):
        load("torchvision:resnet5", pretrained=False)
    with pytest.raises(ZooSpecError, match="valid: IMAGENET1K_V1"):
        load("torchvision:resnet18:IMAGENET9K", pretrained=False)
    with pytest.raises(ZooSpecError, match="preset"):
        load("paper-resnet50", pretrained=False)


# ------------------------------------------------------------------------- load_zoo


def _file(tmp_path, name, sd):
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    return f"file:{path} arch=resnet18 name={name}"


def test_mismatched_zoo_names_parameter_and_both_shapes(tmp_path):
    ten = torchvision.models.resnet18(num_classes=10).state_dict()
    ten_spec = _file(tmp_path, "ten", ten)
    a = _file(tmp_path, "a", torchvision.models.resnet18().state_dict())
    with pytest.raises(ZooMismatchError) as exc:
        load_zoo([a, ten_spec], check_related=False)
    msg = str(exc.value)
    assert "'fc.weight'" in msg and "(1000, 512)" in msg and "(10, 512)" in msg
    assert "strip_heads=True" in msg
    zoo = load_zoo([a, ten_spec], strip_heads=True, check_related=False, warn=False)
    assert [m(torch.randn(2, 3, 32, 32)).shape for m in zoo] == [(2, 512), (2, 512)]
    with pytest.raises(ZooMismatchError, match="layer1.2.conv1.weight"):
        load_zoo(["torchvision:resnet18", "torchvision:resnet34"], pretrained=False,
                 check_related=False)


def test_zoo_mixing_libraries_warns_and_unifies():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        zoo = load_zoo(["timm:resnet18", "torchvision:resnet18"], pretrained=False,
                       strip_heads=True, check_related=True)
    cats = {w.category for w in rec}
    assert PreprocessingWarning in cats  # bicubic (timm) vs bilinear (torchvision)
    assert UnrelatedZooWarning in cats  # two random inits
    assert type(zoo[0]) is type(zoo[1])
    assert zoo.names == ["resnet18", "resnet18#2"]
    assert zoo.preprocessing.interpolation == "bicubic"  # the first member's
    assert zoo.relatedness is not None and zoo.relatedness.unrelated() == zoo.names
    assert len(zoo.reports) == 2 and zoo.warnings


def test_related_zoo_gives_no_warning_and_names_the_outlier(tmp_path):
    torch.manual_seed(0)
    base = torchvision.models.resnet18().state_dict()
    tuned = {k: v + 0.3 * v.std() * torch.randn_like(v) if v.is_floating_point() and v.dim() > 1
             else v for k, v in base.items()}
    other = torchvision.models.resnet18().state_dict()
    specs = [_file(tmp_path, "base", base), _file(tmp_path, "tuned", tuned),
             _file(tmp_path, "other", other)]
    with pytest.warns(UnrelatedZooWarning, match="other"):
        zoo = load_zoo(specs)
    assert zoo.relatedness.unrelated() == ["other"]
    pair = zoo.relatedness.pairwise()
    assert pair[0, 1] > 0.9 and abs(pair[0, 2]) < 0.05
    # the related pair alone gives no warning
    assert relatedness(zoo[:2], zoo.names[:2]).warning_text() is None


def test_build_transform_follows_preprocessing():
    from PIL import Image

    from zootune.zoo import Preprocessing

    pre = Preprocessing(input_size=(3, 96, 96), resize_size=110, mean=(0.5, 0.5, 0.5),
                        std=(0.25, 0.25, 0.25), interpolation="bicubic")
    img = Image.new("RGB", (200, 150), color=(128, 128, 128))
    x = build_transform(pre)(img)
    assert x.shape == (3, 96, 96)
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25), atol=1e-5)
    y = build_transform(pre, train=True)(img)
    assert y.shape == (3, 96, 96)


def test_load_zoo_accepts_config_style_mappings(tmp_path):
    sd = torchvision.models.resnet18().state_dict()
    path = tmp_path / "with space.pth"
    torch.save(sd, path)
    zoo = load_zoo([{"spec": f"file:{path}", "arch": "resnet18", "name": "a"},
                    {"spec": f"file:{path}", "arch": "resnet18", "name": "b"}], warn=False)
    assert zoo.names == ["a", "b"] and isinstance(zoo[0], nn.Module)
    assert zoo.relatedness.member_scores().min() > 0.99
