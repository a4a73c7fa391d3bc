"""The shipped demo zoo loads into the demo architecture and forms a valid zoo; demo data."""

import json

import numpy as np
import pytest
import torch

from zootune.demo.model import RESOLUTION, MiniCNN
from zootune.demo.zoo import DEFAULT_ZOO, WEIGHTS_DIR, load_demo_zoo, read_manifest


def test_manifest_records_the_recipe_and_source_accuracies():
    m = read_manifest()
    names = [e["name"] for e in m["members"]]
    assert set(DEFAULT_ZOO) <= set(names) and len(DEFAULT_ZOO) >= 4
    assert m["command"].startswith("python -m zootune.demo.build_zoo")
    for e in m["members"]:
        assert {"seed", "steps", "domain", "init", "sha256"} <= set(e)
        acc = e["source_accuracy"]["test"]
        assert acc > 5.0 / e["num_classes"]  # far above chance on its own domain
        assert len(e["classes"]) == e["num_classes"]
        assert (e["init"] == "random") == (e["name"] == "base")
    total = sum((WEIGHTS_DIR / e["file"]).stat().st_size for e in m["members"])
    assert total < 3_000_000


def test_shipped_weights_form_a_valid_zoo():
    import zootune

    zoo = load_demo_zoo()
    assert zoo.names == list(DEFAULT_ZOO)
    x = torch.rand(4, 1, RESOLUTION, RESOLUTION)
    feats = []
    for model in zoo.models:
        assert isinstance(model, MiniCNN)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        feats.append(model.features.eval()(x))
    # specialists were fine-tuned from the base: related, not identical
    w = [torch.cat([p.detach().flatten() for p in m.features.parameters()]) for m in zoo.models]
    for wi in w[1:]:
        cos = torch.nn.functional.cosine_similarity(w[0], wi, dim=0)
        assert 0.5 < float(cos) < 0.99999
    heads = [torch.nn.Linear(zoo.models[0].feature_dim, 7) for _ in zoo.models]
    for m, h in zip(zoo.models, heads):
        h.load_state_dict(heads[0].state_dict())
        m.head = h
    zm = zootune.zoo_tune(zoo.models, exclude=["head"], lite=True)
    assert zm.num_sources == len(DEFAULT_ZOO)
    zm.eval()
    plain = zm.export()
    assert isinstance(plain, MiniCNN)
    assert torch.allclose(zm(x), plain(x), atol=1e-4)


def test_target_splits_mix_digits_and_held_apart_greek():
    from zootune.demo.data import target_splits

    d = target_splits(labels_per_class=3, seed=1)
    assert d.num_classes == 20 and len(d.train) == 60
    assert np.array_equal(np.bincount(d.train.targets, minlength=20), np.full(20, 3))
    assert set(np.unique(d.test.targets)) == set(range(20))
    x, y = d.train[(0, 123)]
    assert x.shape == (1, RESOLUTION, RESOLUTION)
    assert torch.equal(d.train[(0, 123)][0], x) and not torch.equal(d.train[(0, 124)][0], x)
    d2 = target_splits(labels_per_class=3, seed=1)
    assert torch.equal(d2.test[5][0], d.test[5][0])
    assert d.info["train"] + d.info["val"] + d.info["test"] < 1797 + 1800
