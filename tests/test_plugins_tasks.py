"""Tasks as registered plug-ins: dict samples, joint transforms, vector metrics, summary lines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zootune
from zootune.config import ConfigError, build_config
from zootune.data import DataSplits, TransformedDataset
from zootune.data.sample import TorchvisionJoint, as_sample, collate_samples
from zootune.tasks import Task, TaskOptions, register
from zootune.train import MetricAccumulator, evaluate, run_config
from trainer_utils import tiny_raw


@register("test_digit_regression")
class DigitRegression(Task):
    """Predict the digit's value as a number (a second task next to classification): MSE loss,
    per-sample absolute errors as a vector metric, and a 'within one' rate from them."""

    class Options(TaskOptions):
        scale: float = 1.0

    metric_reductions = {"abs_err": "cat"}
    primary_metric = "mae"

    def prepare_zoo(self, models, keep_source_heads=False):
        from zootune.tasks import attach_head

        models, self.head_name = attach_head(models, 1, None, self.seed)
        return models

    @property
    def replaces_heads(self):
        return True

    def loss(self, outputs, batch):
        return F.mse_loss(outputs.squeeze(1).float(), batch["label"].float() * self.options.scale)

    def batch_metrics(self, outputs, batch):
        err = (outputs.squeeze(1).float() - batch["label"].float() * self.options.scale).abs()
        return {"abs_err": err, "count": torch.full((), float(err.numel()), device=err.device)}

    def summarize(self, totals):
        e = totals.get("abs_err", torch.zeros(0))
        return {"mae": float(e.mean()) if len(e) else 0.0,
                "within_one": float((e <= 1).double().mean()) if len(e) else 0.0}


def test_user_task_trains_and_evaluates_with_vector_metrics(tmp_path):
    cfg = build_config(tiny_raw(method="finetune", task={"name": "test_digit_regression", "scale": 1.0}))
    with pytest.raises(ConfigError, match=r"valid keys in task \(test_digit_regression\): name, scale"):
        build_config(tiny_raw(task={"name": "test_digit_regression", "num_classes": 3}))
    res = run_config(cfg, tmp_path / "run")
    assert set(res.metrics["test"]) == {"mae", "within_one"}
    # the vector metric equals the naive computation over the whole split
    run = zootune.train.build_run(cfg)
    model = res.model
    ys, preds = [], []
    with torch.no_grad():
        for i in range(len(run.data.test)):
            s = as_sample(run.data.test[i])
            preds.append(float(model(s["image"].unsqueeze(0))[0, 0]))
            ys.append(float(s["label"]))
    naive = np.abs(np.array(preds) - np.array(ys))
    m = evaluate(model, run.task, run.data.test, batch_size=7)
    assert m["mae"] == pytest.approx(naive.mean(), rel=1e-5)
    assert m["within_one"] == pytest.approx((naive <= 1).mean())
    assert "mae" in (tmp_path / "run" / "report.md").read_text()


def test_metric_accumulator_sums_and_concatenates():
    acc = MetricAccumulator({"v": "cat"})
    acc.add({"s": torch.tensor(2.0), "v": torch.tensor([1.0, 2.0])})
    acc.add({"s": torch.tensor(3.0), "v": torch.tensor([5.0])})
    out = acc.reduce()
    assert out["s"] == 5.0 and torch.equal(out["v"], torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        MetricAccumulator({"x": "max"})


def test_samples_are_dicts_and_pairs_are_converted():
    assert as_sample((1, 2)) == {"image": 1, "label": 2}
    batch = collate_samples([(torch.zeros(2), 1), {"image": torch.ones(2), "label": 0}])
    assert batch["image"].shape == (2, 2) and batch["label"].tolist() == [1, 0]
    with pytest.raises(TypeError):
        as_sample(3)


def test_joint_transform_moves_keypoints_with_the_image_from_an_explicit_generator():
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    img = torch.zeros(1, 16, 16)
    img[0, 3, 12] = 1.0  # a bright pixel at x=12, y=3
    kp_cls = getattr(tv_tensors, "KeyPoints", None)
    if kp_cls is None:
        pytest.skip("this torchvision has no tv_tensors.KeyPoints")
    base = [{"image": tv_tensors.Image(img), "keypoints": kp_cls([[12.0, 3.0]], canvas_size=(16, 16)),
             "label": 7}]

    class Pool:
        targets = [7]

        def __getitem__(self, i):
            return dict(base[i])

        def __len__(self):
            return 1

    t = TorchvisionJoint(v2.RandomHorizontalFlip(p=0.5))
    ds = TransformedDataset(Pool(), [0], t)
    flips = set()
    for seed in range(12):
        s = ds[(0, seed)]
        y, x = map(int, torch.nonzero(s["image"][0])[0])
        kx, ky = s["keypoints"].reshape(-1, 2)[0].tolist()
        assert (round(kx), round(ky)) in {(x, y), (x + 1, y)}  # pixel centre vs corner convention
        assert s["label"] == 7
        flips.add(x)
        again = ds[(0, seed)]  # a pure function of the key
        assert torch.equal(again["image"], s["image"])
    assert flips == {3, 12}  # both outcomes happen over seeds
    before = torch.get_rng_state()
    ds[(0, 5)]
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is untouched


def test_summary_line_and_describe():
    task = zootune.tasks.build_task(build_config(tiny_raw()).task)
    task.bind(DataSplits(train=[(torch.zeros(1, 8, 8), 0)], val=None, test=None, classes=["a", "b"]))
    line = task.summary_line({"loss": 0.25, "accuracy": 0.5})
    assert line == "accuracy 50.00%, loss 0.25"
    d = task.describe()
    assert d["classes"] == ["a", "b"] and d["num_classes"] == 2 and d["input_shape"] == [1, 8, 8]
