"""The procedural geometric shapes target (``data.name: shapes``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zootune.config import DataConfig
from zootune.data import DataError, build_data
from zootune.data.sample import as_sample, collate_samples
from zootune.data.shapes import SHAPE_CLASSES, shape_pool, shape_splits


def _images(ds) -> torch.Tensor:
    return torch.stack([as_sample(ds[i])["image"] for i in range(len(ds))])


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.flatten(1), b.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")


def _labels(ds) -> np.ndarray:
    return np.array([int(as_sample(ds[i])["label"]) for i in range(len(ds))])


def test_same_seed_gives_identical_tensors_and_leaves_the_global_rng_alone():
    from zootune.data import shapes

    shapes._class_part.cache_clear()  # render here, not in an earlier test
    state = torch.get_rng_state()
    a = shape_splits(5, seed=3)
    b = shape_splits(5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for split in ("train", "val", "test"):
        assert torch.equal(_images(getattr(a, split)), _images(getattr(b, split)))
        assert np.array_equal(_labels(getattr(a, split)), _labels(getattr(b, split)))
    assert torch.equal(as_sample(a.train[(2, 12345)])["image"], as_sample(b.train[(2, 12345)])["image"])
    # the pool itself is fixed: rendered afresh (cache cleared) it is the same tensor
    before = shape_pool().images.clone()
    shapes._class_part.cache_clear()
    assert torch.equal(shape_pool().images, before)


def test_data_seed_changes_the_split_not_the_pool():
    a, b = shape_splits(5, seed=0, augment=False), shape_splits(5, seed=1, augment=False)
    ta, tb = _images(a.train), _images(b.train)
    assert ta.shape == tb.shape and not torch.equal(ta, tb)
    pool = shape_pool().images
    # every image of every split of both seeds is a pool image (same data set, other split)
    for s in (a, b):
        for split in (s.train, s.val, s.test):
            assert (_dist(_images(split), pool).min(1).values == 0).all()
    # val and test of one seed are disjoint from its train images
    assert _dist(torch.cat([_images(a.val), _images(a.test)]), _images(a.train)).min() > 0


def test_image_shape_dtype_range_and_sizes():
    d = shape_splits(None, seed=0)
    assert d.classes == list(SHAPE_CLASSES) and d.num_classes == 10
    for split in (d.train, d.val, d.test):
        s = as_sample(split[0])
        assert s["image"].shape == (1, 16, 16) and s["image"].dtype == torch.float32
    x = torch.cat([_images(d.val), _images(d.test), d.train.copies.flatten(0, 1)])
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.1
    # 200 per class, 60 / 20 / 20 %, stratified
    assert (len(d.train), len(d.val), len(d.test)) == (1200, 400, 400)
    assert np.bincount(_labels(d.val)).tolist() == [40] * 10


def test_labels_per_class_keeps_exactly_k_training_images():
    for k in (1, 5, 13):
        d = shape_splits(k, seed=2)
        assert np.bincount(np.asarray(d.train.targets), minlength=10).tolist() == [k] * 10
        assert d.info["train"] == 10 * k and len(d.train) == 10 * k


def test_augmented_copies_are_keyed_jitters_of_the_training_image():
    d = shape_splits(3, seed=0)
    plain = d.train[4]
    assert torch.equal(plain[0], shape_splits(3, seed=0, augment=False).train[4]["image"])
    c0, c1 = d.train[(4, 0)][0], d.train[(4, 1)][0]
    assert torch.equal(d.train[(4, 32)][0], c0)  # copy = sample_seed % 32
    assert not torch.equal(c0, c1) and not torch.equal(c0, plain[0])
    assert d.train[(4, 7)][1] == plain[1]
    # a jitter, not another image: closer to its own original than to the others'
    dist = ((d.train.copies[:, 0] - d.train.images) ** 2).flatten(1).mean(1)
    other = ((d.train.copies[:, 0] - d.train.images.roll(1, 0)) ** 2).flatten(1).mean(1)
    assert (dist < other).float().mean() > 0.9
    batch = collate_samples([d.train[(i, 99)] for i in range(6)])
    assert batch["image"].shape == (6, 1, 16, 16) and batch["label"].dtype == torch.int64


def test_classes_are_learnable_but_not_by_a_linear_model_on_pixels():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pool = shape_pool()
    x, y = pool.images, pool.targets
    order = np.random.default_rng(0).permutation(len(y))
    tr, te = order[:500], order[500:1000]

    def score(feats: np.ndarray) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
        return clf.fit(feats[tr], y[tr]).score(feats[te], y[te])

    # not trivial: position, rotation, polarity and contrast are random, so raw pixels are ~chance
    raw = score(x.flatten(1).numpy())
    assert raw < 0.3, raw  # measured: 0.10
    # learnable: polarity-free, translation-invariant features (fixed random 5x5 filters,
    # global pooling) of 500 images beat chance (0.1) by far on 500 held-out pool images
    z = (x - x.flatten(1).median(1).values.view(-1, 1, 1, 1)).abs()
    w = torch.randn(32, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    h = F.conv2d(z, w - w.mean((2, 3), keepdim=True), padding=2)
    feats = torch.cat([F.relu(h).mean((2, 3)), F.relu(h).amax((2, 3)), F.relu(-h).mean((2, 3))], 1)
    acc = score(feats.numpy())
    assert acc > 0.2, acc  # > 2x chance (measured: 0.29)


def test_config_builds_through_the_registry_with_the_zoo_preprocessing():
    from zootune.demo.model import MiniCNN

    cfg = DataConfig(name="shapes", labels_per_class=5)
    d = build_data(cfg, MiniCNN.zootune_preprocessing)
    assert d.info["name"] == "shapes" and d.info["train"] == 50 and len(d.train) == 50
    assert d.info["eval_preprocessing"]["channels"] == 1
    assert torch.equal(d.val[(0, 5)]["image"], shape_splits(5, seed=0).val[0]["image"])
    # options: a subset of classes is the same images, relabelled in the listed order
    sub = build_data(DataConfig(name="shapes", labels_per_class=5, augment=False, image_size=16,
                                options={"classes": ["star", "circle"], "per_class": 50}))
    assert sub.classes == ["star", "circle"] and sub.info["per_class"] == 50
    assert len(sub.train) + len(sub.val) + len(sub.test) == 10 + 20 + 20
    sp, full = shape_pool(50, 16, ["star", "circle"]), shape_pool(50)
    star = SHAPE_CLASSES.index("star") * 50
    assert torch.equal(sp.images[:50], full.images[star:star + 50])
    assert torch.equal(sp.images[50:], full.images[:50])
    assert sp.targets[:50].tolist() == [0] * 50 and sp.targets[50:].tolist() == [1] * 50
    # another resolution is rendered at that size; 3 channels are repeated
    big = build_data(DataConfig(name="shapes", image_size=24, channels=3, augment=False,
                                options={"per_class": 10, "classes": ["square", "plus"]}))
    img = big.test[0]["image"]
    assert img.shape == (3, 24, 24) and torch.equal(img[0], img[2])


def test_bad_options_are_clear_errors():
    with pytest.raises(DataError, match="unknown shape class.*'hexagon'.*valid: circle"):
        build_data(DataConfig(name="shapes", options={"classes": ["circle", "hexagon"]}))
    with pytest.raises(DataError, match="unknown data.options for shapes: colour"):
        build_data(DataConfig(name="shapes", options={"colour": "red"}))
    with pytest.raises(DataError, match="twice"):
        build_data(DataConfig(name="shapes", options={"classes": ["star", "star"]}))
    with pytest.raises(DataError, match="per_class"):
        build_data(DataConfig(name="shapes", options={"per_class": 0}))


def test_a_tiny_run_trains_and_evaluates_on_shapes(tmp_path):
    from trainer_utils import tiny_raw

    from zootune.config import build_config
    from zootune.train import run_config

    raw = tiny_raw(data={"name": "shapes", "labels_per_class": 2}, method="finetune")
    raw["train"].update(steps=4, eval_every=0, checkpoint_every=4)
    res = run_config(build_config(raw), tmp_path / "run")
    assert 0.0 <= res.metrics["test"]["accuracy"] <= 1.0
    assert res.model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
