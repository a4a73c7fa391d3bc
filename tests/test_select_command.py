"""``zootune select`` end to end on real digits with tiny random CNNs (no downloads)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from zootune.cli import main
from zootune.commands import select as select_cmd


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 12),
    )


@pytest.fixture
def fake_zoo(monkeypatch):
    loaded = []

    def load_models(specs, **kw):
        loaded.append(list(specs))
        return [(f"m{i}", s, _cnn(i)) for i, s in enumerate(specs)]

    monkeypatch.setattr(select_cmd, "load_models", load_models)
    return loaded


@pytest.mark.slow
def test_select_ranks_writes_json_and_top_k_zoo(fake_zoo, tmp_path, capsys):
    specs = ["file:a.safetensors arch=x", "file:b.safetensors arch=x", "file:c.safetensors arch=x"]
    rc = main(["select", "--zoo", *specs, "--data", "digits", "--max-per-class", "8",
               "--top-k", "2", "--out", str(tmp_path)])
    assert rc == 0
    table = capsys.readouterr().out
    for name in ("m0", "m1", "m2"):
        assert name in table
    report = json.loads((tmp_path / "select.json").read_text())
    assert set(report["models"]) == {"m0", "m1", "m2"}
    for entry in report["models"].values():
        assert entry["samples"] == 80  # 8 per class x 10 digits
        assert set(entry["scores"]) == {"logme", "leep", "nce", "hscore", "hscore_shrinkage", "lfc", "lgc", "rsa"}
        assert entry["skipped"] == {"domain_similarity": "no source-domain samples given"}
    order = report["order"]
    means = [report["models"][m]["ranks"]["mean_rank"] for m in order]
    assert means == sorted(means)
    zoo = yaml.safe_load((tmp_path / "zoo_top2.yaml").read_text())
    assert zoo["zoo"]["names"] == order[:2]
    assert zoo["zoo"]["spec"] == [report["models"][m]["spec"] for m in order[:2]]
    # the fragment validates as the zoo section of a tune config
    from zootune.config import ZooConfig

    ZooConfig(**zoo["zoo"])
    # second run hits the feature cache
    rc = main(["select", "--zoo", *specs, "--data", "digits", "--max-per-class", "8",
               "--out", str(tmp_path), "--scores", "logme,leep,lgc", "--rank-by", "logme"])
    assert rc == 0
    report2 = json.loads((tmp_path / "select.json").read_text())
    assert all(e["cached"] for e in report2["models"].values())
    assert report2["order"] == sorted(report2["models"], key=lambda m: -report2["models"][m]["scores"]["logme"])


def test_select_bad_input_is_one_error_line(fake_zoo, tmp_path, capsys):
    rc = main(["select", "--zoo", "a", "b", "--data", "no-such-data", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --data 'no-such-data'")
    assert main(["select", "--zoo", "a", "--data", "digits", "--scores", "logme,bogus"]) == 2
    assert "unknown score(s) bogus" in capsys.readouterr().err
    assert main(["select", "--zoo", "a", "b", "--data", "digits", "--top-k", "3"]) == 2
    assert "larger than the zoo" in capsys.readouterr().err


@pytest.mark.slow
def test_select_with_real_zoo_specs_from_files(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    specs = []
    for i in range(2):
        torch.manual_seed(i)
        m = torchvision.models.resnet18(num_classes=10)
        path = tmp_path / f"r{i}.safetensors"
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
        specs.append(f"file:{path} arch=torchvision:resnet18 name=r{i}")
    rc = main(["select", "--zoo", *specs, "--data", "digits", "--image-size", "32", "--max-per-class", "3",
               "--top-k", "1", "--offline", "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "select.json").read_text())
    assert set(report["models"]) == {"r0", "r1"}
    assert report["models"]["r0"]["feature_dim"] == 512 and report["models"]["r0"]["samples"] == 30
    zoo = yaml.safe_load((tmp_path / "out" / "zoo_top1.yaml").read_text())["zoo"]
    assert zoo["spec"] == [report["models"][report["order"][0]]["spec"]]
    from zootune.zoo import load_zoo

    assert len(load_zoo(zoo["spec"], offline=True)) == 1  # what tune will do with it
