"""Readers of the real landmark annotation formats: 300-W ``.pts``, WFLW lists, COFW ``.mat``.

Every reader returns coordinates in the pixel-edge convention of :mod:`.transforms` (pixel ``j``
spans ``[j, j+1)``) and reports a malformed file as one :class:`LandmarkFormatError` line that
names the file and the line (or the variable) at fault.

* **300-W** (Sagonas et al. 2013): one ``NAME.pts`` beside every image ``NAME.jpg|png``::

      version: 1
      n_points:  68
      {
      x y        <- 68 lines, Matlab 1-based pixel coordinates (first pixel's centre at 1.0)
      }

  so ``x_edge = x - 0.5``. The face box is the tight box of the 68 points (300-W's
  ``bb_ground_truth``).
* **WFLW** (Wu et al. 2018): ``list_98pt_rect_attr_{train,test}.txt``, one face per line: 196
  numbers (``x0 y0 ... x97 y97``), the face rectangle ``x_min y_min x_max y_max``, six 0/1
  attributes (pose, expression, illumination, make-up, occlusion, blur) and the image path
  relative to ``WFLW_images/``. Coordinates are read as 0-based pixel indices
  (``x_edge = x + 0.5``); one image may hold several faces (several lines).
* **COFW** (Burgos-Artizzu et al. 2013): ``COFW_train.mat`` (``IsTr``, ``phisTr``,
  ``bboxesTr``) and ``COFW_test.mat`` (``IsT``, ``phisT``, ``bboxesT``), MATLAB v5 files read
  with ``scipy.io.loadmat``: a cell array of grey or colour images, an ``N x 87`` matrix (29 x,
  29 y, 29 occlusion flags; 1-based coordinates) and ``N x 4`` boxes ``x y w h``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zootune.data.base import DataError

WFLW_POINTS = 98
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "make-up", "occlusion", "blur")
COFW_POINTS = 29


class LandmarkFormatError(DataError):
    """An annotation file is malformed: the message names the file and the line."""


@dataclass
class FaceRecord:
    """One annotated face: where its image is (a path, or the pixels themselves), its
    ``(K, 2)`` keypoints and its face box ``(x1, y1, x2, y2)``, both in edge coordinates."""

    image: Any
    keypoints: np.ndarray
    box: np.ndarray
    attributes: dict[str, Any] = field(default_factory=dict)


def tight_box(points: np.ndarray) -> np.ndarray:
    """``(x1, y1, x2, y2)`` of the smallest box holding ``points``."""
    return np.concatenate([points.min(0), points.max(0)]).astype(np.float32)


# ---- 300-W ----------------------------------------------------------------------------------


def read_pts(path: str | Path) -> np.ndarray:
    """The ``(n_points, 2)`` points of a 300-W ``.pts`` file, in edge coordinates."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise LandmarkFormatError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise LandmarkFormatError(f"{path}: not a text file") from None
    rows = [(i + 1, ln.strip()) for i, ln in enumerate(lines) if ln.strip()]
    n = None
    start = None
    for k, (lineno, text) in enumerate(rows):
        if text.lower().startswith("n_points"):
            try:
                n = int(text.split(":", 1)[1])
            except (IndexError, ValueError):
                raise LandmarkFormatError(f"{path}:{lineno}: bad n_points line {text!r}") from None
        elif text == "{":
            start = k + 1
            break
        elif not text.lower().startswith("version"):
            raise LandmarkFormatError(f"{path}:{lineno}: expected 'version', 'n_points' or '{{', "
                                      f"got {text[:40]!r}")
    if n is None or start is None:
        raise LandmarkFormatError(f"{path}: no 'n_points' header and '{{' line (not a .pts file)")
    pts = []
    for lineno, text in rows[start:]:
        if text == "}":
            break
        parts = text.split()
        try:
            if len(parts) != 2:
                raise ValueError
            pts.append((float(parts[0]), float(parts[1])))
        except ValueError:
            raise LandmarkFormatError(f"{path}:{lineno}: expected two numbers 'x y', got {text[:40]!r}") from None
    else:
        raise LandmarkFormatError(f"{path}: missing closing '}}'")
    if len(pts) != n:
        raise LandmarkFormatError(f"{path}: n_points is {n} but {len(pts)} points are listed")
    return np.asarray(pts, dtype=np.float32) - 0.5


