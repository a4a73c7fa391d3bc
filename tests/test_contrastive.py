"""The ``contrastive`` method (SimCLR): NT-Xent, views, the online probe, and a tiny training run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zootune.methods import available, build_method
from zootune.methods.contrastive import augment_views, nt_xent, pair_similarities


def _nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """NT-Xent written out term by term (SimCLR, Algorithm 1)."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n, b = z.shape[0], z1.shape[0]
    total = 0.0
    for k in range(n):
        pos = (k + b) % n
        num = math.exp(float(z[k] @ z[pos]) / t)
        den = sum(math.exp(float(z[k] @ z[j]) / t) for j in range(n) if j != k)
        total += -math.log(num / den)
    return total / n


def test_nt_xent_matches_the_written_out_loss():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for t in (0.1, 0.5, 1.0):
        assert float(nt_xent(z1, z2, t)) == pytest.approx(_nt_xent_loop(z1, z2, t), rel=1e-5)


def test_nt_xent_is_low_for_matching_views_and_high_for_swapped_ones():
    z = torch.eye(8)
    good = float(nt_xent(z, z, 0.1))
    bad = float(nt_xent(z, z.roll(1, 0), 0.1))
    assert good < 0.01 < math.log(15) < bad
    with pytest.raises(ValueError):
        nt_xent(torch.zeros(3, 4), torch.zeros(4, 4))


def test_views_keep_shape_and_range_and_differ():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 16, 16)
    assert torch.equal(augment_views(x, 0.0), x)
    a, b = augment_views(x, 1.0), augment_views(x, 1.0)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, b)
    # a stronger augmentation moves images further from the original
    weak = float((augment_views(x, 0.2) - x).abs().mean())
    strong = float((augment_views(x, 1.5) - x).abs().mean())
    assert strong > weak


def _tiny(probe: bool = True, steps: int = 0):
    from zootune.config import build_config
    from zootune.data import DataSplits, TransformedDataset
    from zootune.data.glyphs import render_glyphs
    from zootune.demo.data import TensorImages
    from zootune.demo.model import MiniCNN
    from zootune.tasks import build_task

    chars = "AOX+7"
    g = render_glyphs(chars, 4, seed=1)
    ds = TransformedDataset(TensorImages(g.x, g.y))
    data = DataSplits(train=ds, val=ds, test=ds, classes=list(chars))
    task = build_task({"name": "classification", "head": "head"}, data=data)
    task.head_name = "head"
    cfg = build_config({"recipe": "adam", "method": {"name": "contrastive", "temperature": 0.2,
                                                     "projection_dim": 16, "strength": 0.7,
                                                     "probe": probe},
                        "optim": {"name": "adam", "lr": 3e-3, "weight_decay": 0.0},
                        "train": {"steps": steps, "batch_size": 20, "eval_every": 0,
                                  "checkpoint_every": 0, "seed": 0, "threads": 1,
                                  "progress": False, "tensorboard": False}})
    method = build_method(cfg.method)
    torch.manual_seed(0)
    model = MiniCNN(len(chars), width=8)
    method.attach_projection(model, task)
    return model, method, task, data, cfg


def _view_scores(model, method, task, x):
    """NT-Xent and (positive, negative) cosine of projected views, with a fixed RNG."""
    torch.manual_seed(123)
    model.eval()
    with torch.no_grad():
        v1, v2 = augment_views(x, 0.7), augment_views(x, 0.7)
        f, _ = method.embed(model, torch.cat([v1, v2]), task)
        z = method._proj(f)
    b = x.shape[0]
    return float(nt_xent(z[:b], z[b:], 0.2)), pair_similarities(z[:b], z[b:])


def test_training_lowers_the_loss_and_matches_views_of_one_image():
    from zootune.train import fit

    model, method, task, data, cfg = _tiny(steps=60)
    x = data.train.base.images
    before, _ = _view_scores(model, method, task, x)
    res = fit(model, task, data, cfg, out_dir=None, report=False, method=method)
    after, (pos, neg) = _view_scores(res.model, method, task, x)
    assert after < 0.8 * before
    assert pos > neg + 0.3  # two views of one image score higher than views of others


def test_probe_trains_only_the_head_and_is_optional():
    model, method, task, data, cfg = _tiny()
    from zootune.data.sample import collate_samples

    batch = collate_samples([data.train[i] for i in range(8)])
    model.train()
    loss, logits = method.loss(model, batch, task)
    assert logits.shape == (8, 5)
    # the probe term alone gives no gradient to the backbone
    probe = task.loss(model.head(method.embed(model, batch["image"], task)[0].detach()), batch)
    probe.backward()
    assert model.head.weight.grad is not None
    assert all(p.grad is None for p in model.features.parameters())
    model.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is not None for p in model.features.parameters())
    # without the probe the head gets no gradient
    model, method, task, data, _ = _tiny(probe=False)
    model.train()
    method.loss(model, batch, task)[0].backward()
    assert model.head.weight.grad is None


def test_registered_with_validated_options():
    from zootune.config import build_config
    from zootune.errors import ZootuneError

    assert "contrastive" in available()
    cfg = build_config({"method": {"name": "contrastive", "temperature": 0.5}})
    m = build_method(cfg.method)
    assert m.options.temperature == 0.5 and m.options.init == "random"
    assert "NT-Xent" in m.describe()
    with pytest.raises((ZootuneError, ValueError)):
        build_config({"method": {"name": "contrastive", "temprature": 0.5}})
