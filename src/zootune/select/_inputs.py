"""Input checking shared by the transferability scores.

Every score accepts numpy arrays or torch tensors (CPU or GPU). Features are converted to a
float64 torch tensor on the device they came from (numpy -> CPU), because several scores
subtract large, nearly equal sums (Pearson correlations of Gram entries, evidence terms) and
lose digits in float32. Labels may be any hashable values (ints, strings); they are mapped to
codes ``0..C-1`` in sorted order, so a score never depends on how classes are named.

Bad input raises :class:`ScoreInputError` with one line that says what is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from zootune.errors import ZootuneError

ArrayLike = Any  # numpy.ndarray | torch.Tensor | nested sequences


class ScoreInputError(ZootuneError, ValueError):
    """Arrays passed to a transferability score are unusable (shape, NaN, one class...)."""


def to_tensor(x: ArrayLike, *, device: torch.device | None = None) -> torch.Tensor:
    """Return ``x`` as a float64 tensor (numpy -> CPU tensor; a tensor keeps its device)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        t = torch.as_tensor(np.asarray(x))
    if device is not None:
        t = t.to(device)
    return t.to(torch.float64)


def as_matrix(x: ArrayLike, name: str, *, device: torch.device | None = None) -> torch.Tensor:
    """Features as an ``(N, D)`` float64 tensor; extra trailing axes are flattened."""
    t = to_tensor(x, device=device)
    if t.ndim == 1:
        raise ScoreInputError(f"{name} must be 2-D (samples x dimensions), got shape {tuple(t.shape)}")
    if t.ndim > 2:
        t = t.reshape(t.shape[0], -1)
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ScoreInputError(f"{name} is empty (shape {tuple(t.shape)})")
    check_finite(t, name)
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        row = int(bad.reshape(t.shape[0], -1).any(dim=1).nonzero()[0, 0]) if t.ndim else 0
        raise ScoreInputError(f"{name} contain NaN or Inf (first in sample {row})")


def label_codes(labels: ArrayLike, n: int, name: str = "labels", *, min_classes: int = 2) -> tuple[np.ndarray, int]:
    """Map labels to integer codes ``0..C-1``; check the length and the number of classes."""
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
    if arr.ndim != 1:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        else:
            raise ScoreInputError(f"{name} must be 1-D (one label per sample), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ScoreInputError(f"{name} has {arr.shape[0]} entries but the features have {n} samples")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ScoreInputError(f"{name} contain NaN or Inf")
    uniq, codes = np.unique(arr, return_inverse=True)
    if len(uniq) < min_classes:
        raise ScoreInputError(
            f"{name} contain {len(uniq)} class(es); a transferability score needs at least {min_classes}"
        )
    return codes.astype(np.int64).reshape(-1), int(len(uniq))


def one_hot(codes: np.ndarray, num_classes: int, device: torch.device) -> torch.Tensor:
    """``(N, C)`` float64 one-hot matrix of integer codes."""
    idx = torch.as_tensor(codes, device=device)
    out = torch.zeros(len(codes), num_classes, dtype=torch.float64, device=device)
    out[torch.arange(len(codes), device=device), idx] = 1.0
    return out


def same_length(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ScoreInputError(f"{name_a} has {a.shape[0]} samples but {name_b} has {b.shape[0]}")


def row_space(f: torch.Tensor, *, rtol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonzero squared singular values ``s2`` (r,) and right singular vectors ``V`` (D, r) of ``f``.

    Uses the eigendecomposition of the smaller Gram matrix: ``F^T F`` (D x D, cost O(N D^2))
    when N >= D, else ``F F^T`` (N x N, cost O(N^2 D)) and ``V = F^T U / s``. Never builds both.
    Directions with ``s2 <= rtol * max(s2)`` are treated as zero (``rtol`` defaults to
    ``max(N, D) * eps``, numpy's rank tolerance for squared values).
    """
    n, d = f.shape
    if rtol is None:
        rtol = max(n, d) * torch.finfo(f.dtype).eps
    if n >= d:
        s2, v = torch.linalg.eigh(f.T @ f)
        keep = s2 > rtol * s2.max().clamp_min(0)
        return s2[keep], v[:, keep]
    s2, u = torch.linalg.eigh(f @ f.T)
    keep = s2 > rtol * s2.max().clamp_min(0)
    s2, u = s2[keep], u[:, keep]
    v = (f.T @ u) / s2.sqrt()
    return s2, v
