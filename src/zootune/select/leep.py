"""LEEP: log expected empirical prediction of the source head on the target labels.

Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of
Learned Representations", ICML 2020. With ``theta_i(z)`` the source model's predicted
probability of source class ``z`` for target sample ``i`` (Eq. 1-3 there):

    P(y, z) = 1/N sum_{i: y_i = y} theta_i(z),      P(y | z) = P(y, z) / sum_y' P(y', z),
    LEEP    = 1/N sum_i log( sum_z P(y_i | z) theta_i(z) ).

It is the average log-likelihood of the "expected empirical predictor" that maps source
predictions to target labels through the empirical conditional ``P(y | z)``. It is <= 0;
larger (closer to 0) is better. Needs a source classification head.
"""

from __future__ import annotations

import torch

from ._inputs import ArrayLike, ScoreInputError, as_matrix, label_codes, one_hot


def leep(source_probs: ArrayLike, labels: ArrayLike, *, from_logits: bool = False) -> float:
    """LEEP score (<= 0, larger is better).

    Args:
        source_probs: ``(N, Z)`` probabilities over the Z source classes (rows sum to 1), or
            logits with ``from_logits=True`` (a softmax is applied).
        labels: ``(N,)`` target labels.
    """
    p = as_matrix(source_probs, "source_probs")
    n = p.shape[0]
    codes, c = label_codes(labels, n)
    if from_logits:
        p = torch.softmax(p, dim=1)
    else:
        if bool((p < 0).any()):
            raise ScoreInputError("source_probs has negative entries; pass from_logits=True for logits")
        row = p.sum(1)
        if bool(((row - 1).abs() > 1e-3).any()):
            raise ScoreInputError(
                "rows of source_probs must sum to 1 (probabilities); pass from_logits=True for logits"
            )
        p = p / row[:, None]
    y = one_hot(codes, c, p.device)
    joint = y.T @ p / n  # (C, Z): P(y, z)
    marginal = joint.sum(0)  # P(z)
    cond = torch.where(marginal > 0, joint / marginal.clamp_min(torch.finfo(p.dtype).tiny), 0.0)
    eep = (p @ cond.T)[torch.arange(n, device=p.device), torch.as_tensor(codes, device=p.device)]
    return float(torch.log(eep.clamp_min(torch.finfo(p.dtype).tiny)).mean())
