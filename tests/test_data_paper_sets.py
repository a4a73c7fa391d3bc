"""The paper's torchvision targets read offline from tiny fake data sets in the exact on-disk
layout each torchvision class expects: official test, val carved from train (stratified,
``data.seed``), ``labels_per_class``; one-line errors; never a download."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from zootune.config import DataConfig, load_config
from zootune.data import DataError, build_data, dataset_names


def _png(path, rng, size=(20, 24)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, format="JPEG")


# ---- fake data sets in torchvision's layouts ---------------------------------------------------

def make_cifar100(root, n_classes=4, per_class_train=10, per_class_test=3):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, k in (("train", per_class_train), ("test", per_class_test)):
        labels = [c for c in range(n_classes) for _ in range(k)]
        data = rng.integers(0, 255, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        # images carry their label in the green value of pixel (0, 0) (CHW rows: offset 1024),
        # so the test checks both the image-label pairing and the CHW -> HWC transpose
        data[:, 1024] = np.asarray(labels, dtype=np.uint8) * 50
        entry = {"filenames": [f"{i}.png" for i in range(len(labels))], "batch_label": split,
                 "fine_labels": labels, "coarse_labels": [0] * len(labels), "data": data}
        (folder / split).write_bytes(pickle.dumps(entry))
    meta = {"fine_label_names": [f"class{c}" for c in range(n_classes)], "coarse_label_names": ["all"]}
    (folder / "meta").write_bytes(pickle.dumps(meta))


def make_aircraft(root, variants=("707-320", "A320", "Cessna 172"), per_split=(4, 2, 3)):
    data = root / "fgvc-aircraft-2013b" / "data"
    rng = np.random.default_rng(1)
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = {"train": [], "val": [], "test": []}
    i = 1000000
    for v in variants:
        for split, k in zip(("train", "val", "test"), per_split):
            for _ in range(k):
                i += 1
                _png(data / "images" / f"{i}.jpg", rng)
                lines[split].append(f"{i} {v}")  # variant names contain spaces: split once
    lines["trainval"] = lines["train"] + lines["val"]
    for split, ls in lines.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(ls) + "\n")


def make_stanford_cars(root, classes=("AM General Hummer SUV 2000", "Acura RL Sedan 2012"),
                       per_class=(6, 2)):
    from scipy.io import savemat

    base = root / "stanford_cars"
    rng = np.random.default_rng(2)
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat",
            {"class_names": np.array(list(classes), dtype=object).reshape(1, -1)})
    dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"),
          ("fname", "O")]
    for split, k, ann in (("train", per_class[0], base / "devkit" / "cars_train_annos.mat"),
                          ("test", per_class[1], base / "cars_test_annos_withlabels.mat")):
        recs = []
        for c in range(len(classes)):
            for j in range(k):
                fname = f"{c:02d}{j:03d}.jpg"
                _png(base / f"cars_{split}" / fname, rng)
                recs.append((1, 1, 10, 10, c + 1, fname))  # 1-based classes, as the devkit
        arr = np.array(recs, dtype=dt).reshape(1, -1)
        savemat(ann, {"annotations": arr})


def make_eurosat(root, classes=("AnnualCrop", "Forest", "River"), per_class=10):
    rng = np.random.default_rng(3)
    for c in classes:
        for j in range(per_class):
            _png(root / "eurosat" / "2750" / c / f"{c}_{j + 1}.jpg", rng, size=(16, 16))


def _cfg(name, root, **kw):
    kw.setdefault("image_size", 8)
    return DataConfig(name=name, root=str(root), **kw)


def _no_network(monkeypatch):
    import torchvision.datasets.utils as u

    def boom(*a, **k):
        raise AssertionError("an adapter tried to download")

    for fn in ("download_url", "download_and_extract_archive", "download_file_from_google_drive"):
        monkeypatch.setattr(u, fn, boom)


# ---- the tests --------------------------------------------------------------------------------

def test_names_are_registered():
    assert {"cifar100", "aircraft", "stanford_cars", "eurosat"} <= set(dataset_names())


def test_cifar100_official_test_val_carved_from_train_and_label_pairing(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    make_cifar100(tmp_path)
    d = build_data(_cfg("cifar100", tmp_path, val_fraction=0.2, seed=5, augment=False))
    assert d.classes == [f"class{c}" for c in range(4)]
    assert (len(d.train), len(d.val), len(d.test)) == (32, 8, 12)
    # val comes out of train (same pool, disjoint indices, 2 per class); test is the test file
    assert d.val.base is d.train.base and d.test.base is not d.train.base
    assert not set(d.train.indices.tolist()) & set(d.val.indices.tolist())
    assert np.array_equal(np.bincount(d.val.targets), [2, 2, 2, 2])
    assert np.array_equal(np.bincount(d.test.targets), [3, 3, 3, 3])
    # the green value of pixel (0, 0) encodes the label: paired, and HWC order right
    for i in (0, 17, 39):
        img, y = d.train.base[i]
        assert np.asarray(img)[0, 0, 1] == 50 * y
    s = d.test[0]
    assert s["image"].shape == (3, 8, 8) and s["image"].dtype == torch.float32
    # the split follows data.seed
    other = build_data(_cfg("cifar100", tmp_path, val_fraction=0.2, seed=6))
    assert not np.array_equal(other.val.indices, d.val.indices)
    assert np.array_equal(build_data(_cfg("cifar100", tmp_path, val_fraction=0.2, seed=5)).val.indices,
                          d.val.indices)


def test_cifar100_labels_per_class_and_md5_option(tmp_path):
    make_cifar100(tmp_path)
    d = build_data(_cfg("cifar100", tmp_path, val_fraction=0.2, labels_per_class=3))
    assert np.array_equal(np.bincount(d.train.targets), [3, 3, 3, 3]) and len(d.val) == 8
    with pytest.raises(DataError, match="MD5"):  # our fakes are not the published files
        build_data(_cfg("cifar100", tmp_path, options={"verify_md5": True}))


def test_aircraft_trainval_pool_or_official_val(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    make_aircraft(tmp_path)
    d = build_data(_cfg("aircraft", tmp_path, val_fraction=1 / 3, seed=0))
    assert d.classes == ["707-320", "A320", "Cessna 172"]
    # trainval = 6 per class; val carved 2 per class; test = the official 3 per class
    assert (len(d.train), len(d.val), len(d.test)) == (12, 6, 9)
    assert np.array_equal(np.bincount(d.test.targets), [3, 3, 3])
    off = build_data(_cfg("aircraft", tmp_path, options={"official_val": True}))
    assert (len(off.train), len(off.val), len(off.test)) == (12, 6, 9)
    assert off.val.base is not off.train.base  # the official val file
    s = off.train[(0, 7)]
    assert s["image"].shape == (3, 8, 8) and s["label"] in (0, 1, 2)
    fam = tmp_path / "fgvc-aircraft-2013b" / "data"
    with pytest.raises(DataError, match="annotation_level"):
        build_data(_cfg("aircraft", tmp_path, options={"annotation_level": "wing"}))
    (fam / "images_variant_test.txt").unlink()
    with pytest.raises(DataError, match="aircraft|FGVCAircraft|malformed"):
        build_data(_cfg("aircraft", tmp_path))


def test_stanford_cars_mat_annotations(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    make_stanford_cars(tmp_path)
    d = build_data(_cfg("stanford_cars", tmp_path, val_fraction=0.5, labels_per_class=2, seed=1))
    assert d.classes == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    assert len(d.val) == 6 and len(d.test) == 4  # half of 6 train per class; 2 test per class
    assert np.array_equal(np.bincount(d.train.targets), [2, 2])  # 1-based classes -> 0-based
    assert np.array_equal(np.bincount(d.test.targets), [2, 2])
    x = d.val[0]["image"]
    assert x.shape == (3, 8, 8)


def test_eurosat_has_no_official_split_so_test_and_val_are_carved(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    make_eurosat(tmp_path)
    d = build_data(_cfg("eurosat", tmp_path, val_fraction=0.2, test_fraction=0.3, seed=2))
    assert d.classes == ["AnnualCrop", "Forest", "River"]
    assert (len(d.train), len(d.val), len(d.test)) == (15, 6, 9)
    parts = [set(s.indices.tolist()) for s in (d.train, d.val, d.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert np.array_equal(np.bincount(d.test.targets), [3, 3, 3])
    grey = build_data(_cfg("eurosat", tmp_path, channels=1))
    assert grey.train[(0, 1)]["image"].shape == (1, 8, 8)


@pytest.mark.parametrize("name", ["cifar100", "aircraft", "stanford_cars", "eurosat"])
def test_missing_files_are_one_error_line_and_no_download(tmp_path, monkeypatch, name):
    _no_network(monkeypatch)
    with pytest.raises(DataError) as e:
        build_data(_cfg(name, tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    with pytest.raises(DataError, match="data.root must name"):
        build_data(DataConfig(name=name))


@pytest.mark.parametrize("target", ["cifar100", "aircraft", "stanford_cars", "eurosat", "coco70",
                                    "indoors", "dmlab"])
def test_paper_configs_validate_with_the_paper_recipe(target):
    cfg = load_config(f"paper_{target}")
    assert cfg.zoo.spec == "paper-resnet50" and cfg.method.name == "zoo_tuning"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.01, 0.9)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.schedule.step_size) == (15000, 48, 6000)
    assert cfg.data.image_size == 224 and cfg.data.name in dataset_names()
