"""H-score and its shrinkage-regularised variant.

H-score (Bao, Li, Huang, Zheng & Zhang, "An Information-theoretic Approach to
Transferability in Task Transfer Learning", ICIP 2019, Def. 2):

    H(f) = tr( cov(f)^-1 cov(E[f | y]) ),

the between-class covariance of the features measured in units of their total covariance
(a multi-class Fisher / Rayleigh-quotient criterion; larger is better, at most C - 1). With
N < D ``cov(f)`` is singular and the pseudo-inverse is used, as in the authors' code - but then
any features in general position separate the classes perfectly and the score saturates at
C - 1 whatever the model: use the shrinkage form when N is not well above D.

Shrinkage H-score (Ibrahim, Ponomareva & Mazumder, "Newer is not always better: rethinking
transferability metrics, their peculiarities, stability and performance", ECML-PKDD 2022,
Eq. 5): the pseudo-inverse of a noisy high-dimensional covariance makes H-score unstable, so
``cov(f)`` is replaced by the Ledoit-Wolf estimate ``(1 - a) cov(f) + a (tr cov(f) / D) I``
with the shrinkage ``a`` chosen by scikit-learn's ``ledoit_wolf_shrinkage``:

    H_a(f) = tr( ((1 - a) cov(f) + a mu I)^-1 (1 - a) cov(E[f | y]) ).

Computation: with ``F`` centred and ``F = U S V^T``, both scores are sums over the nonzero
singular directions of per-class projections ``v_i^T mu_c`` (class means lie in the row
space of ``F``), so they cost one decomposition of the smaller Gram matrix: O(N D^2) or
O(N^2 D), never a D x D inverse.
"""

from __future__ import annotations

from ._inputs import ArrayLike, as_matrix, label_codes, one_hot, row_space


def hscore(features: ArrayLike, labels: ArrayLike, *, shrinkage: bool = False) -> float:
    """H-score (``shrinkage=False``) or the Ledoit-Wolf shrinkage H-score (``shrinkage=True``).

    Args:
        features: ``(N, D)`` features of the target samples.
        labels: ``(N,)`` target labels.
        shrinkage: use the regularised covariance of Ibrahim et al. (2022).
    """
    f = as_matrix(features, "features")
    n, d = f.shape
    codes, c = label_codes(labels, n)
    f = f - f.mean(0, keepdim=True)
    y = one_hot(codes, c, f.device)
    counts = y.sum(0)
    means = (y.T @ f) / counts[:, None]  # (C, D) centred class means
    s2, v = row_space(f)
    if s2.numel() == 0:
        return 0.0
    proj2 = (means @ v) ** 2  # (C, r)
    weight = counts / n
    if not shrinkage:
        # pinv(cov) = V diag(N / s2) V^T
        return float((weight[:, None] * proj2 * (n / s2)[None, :]).sum())
    from sklearn.covariance import ledoit_wolf_shrinkage

    a = float(ledoit_wolf_shrinkage(f.cpu().numpy(), assume_centered=True))
    mu = float(s2.sum()) / (n * d)  # tr(cov) / D
    denom = (1 - a) * s2 / n + a * mu
    return float(((1 - a) * weight[:, None] * proj2 / denom[None, :]).sum())