#: the 300-W splits of Ren et al. (2016) that the paper follows: 3,148 training images
#: (LFPW train 811 + HELEN train 2,000 + AFW 337) and the 689-image full test set
#: (common: LFPW test 224 + HELEN test 330; challenging: iBUG 135)
W300_SPLITS = {
    "train": ("lfpw/trainset", "helen/trainset", "afw"),
    "test": ("lfpw/testset", "helen/testset", "ibug"),
    "common": ("lfpw/testset", "helen/testset"),
    "challenging": ("ibug",),
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def read_300w(root: str | Path, split: str = "train") -> list[FaceRecord]:
    """Every face of a 300-W split under ``root`` (the folders of :data:`W300_SPLITS`, each with
    images and their ``.pts`` files), in sorted path order."""
    root = Path(root)
    if split not in W300_SPLITS:
        raise DataError(f"300-W split must be one of {sorted(W300_SPLITS)}, got {split!r}")
    records = []
    for sub in W300_SPLITS[split]:
        folder = root / sub
        if not folder.is_dir():
            raise DataError(f"300-W folder {str(folder)!r} does not exist (expected {root}/"
                            f"{{{', '.join(W300_SPLITS[split])}}})")
        for pts in sorted(folder.rglob("*.pts")):
            image = next((pts.with_suffix(s) for s in _IMAGE_SUFFIXES if pts.with_suffix(s).is_file()), None)
            if image is None:
                raise DataError(f"{pts}: no image beside it ({'/'.join(_IMAGE_SUFFIXES)})")
            kp = read_pts(pts)
            records.append(FaceRecord(image, kp, tight_box(kp), {"subset": sub}))
    if not records:
        raise DataError(f"no .pts files found for the 300-W {split} split under {root}")
    return records


# ---- WFLW -----------------------------------------------------------------------------------


def read_wflw(list_file: str | Path, image_root: str | Path | None = None) -> list[FaceRecord]:
    """The faces of a WFLW annotation list (``list_98pt_rect_attr_*.txt``); image paths are
    resolved against ``image_root`` (default: ``WFLW_images`` beside the list's folders)."""
    list_file = Path(list_file)
    if image_root is None:
        image_root = list_file.parent
        for cand in (list_file.parent, *list_file.parents):
            if (cand / "WFLW_images").is_dir():
                image_root = cand / "WFLW_images"
                break
    try:
        lines = list_file.read_text().splitlines()
    except OSError as exc:
        raise LandmarkFormatError(f"{list_file}: cannot read ({exc.strerror})") from None
    want = 2 * WFLW_POINTS + 4 + len(WFLW_ATTRIBUTES) + 1
    records = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != want:
            raise LandmarkFormatError(f"{list_file}:{lineno}: expected {want} fields (196 coordinates, "
                                      f"4 box, 6 attributes, image path), got {len(parts)}")
        try:
            nums = np.asarray([float(v) for v in parts[:-1]], dtype=np.float32)
        except ValueError:
            bad = next(v for v in parts[:-1] if not _is_number(v))
            raise LandmarkFormatError(f"{list_file}:{lineno}: {bad!r} is not a number") from None
        kp = nums[:2 * WFLW_POINTS].reshape(WFLW_POINTS, 2) + 0.5
        box = nums[2 * WFLW_POINTS:2 * WFLW_POINTS + 4] + np.float32(0.5)
        attrs = {k: int(v) for k, v in zip(WFLW_ATTRIBUTES, nums[2 * WFLW_POINTS + 4:])}
        records.append(FaceRecord(Path(image_root) / parts[-1], kp, box, attrs))
    if not records:
        raise LandmarkFormatError(f"{list_file}: no annotation lines")
    return records


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


# ---- COFW -----------------------------------------------------------------------------------


def read_cofw(mat_file: str | Path, split: str | None = None) -> list[FaceRecord]:
    """The faces of a COFW ``.mat`` file (``split``: ``train`` / ``test``; default: whichever
    variables the file holds). Images are kept in memory (uint8, grey or RGB)."""
    import scipy.io

    mat_file = Path(mat_file)
    names = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}
    try:
        head = mat_file.open("rb").read(128)
    except OSError as exc:
        raise LandmarkFormatError(f"{mat_file}: cannot read ({exc.strerror})") from None
    if b"MATLAB 7.3" in head:
        raise LandmarkFormatError(f"{mat_file}: a MATLAB v7.3 (HDF5) file; scipy reads v5 files: "
                                  "re-save it with MATLAB/Octave `save -v7`")
    try:
        mat = scipy.io.loadmat(str(mat_file))
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for corrupt files
        raise LandmarkFormatError(f"{mat_file}: not a readable MATLAB file ({exc})") from None
    if split is None:
        split = next((s for s, v in names.items() if v[0] in mat), None)
        if split is None:
            raise LandmarkFormatError(f"{mat_file}: holds neither IsTr/phisTr/bboxesTr nor IsT/phisT/bboxesT")
    ivar, pvar, bvar = names[split]
    for v in (ivar, pvar, bvar):
        if v not in mat:
            raise LandmarkFormatError(f"{mat_file}: variable {v!r} is missing (COFW {split} file)")
    images = np.asarray(mat[ivar]).reshape(-1)
    phis = np.asarray(mat[pvar], dtype=np.float64)
    boxes = np.asarray(mat[bvar], dtype=np.float64)
    if phis.ndim != 2 or phis.shape[1] not in (2 * COFW_POINTS, 3 * COFW_POINTS):
        raise LandmarkFormatError(f"{mat_file}: {pvar} has shape {phis.shape}, expected (N, 87)")
    if boxes.shape != (len(phis), 4) or len(images) != len(phis):
        raise LandmarkFormatError(f"{mat_file}: {ivar} has {len(images)} images, {pvar} {len(phis)} "
                                  f"rows and {bvar} shape {boxes.shape}: they must agree (N, N, (N, 4))")
    records = []
    for i in range(len(phis)):
        img = np.asarray(images[i])
        if img.ndim not in (2, 3):
            raise LandmarkFormatError(f"{mat_file}: {ivar}[{i}] is not an image (shape {img.shape})")
        kp = np.stack([phis[i, :COFW_POINTS], phis[i, COFW_POINTS:2 * COFW_POINTS]], 1) - 0.5
        occluded = (phis[i, 2 * COFW_POINTS:] > 0).tolist() if phis.shape[1] == 3 * COFW_POINTS else None
        x, y, w, h = boxes[i]
        box = np.array([x - 1, y - 1, x - 1 + w, y - 1 + h], dtype=np.float32)
        records.append(FaceRecord(img.astype(np.uint8), kp.astype(np.float32), box,
                                  {"occluded": occluded}))
    return records
