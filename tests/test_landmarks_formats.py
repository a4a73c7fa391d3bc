"""Loaders of the real landmark formats, on tiny fake files written in the exact layouts:
300-W ``.pts`` beside images, WFLW annotation lists, COFW ``.mat``; malformed files give one
error naming the file and the line (or variable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zootune.config import DataConfig
from zootune.data import build_data
from zootune.data.landmarks import read_cofw, read_pts, read_wflw
from zootune.data.landmarks.formats import W300_SPLITS, LandmarkFormatError


def _pts_text(points: np.ndarray) -> str:
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    return f"version: 1\nn_points:  {len(points)}\n{{\n{body}\n}}\n"


def _face_points(rng: np.random.Generator, n: int, w: int, h: int) -> np.ndarray:
    return np.stack([rng.uniform(0.3 * w, 0.7 * w, n), rng.uniform(0.3 * h, 0.7 * h, n)], 1)


def test_read_pts_converts_one_based_coordinates(tmp_path):
    p = tmp_path / "a.pts"
    pts = np.array([[1.0, 1.0], [10.5, 20.25]] + [[5.0, 5.0]] * 66)
    p.write_text(_pts_text(pts))
    out = read_pts(p)
    assert out.shape == (68, 2) and np.allclose(out[:2], [[0.5, 0.5], [10.0, 19.75]])


@pytest.mark.parametrize("text,where", [
    ("version: 1\nn_points: 2\n{\n1 2\n3 x\n}\n", ":5:"),
    ("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n", "n_points is 3 but 2"),
    ("version: 1\nn_points: 2\n{\n1 2\n3 4\n", "missing closing"),
    ("hello\n", ":1:"),
])
def test_malformed_pts_names_the_file_and_line(tmp_path, text, where):
    p = tmp_path / "bad.pts"
    p.write_text(text)
    with pytest.raises(LandmarkFormatError, match="bad.pts") as e:
        read_pts(p)
    assert where in str(e.value) and "\n" not in str(e.value)


def test_300w_folders_build_train_val_test(tmp_path):
    rng = np.random.default_rng(0)
    for split, subs in (("train", W300_SPLITS["train"]), ("test", W300_SPLITS["test"])):
        for j, sub in enumerate(subs):
            d = tmp_path / sub
            d.mkdir(parents=True, exist_ok=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(d / f"img{k}.jpg")
                (d / f"img{k}.pts").write_text(_pts_text(_face_points(rng, 68, 40, 48) + 1))
    cfg = DataConfig(name="300w", root=str(tmp_path), image_size=32, val_fraction=0.34)
    data = build_data(cfg, None)
    assert (data.info["train"], data.info["val"], data.info["test"]) == (4, 2, 6)
    assert data.info["landmarks"]["norm_pair"] == [36, 45]
    s = data.test[0]
    assert s["image"].shape == (3, 32, 32) and s["keypoints"].shape == (68, 2)
    # the face's tight box, enlarged 1.25x, fills the crop: the points span about 1/1.25 of it
    span = (s["keypoints"].amax(0) - s["keypoints"].amin(0)).max()
    assert 32 / 1.25 - 1.5 < float(span) < 32 / 1.25 + 1.5
    data2 = build_data(DataConfig(name="300w", root=str(tmp_path), options={"test_split": "challenging"}), None)
    assert data2.info["test"] == 2


def _wflw_line(rng, img: str) -> str:
    pts = _face_points(rng, 98, 60, 50)
    box = [10, 8, 50, 44]
    attrs = [0, 1, 0, 0, 1, 0]
    return " ".join([f"{v:.4f}" for v in pts.ravel()] + [str(v) for v in box + attrs] + [img])


def test_wflw_lists_read_and_build(tmp_path):
    rng = np.random.default_rng(1)
    ann = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    ann.mkdir(parents=True)
    (tmp_path / "WFLW_images" / "0--Parade").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(
            tmp_path / "WFLW_images" / "0--Parade" / f"p{k}.jpg")
    (ann / "list_98pt_rect_attr_train.txt").write_text(
        "\n".join(_wflw_line(rng, f"0--Parade/p{k}.jpg") for k in range(3)) + "\n")
    (ann / "list_98pt_rect_attr_test.txt").write_text(_wflw_line(rng, "0--Parade/p0.jpg") + "\n")
    recs = read_wflw(ann / "list_98pt_rect_attr_train.txt")
    assert len(recs) == 3 and recs[0].keypoints.shape == (98, 2)
    assert recs[0].attributes["expression"] == 1 and recs[0].attributes["occlusion"] == 1
    assert np.allclose(recs[0].box, np.array([10, 8, 50, 44]) + 0.5)
    assert recs[0].image == tmp_path / "WFLW_images" / "0--Parade" / "p0.jpg"
    data = build_data(DataConfig(name="wflw", root=str(tmp_path), image_size=24, val_fraction=0.0), None)
    assert data.info["landmarks"]["norm_pair"] == [60, 72] and len(data.train) == 3 and len(data.test) == 1
    assert data.test[0]["keypoints"].shape == (98, 2)


def test_malformed_wflw_line_names_file_and_line(tmp_path):
    rng = np.random.default_rng(2)
    f = tmp_path / "list.txt"
    f.write_text(_wflw_line(rng, "a.jpg") + "\n" + "1 2 3 a.jpg\n")
    with pytest.raises(LandmarkFormatError, match=r"list.txt:2: expected 207 fields"):
        read_wflw(f)
    bad = _wflw_line(rng, "a.jpg").split()
    bad[5] = "oops"
    f.write_text(" ".join(bad) + "\n")
    with pytest.raises(LandmarkFormatError, match=r"list.txt:1: 'oops' is not a number"):
        read_wflw(f)


def _write_cofw(path: Path, split: str, n: int, rng) -> None:
    import scipy.io

    iv, pv, bv = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}[split]
    imgs = np.empty((n, 1), dtype=object)
    phis = np.zeros((n, 87))
    boxes = np.zeros((n, 4))
    for i in range(n):
        imgs[i, 0] = rng.integers(0, 255, (40, 36), dtype=np.uint8)  # grey, as COFW's
        pts = _face_points(rng, 29, 36, 40) + 1
        phis[i, :29], phis[i, 29:58], phis[i, 58:] = pts[:, 0], pts[:, 1], rng.integers(0, 2, 29)
        boxes[i] = [6, 5, 24, 28]
    scipy.io.savemat(str(path), {iv: imgs, pv: phis, bv: boxes})


def test_cofw_mat_files_read_and_build(tmp_path):
    rng = np.random.default_rng(3)
    _write_cofw(tmp_path / "COFW_train.mat", "train", 4, rng)
    _write_cofw(tmp_path / "COFW_test.mat", "test", 2, rng)
    recs = read_cofw(tmp_path / "COFW_train.mat")
    assert len(recs) == 4 and recs[0].keypoints.shape == (29, 2) and recs[0].image.shape == (40, 36)
    assert np.allclose(recs[0].box, [5, 4, 29, 32]) and len(recs[0].attributes["occluded"]) == 29
    data = build_data(DataConfig(name="cofw", root=str(tmp_path), image_size=32, val_fraction=0.25), None)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 2)
    assert data.info["landmarks"]["norm_pair"] == [8, 9]
    assert data.test[0]["image"].shape == (3, 32, 32)


def test_malformed_cofw_names_file_and_variable(tmp_path):
    import scipy.io

    f = tmp_path / "COFW_train.mat"
    scipy.io.savemat(str(f), {"IsTr": np.zeros((2, 1), dtype=object), "phisTr": np.zeros((2, 87))})
    with pytest.raises(LandmarkFormatError, match=r"COFW_train.mat: variable 'bboxesTr' is missing"):
        read_cofw(f, "train")
    g = tmp_path / "v73.mat"
    g.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64" + b"\0" * 200)
    with pytest.raises(LandmarkFormatError, match="v7.3"):
        read_cofw(g)


def test_missing_root_is_one_clear_error(tmp_path):
    from zootune.data import DataError

    with pytest.raises(DataError, match="needs data.root"):
        build_data(DataConfig(name="cofw"), None)
    with pytest.raises(DataError, match="300-W folder"):
        build_data(DataConfig(name="300w", root=str(tmp_path)), None)
