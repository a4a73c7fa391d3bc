"""Co-Tuning: the relationship (direct, reverse), calibration, the loss, the zoo variant, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zootune.methods import MethodError
from zootune.methods.co_tuning import (
    CoTuning,
    calibrate_temperature,
    direct_relationship,
    reverse_relationship,
    source_predictions,
)
from zootune.select import leep


def test_direct_relationship_is_the_per_class_mean_on_a_hand_made_case():
    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2], [0.0, 0.3, 0.7]])
    y = [0, 0, 1, 2, 1]
    r = direct_relationship(p, y, 3)
    expect = np.array([[0.6, 0.3, 0.1], [0.05, 0.2, 0.75], [0.2, 0.6, 0.2]])
    np.testing.assert_allclose(r.numpy(), expect, atol=1e-12)
    # LEEP is built on the same per-class average: P(y, z) = mean_y(z) * N_y / N
    joint = expect * np.array([2, 2, 1])[:, None] / 5
    cond = joint / joint.sum(0)
    eep = np.array([p[i] @ cond[y[i]] for i in range(5)])
    assert leep(p, y) == pytest.approx(float(np.log(eep).mean()), abs=1e-12)


def test_a_target_class_without_samples_is_one_clear_error():
    p = np.full((3, 2), 0.5)
    with pytest.raises(MethodError, match=r"class\(es\) \[1\] have no training samples"):
        direct_relationship(p, [0, 0, 2], 3)
    with pytest.raises(MethodError, match="no training samples"):
        reverse_relationship(p, [0, 0, 2], 3)


def test_reverse_relationship_recovers_a_known_conditional():
    rng = np.random.default_rng(0)
    c, z, n = 3, 4, 30000
    true = np.array([[0.6, 0.3, 0.1, 0.0], [0.1, 0.1, 0.4, 0.4], [0.25, 0.25, 0.25, 0.25]])
    y = rng.choice(c, size=n, p=[0.5, 0.3, 0.2])
    ys = np.array([rng.choice(z, p=true[t]) for t in y])
    probs = np.eye(z)[ys] * 0.96 + 0.01  # a confident source: f0(x) near one-hot(y_s)
    r = reverse_relationship(probs, y, c, c=100.0)
    np.testing.assert_allclose(r.numpy(), true, atol=0.03)
    # the direct approach on the same data sees the smoothed predictions
    np.testing.assert_allclose(direct_relationship(probs, y, c).numpy(), true * 0.96 + 0.01, atol=0.02)


def test_calibration_finds_a_known_temperature():
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(40000, 6, generator=g)
    t_true = 2.5
    labels = torch.multinomial(torch.softmax(logits / t_true, 1), 1, generator=g).squeeze(1)
    t = calibrate_temperature(logits, labels)
    assert t == pytest.approx(t_true, rel=0.03)
    # the minimum: the mean NLL is larger on both sides
    nll = lambda tt: float(F.cross_entropy(logits / tt, labels))
    assert nll(t) < nll(t * 1.1) and nll(t) < nll(t / 1.1)
    with pytest.raises(MethodError, match="source classes"):
        calibrate_temperature(logits[:3], [0, 1, 9])


# ---- the method in the trainer --------------------------------------------------------------


def _cfg(**over):
    from trainer_utils import tiny_config

    return tiny_config(**{"method": {"name": "co_tuning", "source": 0}, "train__eval_every": 0,
                          "train__steps": 4, **over})


def test_co_tuning_builds_the_target_model_and_a_source_head_with_the_direct_relationship():
    from zootune.train import build_run

    cfg = _cfg()
    run = build_run(cfg)
    m = run.method
    assert isinstance(m, CoTuning)
    heads = m.extra_modules(run.model)["co_tuning_heads"]
    src = run.zoo[0]
    assert torch.equal(heads.heads[0].weight, src.fc.weight)  # the pretrained source head
    assert run.model.fc.out_features == 10 and not hasattr(run.model, "co_tuning_heads")
    logits, y = source_predictions(src, run.data.train, seed=0)
    expect = direct_relationship(torch.softmax(logits.double(), 1), y, 10)
    torch.testing.assert_close(heads.relationship(0).double(), expect, atol=1e-6, rtol=0)

    # the loss: target CE + weight * soft CE of the source head against relationship[y]
    from zootune.data.sample import collate_samples

    batch = collate_samples([run.data.train[i] for i in range(6)])
    run.model.train()
    loss, out = m.loss(run.model, batch, run.task)
    feats = torch.flatten(run.model.pool(run.model.features(batch["image"])), 1)
    q = heads.relationship(0)[batch["label"]]
    aux = -(q * F.log_softmax(heads.heads[0](feats), 1)).sum(1).mean()
    expect_loss = F.cross_entropy(out, batch["label"]) + 1.0 * aux
    assert float(loss.detach()) == pytest.approx(float(expect_loss.detach()), rel=1e-5)


def test_zoo_variant_one_relationship_per_member_and_mean_of_losses():
    from zootune.train import build_run

    cfg = _cfg(method={"name": "co_tuning", "source": "all", "weight": 0.5,
                       "zoo_tuning": {"lite": True}})
    run = build_run(cfg)
    heads = run.method.heads
    assert len(heads.heads) == 2 and hasattr(run.model, "adaagg_layers")
    for i in range(2):
        logits, y = source_predictions(run.zoo[i], run.data.train, seed=0)
        torch.testing.assert_close(heads.relationship(i).double(),
                                   direct_relationship(torch.softmax(logits.double(), 1), y, 10),
                                   atol=1e-6, rtol=0)
    feats = torch.randn(5, heads.heads[0].in_features)
    y = torch.tensor([0, 1, 2, 3, 4])
    each = [-(heads.relationship(i)[y] * F.log_softmax(heads.heads[i](feats), 1)).sum(1).mean()
            for i in range(2)]
    with torch.no_grad():
        got = float(heads.aux_loss(feats, y))
    assert got == pytest.approx(float(sum(each).detach() / 2), rel=1e-6)


def test_a_source_without_a_head_is_one_clear_error():
    from zootune.config import build_config
    from zootune.methods import BuildContext
    from zootune.tasks import build_task
    from zootune.train import build_run
    from zootune.zoo import Zoo

    run = build_run(_cfg())
    body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    headless = nn.Sequential()
    headless.add_module("features", body)
    headless.add_module("fc", nn.Identity())
    zoo = Zoo([headless], ["nohead"])
    cfg = build_config({"method": {"name": "co_tuning"}})
    task = build_task(cfg.task, run.data)
    task.head_name = "fc"
    with pytest.raises(MethodError, match="'nohead' has no source classification head"):
        CoTuning(cfg.method)._source_model(BuildContext(zoo, task, cfg, data=run.data), 0, "fc", "nohead")


@pytest.mark.slow
def test_reverse_and_calibrated_options_and_the_run_folder(tmp_path):
    from zootune.train import run_config

    cfg = _cfg(method={"name": "co_tuning", "relationship": "reverse", "temperature": 2.0,
                       "source_classes": {"random0": [f"c{i}" for i in range(10)]}})
    res = run_config(cfg, tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "relationship.json").read_text())
    src = rec["sources"][0]
    assert src["temperature"] == 2.0 and src["source_classes"][0] == "c0"
    r = np.array(src["matrix"])
    assert r.shape == (10, 10) and np.allclose(r.sum(1), 1.0, atol=1e-5)
    assert (tmp_path / "run" / "relationship.png").is_file()
    assert "Co-Tuning" in (tmp_path / "run" / "report.md").read_text()
    # the checkpoint carries the relationship with the extra modules; the model is plain
    assert "co_tuning_heads" in res.extra_modules
    assert type(res.model).__name__ == "SmallCNN"

    with pytest.raises(MethodError, match="calibration_data"):
        from zootune.train import build_run

        build_run(_cfg(method={"name": "co_tuning", "calibrate": True}))
