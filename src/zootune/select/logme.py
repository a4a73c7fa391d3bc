"""LogME: the log marginal evidence of a Bayesian linear model on frozen features.

You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021. For each target column ``y`` (one-hot class indicator, or a regression
target), model ``y = F w + noise`` with prior ``w ~ N(0, alpha^-1 I)`` and noise precision
``beta``. The evidence (their Eq. 2)

    log p(y | F, alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2 pi
                                - beta/2 ||F m - y||^2 - alpha/2 ||m||^2 - 1/2 log |A|,
    A = alpha I + beta F^T F,   m = beta A^-1 F^T y,

is maximised over ``alpha, beta`` by MacKay's fixed-point iteration (their Algorithm 1)

    gamma = sum_i beta s_i / (alpha + beta s_i),
    alpha <- gamma / ||m||^2,    beta <- (N - gamma) / ||F m - y||^2,

where ``s_i`` are the eigenvalues of ``F^T F``. LogME is the maximised evidence divided by
``N``, averaged over the target columns.

Implementation (why it is fast): with ``F = U S V^T`` (r = rank nonzero singular values)
and ``z = U^T y``, every quantity of the iteration is a sum over ``r`` scalars:
``||m||^2 = sum (beta s_i^1/2 z_i / t_i)^2``, ``||F m - y||^2 = sum (alpha z_i / t_i)^2 +
(||y||^2 - ||z||^2)``, ``log |A| = sum log t_i + (D - r) log alpha`` with
``t_i = alpha + beta s_i``. So one decomposition of the smaller Gram matrix (O(N D^2) or
O(N^2 D)) serves all classes at once, and the iteration runs on vectors of length ``r`` for
all C columns simultaneously. The result equals the textbook algorithm (see
``logme_reference``) to numerical precision, including the N < D case.

LogME is invariant to relabelling the classes, to rotating the features, and to scaling all
features by one constant (``alpha`` absorbs the scale); larger is better.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._inputs import ArrayLike, ScoreInputError, as_matrix, check_finite, label_codes, one_hot, to_tensor


def logme(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    regression: bool = False,
    max_iter: int = 1000,
    tol: float = 1e-8,
) -> float:
    """LogME score (mean log evidence per sample; larger is better).

    Args:
        features: ``(N, D)`` features of the target samples.
        labels: ``(N,)`` class labels, or with ``regression=True`` ``(N,)`` / ``(N, K)``
            continuous targets (each column scored separately, then averaged).
        regression: treat ``labels`` as continuous targets instead of classes.
        max_iter, tol: fixed-point iteration stops when ``alpha`` and ``beta`` change by less
            than ``tol`` (relative) or after ``max_iter`` steps.
    """
    f = as_matrix(features, "features")
    n, d = f.shape
    if regression:
        y = to_tensor(labels, device=f.device)
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[0] != n:
            raise ScoreInputError(f"targets must have shape ({n},) or ({n}, K), got {tuple(y.shape)}")
        check_finite(y, "targets")
    else:
        codes, c = label_codes(labels, n)
        y = one_hot(codes, c, f.device)
    s2, z = _spectrum(f, y)
    evidence = _fixed_point(s2, z, (y * y).sum(0), n, d, max_iter=max_iter, tol=tol)
    return float(evidence.mean())


def _spectrum(f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonzero eigenvalues ``s2`` (r,) of ``F^T F`` and ``z = U^T Y`` (r, C)."""
    n, d = f.shape
    if n >= d:
        s2, v = torch.linalg.eigh(f.T @ f)
        keep = s2 > max(n, d) * torch.finfo(f.dtype).eps * s2.max().clamp_min(0)
        s2, v = s2[keep], v[:, keep]
        z = (v.T @ (f.T @ y)) / s2.sqrt()[:, None]
    else:
        s2, u = torch.linalg.eigh(f @ f.T)
        keep = s2 > max(n, d) * torch.finfo(f.dtype).eps * s2.max().clamp_min(0)
        s2, u = s2[keep], u[:, keep]
        z = u.T @ y
    if s2.numel() == 0:
        raise ScoreInputError("features are all zero; LogME is undefined")
    return s2, z


