"""Domain similarity: Earth Mover's Distance between source and target features.

Cui, Song, Sun, Howard & Belongie, "Large Scale Fine-Grained Categorization and Domain-Specific
Transfer Learning", CVPR 2018 (§4.1). Each domain is a set of points (the per-class mean
features, weighted by the fraction of images in the class; or, without labels, the samples
themselves with equal weights). With ``d`` the optimal-transport (EMD) cost between the two
weighted point sets under the Euclidean ground distance,

    domain similarity = exp(-gamma * d),       gamma = 0.01 in the paper.

Larger is better. The EMD is solved exactly with POT (``ot.emd2``). Both feature sets must
come from the same model; needs samples of the *source* data. ``gamma`` depends on the scale
of the features; rankings over models with very different feature norms are only
comparable when the features are normalised (``normalize=True`` divides every point by the
mean feature norm over both domains).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._inputs import ArrayLike, ScoreInputError, as_matrix, label_codes


def domain_similarity(
    source_features: ArrayLike,
    target_features: ArrayLike,
    *,
    source_labels: ArrayLike | None = None,
    target_labels: ArrayLike | None = None,
    gamma: float = 0.01,
    min_class_size: int = 1,
    max_points: int = 2000,
    normalize: bool = False,
    seed: int = 0,
    return_distance: bool = False,
) -> float:
    """``exp(-gamma * EMD(source, target))`` (or the EMD itself with ``return_distance=True``).

    Args:
        source_features: ``(Ns, D)`` features of source-domain samples.
        target_features: ``(Nt, D)`` features of target samples, from the same model.
        source_labels, target_labels: optional labels; when given, each domain is represented
            by its class means weighted by class frequency (the paper's form), skipping classes
            with fewer than ``min_class_size`` samples.
        gamma: the temperature of the exponential.
        max_points: unlabeled domains larger than this are subsampled (EMD is O(n^3)).
        normalize: divide all features by their mean norm first.
        seed: seed of the subsample.
    """
    import ot

    s = as_matrix(source_features, "source_features")
    t = as_matrix(target_features, "target_features", device=s.device)
    if s.shape[1] != t.shape[1]:
        raise ScoreInputError(
            f"source and target features have different dimensions ({s.shape[1]} vs {t.shape[1]}); "
            "use features of the same model"
        )
    if normalize:
        scale = torch.cat([s, t]).norm(dim=1).mean().clamp_min(torch.finfo(s.dtype).tiny)
        s, t = s / scale, t / scale
    rng = np.random.default_rng(seed)
    xs, ws = _points(s, source_labels, "source_labels", min_class_size, max_points, rng)
    xt, wt = _points(t, target_labels, "target_labels", min_class_size, max_points, rng)
    cost = ot.dist(xs, xt, metric="euclidean")
    d = float(ot.emd2(ws, wt, cost, numItermax=1_000_000))
    return d if return_distance else math.exp(-gamma * d)


def _points(
    f: torch.Tensor, labels: ArrayLike | None, name: str, min_size: int, max_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    x = f.cpu().numpy()
    if labels is None:
        if len(x) > max_points:
            x = x[np.sort(rng.choice(len(x), max_points, replace=False))]
        return x, np.full(len(x), 1.0 / len(x))
    codes, c = label_codes(labels, len(x), name, min_classes=1)
    counts = np.bincount(codes, minlength=c)
    keep = counts >= min_size
    if not keep.any():
        raise ScoreInputError(f"no class in {name} has at least {min_size} samples")
    sums = np.zeros((c, x.shape[1]))
    np.add.at(sums, codes, x)
    means = sums[keep] / counts[keep, None]
    w = counts[keep].astype(np.float64)
    return means, w / w.sum()
