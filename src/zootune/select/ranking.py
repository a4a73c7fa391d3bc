"""How well a transferability score ranks a zoo, given the fine-tuned accuracies.

Measures used by the seed paper (§4.3) and the LogME paper (§5): Spearman's rank correlation,
weighted Kendall's tau (``scipy.stats.weightedtau``: disagreements among the top models
weigh more), the number of models one fine-tunes, in score order, until the best model is
among them ("trials to find the best model"), and the best accuracy reached by fine-tuning the
top-k models, compared with picking k models at random.
"""

from __future__ import annotations

from math import comb

import numpy as np


def spearman(scores: np.ndarray, accuracies: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(scores, accuracies).statistic)


def weighted_kendall(scores: np.ndarray, accuracies: np.ndarray) -> float:
    from scipy.stats import weightedtau

    return float(weightedtau(scores, accuracies).statistic)


def trials_to_best(scores: np.ndarray, accuracies: np.ndarray, *, tol: float = 0.0) -> int:
    """Models fine-tuned in decreasing score order until one within ``tol`` of the best is tried."""
    scores, accuracies = np.asarray(scores, float), np.asarray(accuracies, float)
    order = np.argsort(-scores, kind="stable")
    best = accuracies.max() - tol
    return int(np.flatnonzero(accuracies[order] >= best)[0]) + 1


def random_trials_to_best(accuracies: np.ndarray, *, tol: float = 0.0) -> float:
    """Expected trials for a random order: (m + 1) / (b + 1) with b models within ``tol`` of best."""
    accuracies = np.asarray(accuracies, float)
    b = int((accuracies >= accuracies.max() - tol).sum())
    return (len(accuracies) + 1) / (b + 1)


def top_k_accuracy(scores: np.ndarray, accuracies: np.ndarray, k: int = 3) -> float:
    """Best fine-tuned accuracy among the ``k`` highest-scoring models."""
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    return float(np.asarray(accuracies, float)[order[:k]].max())


def random_top_k_accuracy(accuracies: np.ndarray, k: int = 3) -> float:
    """Expected best accuracy among ``k`` models drawn at random without replacement (exact)."""
    acc = np.sort(np.asarray(accuracies, float))
    m = len(acc)
    k = min(k, m)
    # P(max is the i-th smallest) = C(i, k-1) / C(m, k) for 0-based i
    return float(sum(acc[i] * comb(i, k - 1) for i in range(k - 1, m)) / comb(m, k))


__all__ = [
    "spearman",
    "weighted_kendall",
    "trials_to_best",
    "random_trials_to_best",
    "top_k_accuracy",
    "random_top_k_accuracy",
]