def _fixed_point(
    s2: torch.Tensor, z: torch.Tensor, y2: torch.Tensor, n: int, d: int, *, max_iter: int, tol: float
) -> torch.Tensor:
    """Run the evidence maximisation for all columns at once; returns evidence/N per column."""
    r = s2.shape[0]
    s2c = s2[:, None]
    z2 = z * z
    resid0 = (y2 - z2.sum(0)).clamp_min(0)  # part of y outside the column space of F
    tiny = torch.finfo(s2.dtype).tiny
    s2max, s2min = float(s2.max()), float(s2.min())
    alpha = torch.ones_like(y2)
    beta = torch.ones_like(y2)

    def moments(alpha: torch.Tensor, beta: torch.Tensor):
        t = alpha + beta * s2c
        gamma = (beta * s2c / t).sum(0)
        m2 = (beta * beta * s2c * z2 / (t * t)).sum(0)
        res2 = (alpha * alpha * z2 / (t * t)).sum(0) + resid0
        return t, gamma, m2, res2

    for _ in range(max_iter):
        _, gamma, m2, res2 = moments(alpha, beta)
        new_alpha = gamma / m2.clamp_min(tiny)
        new_beta = (n - gamma) / res2.clamp_min(tiny)
        # A target unrelated to the features drives alpha -> inf (w -> 0); the evidence has a
        # finite limit there, reached long before alpha / beta exceeds 1e10 * max(s2).
        new_alpha = torch.minimum(new_alpha, new_beta * s2max * 1e10)
        new_beta = torch.minimum(new_beta, new_alpha / (s2min * 1e-10))
        done = bool(
            ((new_alpha - alpha).abs() <= tol * new_alpha).all()
            and ((new_beta - beta).abs() <= tol * new_beta).all()
        )
        alpha, beta = new_alpha, new_beta
        if done:
            break
    t, _, m2, res2 = moments(alpha, beta)
    evidence = (
        n / 2 * torch.log(beta)
        + d / 2 * torch.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - 0.5 * (torch.log(t).sum(0) + (d - r) * torch.log(alpha))
    )
    return evidence / n


def logme_reference(
    features: np.ndarray, labels: np.ndarray, *, regression: bool = False, max_iter: int = 1000, tol: float = 1e-8
) -> float:
    """Straightforward numpy LogME: per column, thin SVD of ``F`` and D-dimensional ``m``.

    The textbook form of Algorithm 1 (one column at a time, ``m`` and ``F m - y`` built as
    vectors every iteration). Kept as the reference the fast :func:`logme` is tested and
    benchmarked against; it gives the same number, slower.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    if regression:
        y_all = np.asarray(labels, dtype=np.float64).reshape(n, -1)
    else:
        _, codes = np.unique(np.asarray(labels), return_inverse=True)
        y_all = np.eye(codes.max() + 1)[codes.reshape(-1)]
    u, s, vt = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    keep = sigma > max(n, d) * np.finfo(np.float64).eps * sigma.max()
    u, s, vt, sigma = u[:, keep], s[keep], vt[keep], sigma[keep]
    out = []
    for k in range(y_all.shape[1]):
        y = y_all[:, k]
        uy = u.T @ y
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            t = alpha + beta * sigma
            gamma = float((beta * sigma / t).sum())
            m = vt.T @ ((beta * s / t) * uy)
            res = f @ m - y
            new_alpha = gamma / float(m @ m)
            new_beta = (n - gamma) / float(res @ res)
            done = abs(new_alpha - alpha) <= tol * new_alpha and abs(new_beta - beta) <= tol * new_beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        t = alpha + beta * sigma
        m = vt.T @ ((beta * s / t) * uy)
        res = f @ m - y
        logdet = np.log(t).sum() + (d - len(sigma)) * np.log(alpha)
        ev = (
            n / 2 * np.log(beta)
            + d / 2 * np.log(alpha)
            - n / 2 * np.log(2 * np.pi)
            - beta / 2 * float(res @ res)
            - alpha / 2 * float(m @ m)
            - 0.5 * logdet
        )
        out.append(ev / n)
    return float(np.mean(out))
