"""Label-Feature Correlation (LFC) and Label-Gradient Correlation (LGC).

Deshpande, Achille, Ravichandran, Li, Zancato, Fowlkes, Bhotika, Soatto & Perona, "A linearized
framework and a new benchmark for model selection for fine-tuning", 2021 (§3.2-3.3). Under a
linearisation of fine-tuning around the pretrained weights, training speed and a
generalisation bound both depend on ``Y . Theta`` (Eq. 7), the agreement between the label
similarity matrix ``Y`` (``Y_ij = +1`` if samples i and j share a label, ``-1`` otherwise) and
the kernel ``Theta`` of per-sample gradients (the NTK, Eq. 2) - or, for LFC, its feature
approximation ``Theta_F = F F^T`` (Eq. 6). Normalised (Eq. 8), the score is the Pearson
correlation between the N^2 entries of the two matrices:

    LGC / LFC = sum_ij (Theta_ij - mean Theta)(Y_ij - mean Y)
                / ( ||Theta - mean Theta||_F ||Y - mean Y||_F ).

Larger is better (in [-1, 1]).

O(N D^2) form (used when N > D, so no N x N matrix is built unless ``method="gram"``): all
needed sums come from D-dimensional quantities,
``sum Theta = ||F^T 1||^2``, ``sum Theta^2 = ||F^T F||_F^2``,
``sum Theta*Y = 2 sum_c ||F^T 1_c||^2 - sum Theta``, ``sum Y = 2 sum_c n_c^2 - N^2``,
``sum Y^2 = N^2``.

LGC uses per-sample gradients of the last convolution, randomly projected to
``projection_dim`` dimensions (§3.3) to keep the cost low; see
:mod:`zootune.select.features` for their extraction (which projects on the fly).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ._inputs import ArrayLike, ScoreInputError, as_matrix, label_codes, one_hot

Method = Literal["auto", "features", "gram"]


def lfc(features: ArrayLike, labels: ArrayLike, *, center: bool = False, method: Method = "auto") -> float:
    """Label-Feature Correlation: Pearson correlation of ``F F^T`` with the label matrix.

    Args:
        features: ``(N, D)`` penultimate features of the target samples.
        labels: ``(N,)`` target labels.
        center: subtract the feature mean before forming the Gram matrix (not in the paper;
            off by default).
        method: ``"features"`` (O(N D^2), no N x N matrix), ``"gram"`` (builds the N x N
            Gram matrix, O(N^2 D)), or ``"auto"`` (the cheaper: gram only when N <= D).
    """
    f = as_matrix(features, "features")
    codes, c = label_codes(labels, f.shape[0])
    if center:
        f = f - f.mean(0, keepdim=True)
    return _label_gram_correlation(f, codes, c, method)


def lgc(
    gradients: ArrayLike,
    labels: ArrayLike,
    *,
    projection_dim: int | None = None,
    seed: int = 0,
    center: bool = False,
    method: Method = "auto",
) -> float:
    """Label-Gradient Correlation: Pearson correlation of the gradient Gram matrix with labels.

    Args:
        gradients: ``(N, P)`` per-sample gradients (flattened), possibly already projected.
        labels: ``(N,)`` target labels.
        projection_dim: if given and smaller than ``P``, project the gradients with a seeded
            Gaussian random matrix to this many dimensions first (Johnson-Lindenstrauss: inner
            products, hence the Gram matrix, are preserved approximately). The matrix is made
            in column blocks, so ``P x projection_dim`` is never held at once.
        seed: seed of the random projection.
        center, method: as in :func:`lfc`.
    """
    g = as_matrix(gradients, "gradients")
    codes, c = label_codes(labels, g.shape[0])
    if projection_dim is not None:
        if projection_dim < 1:
            raise ScoreInputError(f"projection_dim must be >= 1, got {projection_dim}")
        if projection_dim < g.shape[1]:
            g = random_project(g, projection_dim, seed=seed)
    if center:
        g = g - g.mean(0, keepdim=True)
    return _label_gram_correlation(g, codes, c, method)


def random_project(x: torch.Tensor, dim: int, *, seed: int = 0, block: int = 65536) -> torch.Tensor:
    """``x @ R / sqrt(dim)`` with ``R`` i.i.d. standard normal ``(P, dim)``, made block by block."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = torch.zeros(x.shape[0], dim, dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[1], block):
        stop = min(start + block, x.shape[1])
        r = torch.randn(stop - start, dim, generator=gen, dtype=x.dtype).to(x.device)
        out += x[:, start:stop] @ r
    return out / dim**0.5


def _label_gram_correlation(f: torch.Tensor, codes: np.ndarray, c: int, method: Method) -> float:
    n, d = f.shape
    if method not in ("auto", "features", "gram"):
        raise ScoreInputError(f"method must be 'auto', 'features' or 'gram', got {method!r}")
    y = one_hot(codes, c, f.device)
    if method == "gram" or (method == "auto" and n <= d):
        k = f @ f.T
        lab = y @ y.T * 2 - 1
        k = k - k.mean()
        lab = lab - lab.mean()
        denom = torch.sqrt((k * k).sum() * (lab * lab).sum())
        if float(denom) == 0.0:
            raise ScoreInputError("the Gram matrix is constant; the correlation is undefined")
        return float((k * lab).sum() / denom)
    n2 = float(n) * n
    col = f.sum(0)
    sum_k = col @ col
    sum_k2 = ((f.T @ f) ** 2).sum()
    class_sums = y.T @ f  # (C, D)
    sum_ky = 2 * (class_sums**2).sum() - sum_k
    counts = y.sum(0)
    mean_y = float((2 * (counts**2).sum() - n2) / n2)
    mean_k = sum_k / n2
    cov = sum_ky / n2 - mean_k * mean_y
    var_k = sum_k2 / n2 - mean_k**2
    var_y = 1.0 - mean_y**2
    if float(var_k) <= 0.0:
        raise ScoreInputError("the Gram matrix is constant; the correlation is undefined")
    return float(cov / torch.sqrt(var_k * var_y))
