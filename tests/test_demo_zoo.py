"""The shipped demo zoo loads into the demo architecture and forms a valid zoo; demo data."""

import json

import numpy as np
import pytest
import torch

from zootune.demo.model import RESOLUTION, MiniCNN
from zootune.demo.zoo import DEFAULT_ZOO, WEIGHTS_DIR, load_demo_zoo, load_member, read_manifest


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
    from zootune.zoo import Zoo

    zoo = load_demo_zoo(strip_heads="differing")
    assert isinstance(zoo, Zoo) and zoo.names == list(DEFAULT_ZOO)
    x = torch.rand(4, 1, RESOLUTION, RESOLUTION)
    feats = []
    for model in zoo:
        assert isinstance(model, MiniCNN)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        feats.append(model.features.eval()(x))
    # specialists were fine-tuned from the base: related, not identical
    w = [torch.cat([p.detach().flatten() for p in m.features.parameters()]) for m in zoo]
    for wi in w[1:]:
        cos = torch.nn.functional.cosine_similarity(w[0], wi, dim=0)
        assert 0.5 < float(cos) < 0.99999
    assert zoo.relatedness is not None and not zoo.relatedness.unrelated()
    heads = [torch.nn.Linear(feats[0].shape[1], 7) for _ in zoo]
    for m, h in zip(zoo, heads):
        h.load_state_dict(heads[0].state_dict())
        m.head = h
    zm = zootune.zoo_tune(zoo, exclude=["head"], lite=True)
    assert zm.num_sources == len(DEFAULT_ZOO)
    zm.eval()
    plain = zm.export()
    assert isinstance(plain, MiniCNN)
    assert torch.allclose(zm(x), plain(x), atol=1e-4)


def test_load_demo_zoo_goes_through_load_zoo_and_strips_differing_heads():
    from zootune.zoo import ZooMismatchError

    manifest = {e["name"]: e for e in read_manifest()["members"]}
    # the members' source heads differ (179, 52, ... classes): stripped by default, so the
    # default call is one zoo; keeping them is an error that says how to proceed
    default = load_demo_zoo()
    assert default.info["heads_stripped"] is True and all(isinstance(m.head, torch.nn.Identity) for m in default)
    with pytest.raises(ZooMismatchError, match="'head.weight'.*strip_heads=True"):
        load_demo_zoo(strip_heads=False)
    zoo = load_demo_zoo(["greek", "latin"], strip_heads=True)
    assert zoo.names == ["greek", "latin"] and zoo.info["heads_stripped"] is True
    assert all(isinstance(m.head, torch.nn.Identity) for m in zoo)
    one = load_demo_zoo(["latin"])  # one member: heads kept
    assert one[0].head.out_features == manifest["latin"]["num_classes"]
    for n in ("greek", "latin"):
        assert zoo.info["members"][n] == {k: manifest[n][k]
                                          for k in ("domain", "init", "source_accuracy")}
    assert zoo.specs[0] == f"file:{WEIGHTS_DIR / 'greek.safetensors'} arch=zootune.demo.model:MiniCNN"
    everything = load_demo_zoo(None, strip_heads="differing", check_related=False)
    assert everything.names == list(manifest) and everything.relatedness is None
    from zootune.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no member"):
        load_demo_zoo(["klingon"])


def test_demo_preset_is_the_default_zoo_loaded_as_float32():
    from safetensors.torch import load_file

    from zootune.zoo import ZOO_PRESETS, expand_specs, load_zoo
    from zootune.zoo.presets import PRESET_DEFAULTS

    assert [n for n, _ in ZOO_PRESETS["demo"]] == list(DEFAULT_ZOO)
    assert PRESET_DEFAULTS["demo"] == {"strip_heads": True}
    specs, _ = expand_specs("demo")
    manifest = {e["name"]: e for e in read_manifest()["members"]}
    for s in specs:
        assert s.kind == "file" and s.arch == "zootune.demo.model:MiniCNN"
        assert s.target == str(WEIGHTS_DIR / manifest[s.name]["file"])
    zoo = load_zoo("demo")
    assert zoo.names == list(DEFAULT_ZOO) and zoo.info["heads_stripped"] is True
    assert all(isinstance(m.head, torch.nn.Identity) for m in zoo)
    assert not zoo.warnings  # related members, one preprocessing
    for name, model in zip(zoo.names, zoo):
        stored = load_file(str(WEIGHTS_DIR / manifest[name]["file"]))
        assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
        state = model.state_dict()
        assert set(state) == {k for k in stored if not k.startswith("head.")}
        for k, v in state.items():
            want = stored[k].float() if stored[k].is_floating_point() else stored[k]
            assert v.dtype == want.dtype and torch.equal(v, want), (name, k)
    # the demo's data: 1x16x16 in [0, 1], not normalised (mean 0, std 1: the identity)
    pre = zoo.preprocessing
    assert pre.input_size == (1, RESOLUTION, RESOLUTION) and pre.resize_size == RESOLUTION
    assert pre.mean == (0.0,) and pre.std == (1.0,)
    assert zoo[0].features.eval()(torch.rand(2, *pre.input_size)).shape == (2, 128)


def test_load_member_goes_through_the_zoo_loader():
    entry = read_manifest()["members"][1]
    m = load_member(entry)
    assert isinstance(m, MiniCNN) and not m.training
    assert m.head.out_features == entry["num_classes"]
    assert m.zootune_spec.startswith("file:") and m.zootune_preprocessing.input_size == (1, 16, 16)


def test_target_splits_mix_digits_and_held_apart_greek():
    from zootune.demo.data import target_splits

    d = target_splits(labels_per_class=3, seed=1)
    assert d.num_classes == 20 and len(d.train) == 60
    assert np.array_equal(np.bincount(d.train.targets, minlength=20), np.full(20, 3))
    assert set(np.unique(d.test.targets)) == set(range(20))
    from zootune.data.sample import as_sample

    def image(item):  # data sets may give (input, target) pairs or sample dicts
        return as_sample(item)["image"]

    x = image(d.train[(0, 123)])
    assert x.shape == (1, RESOLUTION, RESOLUTION)
    assert torch.equal(image(d.train[(0, 123)]), x) and not torch.equal(image(d.train[(0, 124)]), x)
    d2 = target_splits(labels_per_class=3, seed=1)
    assert torch.equal(image(d2.test[5]), image(d.test[5]))
    assert d.info["train"] + d.info["val"] + d.info["test"] < 1797 + 1800
