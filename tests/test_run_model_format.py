"""One model format: a run's files load with zootune.load (no template), exports carry the exact
evaluation preprocessing, and the model card's code reproduces `zootune eval`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import zootune
from zootune.config import build_config
from zootune.train import run_config
from trainer_utils import run_cli, tiny_raw


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("method", [{"name": "zoo_tuning"}, {"name": "zoo_tuning", "lite": True},
                                    "finetune"])
def test_run_files_load_without_a_template(tmp_path, method):
    cfg = build_config(tiny_raw(method=method))
    out = tmp_path / "run"
    res = run_config(cfg, out)
    x = torch.randn(6, 1, 8, 8)
    ref = _outputs(res.model, x)
    for path in (out / "model.safetensors", out, *sorted((out / "checkpoints").glob("step_*"))[-1:]):
        target = path / "model.safetensors" if path.name.startswith("step_") else path
        loaded = zootune.load(target)
        assert type(loaded) is type(res.model)
        if path.name.startswith("step_"):
            continue  # the last checkpoint is the final step: same weights
        assert torch.equal(_outputs(loaded, x), ref)


def _image_folder(root, n_per_class=6, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, colour in enumerate(((220, 30, 30), (30, 200, 40), (40, 40, 210))):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(n_per_class):
            arr = (rng.random((size + i % 3, size, 3)) * 60).astype(np.uint8) + np.array(colour, np.uint8) // 2
            Image.fromarray(arr).save(d / f"{i}.png")


@pytest.mark.slow
def test_exported_model_and_card_reproduce_eval(tmp_path):
    """Preprocess as the card says, run the exported file: the accuracy `zootune eval` reports."""
    _image_folder(tmp_path / "imgs")
    raw = tiny_raw(data={"name": "image_folder", "root": str(tmp_path / "imgs"), "image_size": 16,
                         "val_fraction": 0.34, "test_fraction": 0.34, "channels": 3,
                         "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]})
    raw["zoo"]["builder_kwargs"] = {"widths": [4, 8], "norm": "group", "in_channels": 3}
    (tmp_path / "cfg.yaml").write_text(json.dumps(raw))
    r = run_cli("tune", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", str(tmp_path / "run"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    evaluated = json.loads(r.stdout.strip().splitlines()[-1])
    r = run_cli("export", str(tmp_path / "run"), "-o", str(tmp_path / "exp.safetensors"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr

    from zootune.export import read_metadata

    meta = read_metadata(tmp_path / "exp.safetensors")["extra"]
    pre = meta["preprocessing"]
    assert pre["resize"] == round(16 * 256 / 224) and pre["crop"] == 16 and pre["mean"] == [0.5, 0.4, 0.3]
    card = (tmp_path / "exp.md").read_text()
    code = re.search(r"## Preprocessing.*?```python\n(.*?)```", card, re.S).group(1)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the card's own code, torchvision only
    preprocess = scope["preprocess"]

    from PIL import Image
    from zootune.train.restore import load_run

    run, _ = load_run(tmp_path / "run", with_data=True)
    test = run.data.test
    files = [test.base.files[i] for i in test.indices]
    labels = [int(test.base.targets[i]) for i in test.indices]
    model = zootune.load(tmp_path / "exp.safetensors")
    assert not isinstance(model, zootune.ZooModel)  # lite exports a plain model
    x = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        acc = float((model(x).argmax(1) == torch.tensor(labels)).double().mean())
    assert acc == pytest.approx(evaluated["accuracy"], abs=1e-12)
    assert evaluated["n"] == len(files)


def test_differing_source_heads_are_stripped_when_the_task_replaces_them(tmp_path):
    raw = tiny_raw()
    raw["zoo"] = {"spec": [
        {"spec": "random:zootune.models:small_cnn seed=0", "kwargs": {"widths": [4, 8], "norm": "group",
                                                                    "num_classes": 128}, "name": "a"},
        {"spec": "random:zootune.models:small_cnn seed=1", "kwargs": {"widths": [4, 8], "norm": "group",
                                                                    "num_classes": 1000}, "name": "b"}]}
    res = run_config(build_config(raw), tmp_path / "run")
    assert res.metrics["test"]["accuracy"] >= 0.0
    assert res.model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
