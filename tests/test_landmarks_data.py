"""Landmark data: flip index swaps per scheme, keypoint-aware augmentation that keeps every point
on its facial part, box cropping, and the procedural faces (deterministic, varied)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from zootune.config import DataConfig
from zootune.data import build_data
from zootune.data.landmarks import (
    SCHEMES,
    LandmarkAugment,
    ProceduralFaces,
    crop_by_box,
    flip_keypoints,
    flip_permutation,
)
from zootune.data.landmarks.schemes import SchemeError


def _markers(kp: torch.Tensor, size: int) -> torch.Tensor:
    """One channel per keypoint with a small Gaussian blob centred on it (edge convention)."""
    c = torch.arange(size, dtype=torch.float32) + 0.5
    gx = torch.exp(-(c[None, :] - kp[:, :1]) ** 2 / 2.0)
    gy = torch.exp(-(c[None, :] - kp[:, 1:]) ** 2 / 2.0)
    return gy[:, :, None] * gx[:, None, :]


def _centroids(maps: torch.Tensor) -> torch.Tensor:
    k, h, w = maps.shape
    c = torch.arange(w, dtype=torch.float32) + 0.5
    m = maps.clamp_min(0)
    tot = m.sum((1, 2))
    return torch.stack([(m.sum(1) * c).sum(1) / tot, (m.sum(2) * c).sum(1) / tot], 1)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_flip_permutation_is_an_involution_and_flip_twice_is_identity(name):
    s = SCHEMES[name]
    perm = s.flip_perm
    assert sorted(perm.tolist()) == list(range(s.num_points))
    assert np.array_equal(perm[perm], np.arange(s.num_points))
    assert perm[s.norm_pair[0]] == s.norm_pair[1]  # the outer eye corners mirror each other
    kp = torch.rand(s.num_points, 2) * 50
    img = torch.rand(3, 50, 50)
    twice = flip_keypoints(flip_keypoints(kp, 50, perm), 50, perm)
    assert torch.allclose(twice, kp, atol=1e-5) and torch.equal(F.horizontal_flip(F.horizontal_flip(img)), img)
    # mirrored pairs are on opposite sides for the same part
    for a, b in s.flip_pairs:
        assert s.parts[a] == s.parts[b]


def test_bad_flip_pairs_are_rejected():
    with pytest.raises(SchemeError, match="appears in two"):
        flip_permutation(5, [(0, 1), (1, 2)])
    with pytest.raises(SchemeError, match="invalid for 5"):
        flip_permutation(5, [(0, 7)])


def test_our_flip_matches_the_image_and_torchvisions_keypoint_flip_is_off_by_one():
    img = torch.zeros(1, 8, 10)
    img[0, 2, 1] = 1.0  # pixel (row 2, column 1): centre (1.5, 2.5)
    kp = torch.tensor([[1.5, 2.5]])
    flipped = F.horizontal_flip(img)
    row, col = flipped[0].nonzero()[0].tolist()
    ours = flip_keypoints(kp, 10, [0])
    assert ours.tolist() == [[col + 0.5, row + 0.5]]
    from torchvision import tv_tensors

    tv = F.horizontal_flip(tv_tensors.KeyPoints(kp, canvas_size=(8, 10)))
    assert float(tv[0, 0]) == col + 0.5 - 1  # why the flip is done here (transforms.py)


def test_procedural_faces_stay_left_and_right_after_a_flip():
    ds = ProceduralFaces(16, seed=3, size=64)
    aug = LandmarkAugment(SCHEMES["300w"].flip_perm)
    for i in range(len(ds)):
        s = ds[i]
        img, kp = aug.apply(s["image"], s["keypoints"], 0.0, 1.0, True)
        for before in (s["keypoints"], kp):
            # the subject's right eye / jaw start is on the image's left, before and after the flip
            assert before[36:42, 0].mean() < before[42:48, 0].mean()
            assert before[36, 0] < before[45, 0] and before[48, 0] < before[54, 0]


@pytest.mark.parametrize("angle,scale,flip", [(25.0, 1.0, False), (-30.0, 0.8, True), (10.0, 1.2, True),
                                              (0.0, 0.75, False)])
def test_rotation_and_scaling_keep_every_point_on_its_part(angle, scale, flip):
    """Points drawn onto a procedural face (one marker channel each) are found where the
    transformed keypoints say, with the scheme's index swap on a flip."""
    s = ProceduralFaces(1, seed=7, size=64)[0]
    kp = s["keypoints"]
    inside = ((kp > 4) & (kp < 60)).all(1)
    img = torch.cat([s["image"], _markers(kp, 64)])
    perm = SCHEMES["300w"].flip_perm
    out, kp2 = LandmarkAugment(perm).apply(img, kp, angle, scale, flip)
    found = _centroids(out[3:])
    expected = kp2[perm] if flip else kp2  # marker channel j belongs to point j
    err = (found - expected).norm(dim=1)[inside]
    assert float(err.max()) < 0.35
    assert torch.allclose(out[:3], LandmarkAugment(perm).apply(s["image"], kp, angle, scale, flip)[0])


