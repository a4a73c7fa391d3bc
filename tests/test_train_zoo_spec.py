"""A zoo given as zoo specs (``zootune.zoo.load_zoo``) trains through the same path."""

from __future__ import annotations

import pytest
import torch

from zootune.config import build_config
from zootune.train import build_run, fit


@pytest.mark.slow
def test_file_specs_build_train_and_carry_preprocessing(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    specs = []
    base = torchvision.models.resnet18()
    for i in range(2):  # two members fine-tuned from one base (aligned channels)
        m = torchvision.models.resnet18()
        m.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn_like(p))
        path = tmp_path / f"m{i}.safetensors"
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
        specs.append(f"file:{path} arch=torchvision:resnet18 name=m{i}")
    cfg = build_config({
        "recipe": "adam", "method": {"name": "zoo_tuning_lite", "layers": ["layer4.*"]},
        "zoo": {"spec": specs, "offline": True},
        "data": {"name": "digits", "image_size": 16, "labels_per_class": 2},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 0, "checkpoint_every": 0,
                  "threads": 1, "progress": False, "tensorboard": False},
    })
    run = build_run(cfg)
    assert run.zoo.names == ["m0", "m1"] and run.task.head_name == "fc"
    pre = run.data.info["preprocessing"]
    assert pre["channels"] == 3 and pre["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert run.model.layer_names and all(n.startswith("layer4") for n in run.model.layer_names)
    assert run.model.lite and run.method.name == "zoo_tuning_lite"
    res = fit(run.model, run.task, run.data, cfg, None, method=run.method, report=False)
    assert res.steps == 2 and 0.0 <= res.metrics["test"]["accuracy"] <= 1.0
