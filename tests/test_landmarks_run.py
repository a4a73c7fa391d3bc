"""A landmark run end to end through the shared trainer: train, report pictures, `zootune eval`
(same numbers), `zootune export` (a plain module that outputs heatmaps), `zootune.load`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import zootune
from zootune.config import build_config, load_config
from zootune.data.sample import as_sample
from zootune.tasks.landmarks import normalized_mean_error
from zootune.train import build_run, evaluate, run_config
from trainer_utils import run_cli, tiny_raw


def _raw(**over):
    raw = tiny_raw(task={"name": "landmarks", "deconv_channels": 8, "report_images": 4},
                   data={"name": "procedural_faces", "image_size": 32,
                         "options": {"train": 24, "val": 8, "test": 12}},
                   zoo={"builder": "zootune.models:small_cnn",
                        "builder_kwargs": {"widths": [4, 8], "norm": "batch", "in_channels": 3},
                        "random_sources": 2},
                   train={"steps": 4, "batch_size": 8, "eval_every": 2, "log_every": 2,
                          "checkpoint_every": 0, "threads": 1, "progress": False, "tensorboard": False})
    raw.update(over)
    return raw


@pytest.mark.slow
def test_landmark_run_trains_reports_evaluates_and_exports(tmp_path):
    cfg = build_config(_raw())
    res = run_config(cfg, tmp_path / "run")
    m = res.metrics["test"]
    assert set(m) == {"loss", "nme", "failure_rate", "auc"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Landmarks" in report and (tmp_path / "run" / "landmarks.png").is_file()
    assert (tmp_path / "run" / "ced.png").is_file()
    # the cat metric over the whole split equals a naive per-face computation
    run = build_run(cfg)
    model = res.model.eval()
    errs = []
    with torch.no_grad():
        for i in range(len(run.data.test)):
            s = as_sample(run.data.test[i])
            x = s["image"][None]
            errs.append(float(normalized_mean_error(run.task.predict(model(x), x), s["keypoints"][None], (36, 45))))
    assert m["nme"] == pytest.approx(np.mean(errs), rel=1e-6)
    assert m["failure_rate"] == pytest.approx(np.mean(np.array(errs) > 0.1))
    assert evaluate(model, run.task, run.data.test, batch_size=5)["nme"] == pytest.approx(m["nme"], rel=1e-9)

    r = run_cli("eval", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout.strip().splitlines()[-1])
    assert ev["nme"] == pytest.approx(m["nme"], rel=1e-6) and ev["auc"] == pytest.approx(m["auc"], abs=1e-9)

    r = run_cli("export", str(tmp_path / "run"), "-o", str(tmp_path / "exp" / "model.safetensors"))
    assert r.returncode == 0, r.stderr
    plain = zootune.load(tmp_path / "exp" / "model.safetensors")
    assert not isinstance(plain, zootune.ZooModel)
    x = torch.stack([as_sample(run.data.test[i])["image"] for i in range(4)])
    with torch.no_grad():
        y = plain(x)
        assert y.shape == (4, 68, 16, 16)  # this SmallCNN's trunk has stride 2: no deconv
        assert torch.allclose(y, model(x), atol=1e-5)
    card = (tmp_path / "exp" / "model.md").read_text()
    assert "landmarks" in card and "heatmaps" in card
    again = zootune.load(tmp_path / "run")
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-6)


def test_shipped_landmark_configs_validate():
    for name in ("landmarks_demo", "landmarks_300w", "landmarks_wflw", "landmarks_cofw"):
        cfg = load_config(name)
        assert cfg.task.name == "landmarks" and cfg.name == name