def test_augmentation_draws_from_the_given_generator():
    s = ProceduralFaces(1, seed=0, size=32)[0]
    aug = LandmarkAugment(SCHEMES["300w"].flip_perm)
    a = aug(s, torch.Generator().manual_seed(5))
    b = aug(s, torch.Generator().manual_seed(5))
    c = aug(s, torch.Generator().manual_seed(6))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["keypoints"], b["keypoints"])
    assert not torch.equal(a["keypoints"], c["keypoints"])
    angles = [aug.draw(torch.Generator().manual_seed(i))[0] for i in range(200)]
    scales = [aug.draw(torch.Generator().manual_seed(i))[1] for i in range(200)]
    assert -30 <= min(angles) < -25 and 25 < max(angles) <= 30
    assert 0.75 <= min(scales) < 0.8 and 1.2 < max(scales) <= 1.25


def test_crop_by_box_maps_points_with_the_image():
    img = torch.zeros(3, 40, 60)
    kp = torch.tensor([[20.5, 10.5], [45.5, 30.5]])
    img = torch.cat([img, _markers(kp, 60)[:, :40, :]])
    out, kp2 = crop_by_box(img, kp, (15, 5, 50, 35), size=32)
    assert out.shape == (5, 32, 32)
    found = _centroids(out[3:])
    assert float((found - kp2).norm(dim=1).max()) < 0.3
    # a box near the border: the part outside the image is zero
    out, _ = crop_by_box(torch.ones(3, 40, 60), kp, (0, 0, 20, 20), size=16)
    assert out[:, 0, 0].abs().sum() == 0 and out[:, -1, -1].min() > 0.9


