"""Data: digits splits, seeded augmentation, dict samples, image folders and their errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from zootune.config import DataConfig
from zootune.data import DataError, build_data


def _digits(**kw):
    return build_data(DataConfig(name="digits", **kw))


def test_digits_split_is_deterministic_disjoint_and_stratified():
    a, b = _digits(seed=3), _digits(seed=3)
    idx = {s: set(getattr(a, s).indices.tolist()) for s in ("train", "val", "test")}
    assert not (idx["train"] & idx["val"]) and not (idx["train"] & idx["test"]) and not (idx["val"] & idx["test"])
    assert sum(map(len, idx.values())) == 1797
    for s in ("train", "val", "test"):
        assert np.array_equal(getattr(a, s).indices, getattr(b, s).indices)
    assert not np.array_equal(a.train.indices, _digits(seed=4).train.indices)
    counts = np.bincount(a.test.targets, minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40  # ~20% of each class (~180 per class)
    sample = a.test[0]
    assert isinstance(sample, dict) and set(sample) == {"image", "label"}
    x, y = sample["image"], sample["label"]
    assert x.shape == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and 0 <= y < 10


def test_labels_per_class_keeps_exactly_k_training_labels():
    d = _digits(labels_per_class=5)
    assert np.array_equal(np.bincount(d.train.targets, minlength=10), np.full(10, 5))
    assert len(d.val) == len(_digits().val)  # only train is reduced


def test_seeded_augmentation_is_a_function_of_the_key():
    d = _digits(image_size=16, channels=3)
    x1 = d.train[(0, 123)]["image"]
    x2 = d.train[(0, 123)]["image"]
    x3 = d.train[(0, 124)]["image"]
    assert x1.shape == (3, 16, 16)
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert d.train[(0, 123)]["label"] == d.train[(0, 124)]["label"] == d.train[0]["label"]
    state = torch.get_rng_state()
    d.train[(1, 5)]
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def _make_folder(root, classes=("cat", "dog"), n=6, size=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_image_folder_split_fraction_and_explicit_splits(tmp_path):
    _make_folder(tmp_path / "pool", n=10)
    d = build_data(DataConfig(name="image_folder", root=str(tmp_path / "pool"), image_size=8,
                              val_fraction=0.2, test_fraction=0.2))
    assert d.classes == ["cat", "dog"] and (len(d.train), len(d.val), len(d.test)) == (12, 4, 4)
    sample = d.train[(0, 1)]
    x, y = sample["image"], sample["label"]
    assert x.shape == (3, 8, 8) and y in (0, 1)

    _make_folder(tmp_path / "split" / "train", n=6)
    _make_folder(tmp_path / "split" / "test", n=2)
    d = build_data(DataConfig(name="image_folder", root=str(tmp_path / "split"), image_size=8,
                              val_fraction=0.5))
    assert (len(d.train), len(d.val), len(d.test)) == (6, 6, 4)


def test_image_folder_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_data(DataConfig(name="image_folder", root=str(tmp_path / "nope")))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        build_data(DataConfig(name="image_folder", root=str(tmp_path / "file.txt")))
    _make_folder(tmp_path / "e", n=3)
    (tmp_path / "e" / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class.*contains no images"):
        build_data(DataConfig(name="image_folder", root=str(tmp_path / "e")))
    (tmp_path / "noclass").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        build_data(DataConfig(name="image_folder", root=str(tmp_path / "noclass")))
    with pytest.raises(DataError, match="data.root"):
        build_data(DataConfig(name="image_folder"))
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        build_data(DataConfig(name="mnist"))


def test_corrupt_image_names_the_file(tmp_path):
    _make_folder(tmp_path / "c", n=4)
    (tmp_path / "c" / "cat" / "0.png").write_bytes(b"not a png")
    d = build_data(DataConfig(name="image_folder", root=str(tmp_path / "c"), image_size=8,
                              val_fraction=0.0, test_fraction=0.0))
    with pytest.raises(DataError, match=r"cannot read image .*0\.png"):
        for i in range(len(d.train)):
            d.train[i]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads everything")
def test_unreadable_folder(tmp_path):
    _make_folder(tmp_path / "u", n=2)
    os.chmod(tmp_path / "u", 0)
    try:
        with pytest.raises(DataError, match="not readable"):
            build_data(DataConfig(name="image_folder", root=str(tmp_path / "u")))
    finally:
        os.chmod(tmp_path / "u", 0o755)


def test_unreadable_folder_via_access_check(tmp_path, monkeypatch):
    """As root nothing is unreadable; check the access test itself is consulted."""
    _make_folder(tmp_path / "u", n=2)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("/u") else real(p, m))
    with pytest.raises(DataError, match="not readable"):
        build_data(DataConfig(name="image_folder", root=str(tmp_path / "u")))


def test_samples_are_dicts_and_pairs_become_samples():
    from torch.utils.data import DataLoader

    from zootune.data.base import TransformedDataset
    from zootune.data.sample import as_sample, collate_samples

    x = torch.zeros(1, 2, 2)
    assert as_sample((x, 3)) == {"image": x, "label": 3}
    d = {"image": x, "keypoints": torch.ones(2)}
    assert as_sample(d) == d and as_sample(d) is not d
    with pytest.raises(TypeError, match="dict of fields or an \\(input, target\\) pair"):
        as_sample(x)
    # any (x, y) data set plugs in; a transform of the input alone leaves the label alone
    pairs = [(torch.full((1, 2, 2), float(i)), i) for i in range(4)]
    ds = TransformedDataset(pairs, indices=[1, 3], transform=lambda im: im + 10)
    assert len(ds) == 2
    s = ds[1]
    assert s["label"] == 3 and torch.equal(s["image"], torch.full((1, 2, 2), 13.0))
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_samples)))
    assert batch["image"].shape == (2, 1, 2, 2) and batch["label"].tolist() == [1, 3]
    assert collate_samples(pairs[:2])["label"].tolist() == [0, 1]
