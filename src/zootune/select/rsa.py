"""RSA: representation similarity between a source model and a small probe trained on the target.

Dwivedi & Roig, "Representation Similarity Analysis for Efficient Task Taxonomy & Transfer
Learning", CVPR 2019; as used in the seed paper (appendix C, Eq. 9-11). For each set of
features build the representation dissimilarity matrix

    RDM_ij = 1 - pearson(f_i, f_j)                    (Eq. 9, 10)

and score the source model by the Spearman rank correlation of the upper triangles of its
RDM and the probe network's RDM (Eq. 11). Larger is better. A probe is a small network trained
on the target task (the paper trains a ResNet-18; :mod:`zootune.select.probe` offers a cheap
MLP). The RDM is inherently N x N, so at most ``max_samples`` samples are used (a seeded
random subset, stratified by label when labels are given).
"""

from __future__ import annotations

import numpy as np
import torch

from ._inputs import ArrayLike, ScoreInputError, as_matrix, label_codes, same_length


def rdm(features: torch.Tensor) -> torch.Tensor:
    """``1 - corr(f_i, f_j)`` for all pairs of rows; a constant row correlates 0 with every other."""
    f = features - features.mean(1, keepdim=True)
    norm = f.norm(dim=1, keepdim=True)
    f = torch.where(norm > 0, f / norm.clamp_min(torch.finfo(f.dtype).tiny), torch.zeros_like(f))
    return 1.0 - f @ f.T


def rsa(
    features: ArrayLike,
    probe_features: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    max_samples: int = 1000,
    seed: int = 0,
) -> float:
    """Spearman correlation between the RDMs of ``features`` and ``probe_features``.

    Args:
        features: ``(N, D)`` source-model features of the target samples.
        probe_features: ``(N, E)`` features of the same samples from the probe network.
        labels: optional ``(N,)`` labels, used only to stratify the subsample.
        max_samples: cap on the number of samples (the RDM has N^2 / 2 entries).
        seed: seed of the subsample.
    """
    from scipy.stats import spearmanr

    f = as_matrix(features, "features")
    p = as_matrix(probe_features, "probe_features", device=f.device)
    same_length(f, p, "features", "probe_features")
    n = f.shape[0]
    if n < 3:
        raise ScoreInputError(f"RSA needs at least 3 samples, got {n}")
    if n > max_samples:
        rng = np.random.default_rng(seed)
        if labels is not None:
            codes, _ = label_codes(labels, n)
            idx = _stratified(codes, max_samples, rng)
        else:
            idx = np.sort(rng.choice(n, max_samples, replace=False))
        sel = torch.as_tensor(idx, device=f.device)
        f, p = f[sel], p[sel]
    iu = torch.triu_indices(f.shape[0], f.shape[0], offset=1, device=f.device)
    a = rdm(f)[iu[0], iu[1]].cpu().numpy()
    b = rdm(p)[iu[0], iu[1]].cpu().numpy()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise ScoreInputError("a dissimilarity matrix is constant; RSA is undefined")
    return float(spearmanr(a, b).statistic)


def _stratified(codes: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` indices with every class represented in proportion to its size."""
    frac = np.empty(len(codes))
    for k in np.unique(codes):
        members = np.flatnonzero(codes == k)
        frac[rng.permutation(members)] = np.arange(len(members)) / len(members)
    pick = np.lexsort((rng.random(len(codes)), frac))[:total]
    return np.sort(pick)