def test_procedural_faces_are_deterministic_and_varied():
    a, b = ProceduralFaces(6, seed=1, size=48), ProceduralFaces(6, seed=1, size=48)
    for i in range(6):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["keypoints"], b[i]["keypoints"])
    assert not torch.equal(a[0]["image"], ProceduralFaces(6, seed=2, size=48)[0]["image"])
    assert not torch.equal(a[0]["image"], ProceduralFaces(6, seed=1, size=48, split="test")[0]["image"])
    kps = torch.stack([ProceduralFaces(64, seed=0, size=64)[i]["keypoints"] for i in range(64)])
    io = (kps[:, 36] - kps[:, 45]).norm(dim=1)
    # faces vary in size, position and pose: landmark spread across faces is many eye distances
    centred = kps - kps.mean(1, keepdim=True)
    assert float(io.std() / io.mean()) > 0.1
    assert float((centred / io[:, None, None] - (centred / io[:, None, None]).mean(0)).norm(dim=-1).mean()) > 0.1
    x = torch.stack([ProceduralFaces(64, seed=0, size=64)[i]["image"] for i in range(64)])
    assert x.shape == (64, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_registered_procedural_splits_record_their_scheme():
    cfg = DataConfig(name="procedural_faces", image_size=32, options={"train": 8, "val": 4, "test": 4})
    data = build_data(cfg, {"input_size": (1, 16, 16), "mean": (0.5,), "std": (0.25,)})
    lm = data.info["landmarks"]
    assert lm["scheme"] == "300w" and lm["num_points"] == 68 and lm["norm_pair"] == [36, 45]
    s = data.val[0]
    assert s["image"].shape == (1, 32, 32) and s["keypoints"].shape == (68, 2)
    raw = ProceduralFaces(4, 0, 32, "val")[0]
    assert torch.allclose(s["image"], (raw["image"].mean(0, keepdim=True) - 0.5) / 0.25)
    t = data.train[(0, 123)]  # the trainer's (index, seed) keys: augmented, reproducibly
    assert torch.equal(t["keypoints"], data.train[(0, 123)]["keypoints"])
    from zootune.data import DataError

    with pytest.raises(DataError, match="unknown data.options"):
        build_data(DataConfig(name="procedural_faces", options={"trian": 3}))


def test_a_face_does_not_depend_on_what_else_is_rendered_or_cached():
    """Face i is a pure function of (seed, split, i): alone, in a batch, in another order, through
    a data set of another length or with no cache, it is the same image and the same points."""
    from zootune.data.landmarks.faces import (
        BLOCK,
        SPLIT_OFFSETS,
        render_face,
        render_faces,
    )

    ids = [3, BLOCK + 1, 5, 2 * BLOCK - 1]
    imgs, kps = render_faces(4, ids, 32)
    rev_imgs, rev_kps = render_faces(4, ids[::-1], 32)
    for j, i in enumerate(ids):
        im, kp = render_face(4, i, 32)
        assert np.array_equal(im, imgs[j]) and np.array_equal(kp, kps[j])
        assert np.array_equal(im, rev_imgs[len(ids) - 1 - j]) and np.array_equal(kp, rev_kps[len(ids) - 1 - j])
    short, long_ = ProceduralFaces(6, seed=4, size=32), ProceduralFaces(3 * BLOCK, seed=4, size=32, cache_mb=0)
    for i in (5, 3):
        a, b = short[i], long_[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["keypoints"], b["keypoints"])
        assert torch.equal(a["image"], torch.from_numpy(render_face(4, i, 32)[0]).float() / 255)
    val = ProceduralFaces(2, seed=4, size=32, split="val")[1]
    assert torch.equal(val["keypoints"], torch.from_numpy(render_face(4, SPLIT_OFFSETS["val"] + 1, 32)[1]))
    # the cache drops blocks beyond its budget and serves the same values afterwards
    ds = ProceduralFaces(3 * BLOCK, seed=4, size=32, cache_mb=0)
    first = ds[0]["image"].clone()
    ds[2 * BLOCK], ds[BLOCK]
    assert len(ds._cache) == 1 and torch.equal(ds[0]["image"], first)


def test_face_random_numbers_are_per_slot_hashes():
    from zootune.data.landmarks.faces import face_uniforms

    u = face_uniforms(7, np.arange(2000), slots=16)
    assert np.array_equal(face_uniforms(7, [1234], slots=16)[0], u[1234])
    assert np.array_equal(face_uniforms(7, [5], slots=4)[0], u[5, :4])  # slot k does not depend on the count
    assert not np.array_equal(face_uniforms(8, [5], slots=4), u[5:6, :4])
    assert 0 <= u.min() and u.max() < 1
    # roughly uniform and uncorrelated across faces and slots
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 12 ** -0.5) < 0.01
    c = np.corrcoef(u.T)
    assert np.abs(c - np.eye(16)).max() < 0.1
    hist = np.histogram(u, bins=10, range=(0, 1))[0] / u.size
    assert np.abs(hist - 0.1).max() < 0.01


def test_every_face_feature_is_drawn_where_its_landmarks_are():
    """The sclera is filled inside each eye polygon: with occlusion off, the pixel at the centre
    between an eye's upper and lower lid differs from the skin beside the eye (outside it)."""
    from zootune.data.landmarks.faces import render_faces

    imgs, kps = render_faces(11, np.arange(64), 128, occlusion=0.0)
    hits = total = 0
    for im, kp in zip(imgs.astype(np.float32), kps):
        for base in (36, 42):
            eye = kp[base:base + 6]
            h = min(np.linalg.norm(eye[1] - eye[5]), np.linalg.norm(eye[2] - eye[4]))
            if h < 3:  # a blink: nothing to see
                continue
            inside = (eye[1] + eye[5]) / 2
            below = eye[5] + (eye[5] - eye[1]) * 1.0  # as far below the lower lid as the eye is high
            a_px, b_px = im[:, int(inside[1]), int(inside[0])], im[:, int(below[1]), int(below[0])]
            total += 1
            hits += float(np.abs(a_px - b_px).sum()) > 30
    assert total > 40 and hits / total > 0.9
