"""LEEP: log expected empirical prediction of the source head on the target labels.

Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of
Learned Representations", ICML 2020. With ``theta_i(z)`` the source model's predicted
probability of source class ``z`` for target sample ``i`` (Eq. 1-3 there):

    P(y, z) = 1/N sum_{i: y_i = y} theta_i(z),      P(y | z) = P(y, z) / sum_y' P(y', z),
    LEEP    = 1/N sum_i log( sum_z P(y_i | z) theta_i(z) ).

It is the average log-likelihood of the "expected empirical predictor" that maps source
predictions to target labels through the empirical conditional ``P(y | z)``. It is <= 0;
larger (closer to 0) is better. Needs a source classification head.

The per-class average of the source predictions, ``P(z | y) = P(y, z) / P(y)``, is
:func:`class_mean_predictions`: LEEP's empirical joint is it times the class frequencies, and
Co-Tuning's *direct* category relationship ``p(y_s | y_t)`` (:mod:`zootune.methods.co_tuning`)
is exactly it.
"""

from __future__ import annotations

import numpy as np
import torch

from ._inputs import ArrayLike, ScoreInputError, as_matrix, label_codes, one_hot


def class_mean_predictions(probs: torch.Tensor, codes: ArrayLike, num_classes: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean of source predictions: ``(means (C, Z), counts (C,))``.

    ``means[y] = 1/|D_y| sum_{i: y_i = y} probs[i]`` — the empirical ``P(z | y)`` that LEEP's
    joint ``P(y, z) = means[y] * counts[y] / N`` and Co-Tuning's direct relationship
    ``p(y_s | y_t)`` are built from. ``codes``: integer labels in ``0..num_classes-1``.
    A class without samples has no mean: :class:`ScoreInputError` naming it.
    """
    codes_t = torch.as_tensor(np.asarray(codes), dtype=torch.long, device=probs.device).reshape(-1)
    if codes_t.shape[0] != probs.shape[0]:
        raise ScoreInputError(f"{codes_t.shape[0]} labels for {probs.shape[0]} predictions")
    if codes_t.numel() and (int(codes_t.min()) < 0 or int(codes_t.max()) >= num_classes):
        raise ScoreInputError(f"labels must lie in 0..{num_classes - 1}")
    y = one_hot(codes_t.cpu().numpy(), num_classes, probs.device).to(probs.dtype)
    counts = y.sum(0)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ScoreInputError(f"target class(es) {empty[:10]} have no samples: their mean source "
                              "prediction is undefined")
    return (y.T @ probs) / counts[:, None], counts


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
    means, counts = class_mean_predictions(p, codes, c)
    joint = means * (counts / n)[:, None]  # (C, Z): P(y, z)
    marginal = joint.sum(0)  # P(z)
    cond = torch.where(marginal > 0, joint / marginal.clamp_min(torch.finfo(p.dtype).tiny), 0.0)
    eep = (p @ cond.T)[torch.arange(n, device=p.device), torch.as_tensor(codes, device=p.device)]
    return float(torch.log(eep.clamp_min(torch.finfo(p.dtype).tiny)).mean())
