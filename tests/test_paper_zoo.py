"""``benchmarks/paper_zoo.py`` (smoke budgets) and its parts: the glyph keypoint scenes, the
denoising data and the ``dense_regression`` task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainer_utils import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pz():
    return load_script("benchmarks/paper_zoo.py")


@pytest.mark.slow  # renders every script's bitmaps once (~10 s on a shared CPU)
def test_keypoint_scenes_are_deterministic_and_points_sit_on_the_glyph(pz):
    x, p = pz.keypoint_scenes(64, seed=3)
    x2, p2 = pz.keypoint_scenes(64, seed=3)
    assert torch.equal(x, x2) and torch.equal(p, p2)
    assert x.shape == (64, 1, 16, 16) and p.shape == (64, 5, 2)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert bool(((p >= 0.5 - 1e-4) & (p <= 15.5 + 1e-4)).all())  # every point inside
    # the centre is the mean of the four corners; corners are ordered TL, TR, BR, BL in the
    # glyph's frame (rotation <= 30 degrees, so TL is left of TR and above BL)
    assert torch.allclose(p[:, :4].mean(1), p[:, 4], atol=1e-4)
    assert bool((p[:, 0, 0] < p[:, 1, 0]).all()) and bool((p[:, 0, 1] < p[:, 3, 1]).all())
    # the glyph is there: the scene is brighter inside the point box than the average pixel
    inside = []
    for i in range(64):
        lo, hi = p[i].amin(0).floor().long(), p[i].amax(0).ceil().long()
        inside.append(float(x[i, 0, lo[1]:hi[1], lo[0]:hi[0]].mean()) - float(x[i].mean()))
    assert sum(v > 0 for v in inside) >= 56
    assert not torch.equal(pz.keypoint_scenes(8, seed=4)[1], p[:8])


def test_denoise_set_fixed_for_eval_fresh_for_training_keys(pz):
    clean = torch.rand(4, 1, 16, 16)
    ds = pz.DenoiseSet(clean, (0.2, 0.2), 5, seed=0)
    a, b = ds[1], ds[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], clean[1])
    assert not torch.equal(ds[(1, 7)]["image"], ds[(1, 8)]["image"])
    assert torch.equal(ds[(1, 7)]["image"], ds[(1, 7)]["image"])
    masked = (a["image"] == 0).sum()
    assert masked >= 25  # the 5x5 square


def test_dense_regression_task_head_loss_and_psnr():
    from zootune.data import DataSplits
    from zootune.demo.model import MiniCNN
    from zootune.tasks import build_task

    class DS:
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x, self.t = torch.rand(6, 1, 16, 16, generator=g), torch.rand(6, 2, 16, 16, generator=g)

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return {"image": self.x[i], "target": self.t[i]}

    ds = DS()
    data = DataSplits(train=ds, val=ds, test=ds, classes=[])
    task = build_task({"name": "dense_regression"}, data=data)
    assert task.options.channels == 2
    model = task.prepare_zoo([MiniCNN(3)])[0]
    assert task.head_name == "heatmap_head"
    with torch.no_grad():
        out = model(ds.x)
    assert out.shape == (6, 2, 16, 16)
    batch = {"image": ds.x, "target": ds.t}
    assert float(task.loss(out, batch)) == pytest.approx(float(((out - ds.t) ** 2).mean()), rel=1e-6)
    m = task.summarize({k: v for k, v in task.batch_metrics(out, batch).items()})
    per = ((out - ds.t) ** 2).flatten(1).mean(1).double()
    assert m["mse"] == pytest.approx(float(per.mean()), rel=1e-6)
    assert m["psnr"] == pytest.approx(float((-10 * torch.log10(per)).mean()), rel=1e-6)
    bad = build_task({"name": "dense_regression", "output_stride": 2}, data=data)
    m2 = bad.prepare_zoo([MiniCNN(3)])[0]
    with torch.no_grad(), pytest.raises(Exception, match="output_stride"):
        bad.loss(m2(ds.x), batch)


@pytest.mark.slow
def test_smoke_build_is_resumable_and_loads_as_a_zoo(pz, tmp_path):
    from zootune.demo.zoo import load_demo_zoo
    from zootune.zoo.relatedness import relatedness

    logs: list[str] = []
    m = pz.build(tmp_path, 0, pz.SMOKE, only=["base", "script", "contrastive"], log=logs.append)
    assert [e["name"] for e in m["members"]] == ["base", "script", "contrastive"]
    m = pz.build(tmp_path, 0, pz.SMOKE, log=logs.append)  # resumes: the rest only
    assert sum("skipped" in line for line in logs) == 3
    names = [e["name"] for e in m["members"]]
    assert names == list(pz.MEMBERS)
    saved = json.loads((tmp_path / "zoo.json").read_text())
    assert saved["members"] == m["members"] and len(saved["runs"]) == 2
    for e in saved["members"]:
        assert {"val", "test"} <= set(e["source_metric"]) and e["seed"] == pz.MEMBERS.index(e["name"])
        assert e["wall_time_s"] >= 0 and len(e["sha256"]) == 64
    by = {e["name"]: e for e in saved["members"]}
    assert by["dense"]["reference"]["test"]["mse"] > 0 and "nme" in by["keypoints"]["reference"]
    assert by["script"]["init"] == "base" and by["contrastive"]["init"] == "random"
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.safetensors")}
    logs.clear()
    pz.build(tmp_path, 0, pz.SMOKE, log=logs.append)
    assert sum("skipped" in line for line in logs) == 5
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.safetensors")}
    with pytest.raises(SystemExit):
        pz.build(tmp_path, 1, pz.SMOKE, log=logs.append)  # another seed: refuse to mix
    from zootune.zoo.relatedness import UnrelatedZooWarning

    with pytest.warns(UnrelatedZooWarning, match="contrastive"):
        zoo = load_demo_zoo(None, tmp_path)
    assert list(zoo.names) == list(pz.MEMBERS)
    rel = relatedness(list(zoo), list(zoo.names), exclude_prefixes=["head"])
    assert rel.unrelated() == ["contrastive"]  # its own random start; the rest share the base's
