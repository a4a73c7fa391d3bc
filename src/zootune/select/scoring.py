"""Run every applicable score for one model, and turn per-model scores into rankings.

A model's extracted arrays (see :mod:`zootune.select.features`) decide which scores apply:
LEEP and NCE need source logits, LGC needs gradients, RSA needs probe features, domain
similarity needs features of source-domain samples. Scores that do not apply are reported as
skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from ._inputs import ScoreInputError

SCORE_NAMES: tuple[str, ...] = (
    "logme",
    "leep",
    "nce",
    "hscore",
    "hscore_shrinkage",
    "lfc",
    "lgc",
    "rsa",
    "domain_similarity",
)


def score_features(
    arrays: Mapping[str, Any],
    labels: Any,
    *,
    scores: Sequence[str] | None = None,
    probe: Any | None = None,
    source_features: Any | None = None,
    source_labels: Any | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the requested scores (default: all) for one model.

    Args:
        arrays: ``{"features": (N, D), "logits": (N, Z) or None, "gradients": (N, P) or None}``.
        labels: ``(N,)`` target labels.
        scores: names from :data:`SCORE_NAMES`.
        probe: ``(N, E)`` probe-network features of the same samples (for RSA).
        source_features, source_labels: this model's features of source-domain samples (for
            domain similarity).

    Returns:
        ``{"scores": {name: float}, "seconds": {name: float}, "skipped": {name: reason}}``.
    """
    from .correlation import lfc, lgc
    from .domain import domain_similarity
    from .hscore import hscore
    from .leep import leep
    from .logme import logme
    from .nce import nce
    from .rsa import rsa

    wanted = list(SCORE_NAMES if scores is None else scores)
    unknown = [s for s in wanted if s not in SCORE_NAMES]
    if unknown:
        raise ScoreInputError(f"unknown score(s) {unknown}; choose from {list(SCORE_NAMES)}")
    feats = arrays.get("features")
    logits = arrays.get("logits")
    grads = arrays.get("gradients")
    jobs = {
        "logme": (feats, lambda: logme(feats, labels), "no features"),
        "leep": (logits, lambda: leep(logits, labels, from_logits=True), "model has no source head"),
        "nce": (logits, lambda: nce(logits, labels), "model has no source head"),
        "hscore": (feats, lambda: hscore(feats, labels), "no features"),
        "hscore_shrinkage": (feats, lambda: hscore(feats, labels, shrinkage=True), "no features"),
        "lfc": (feats, lambda: lfc(feats, labels), "no features"),
        "lgc": (grads, lambda: lgc(grads, labels), "no gradients extracted"),
        "rsa": (
            probe if feats is not None else None,
            lambda: rsa(feats, probe, labels=labels, seed=seed),
            "no probe features",
        ),
        "domain_similarity": (
            source_features if feats is not None else None,
            lambda: domain_similarity(
                source_features, feats, source_labels=source_labels, target_labels=labels, seed=seed
            ),
            "no source-domain samples given",
        ),
    }
    out: dict[str, Any] = {"scores": {}, "seconds": {}, "skipped": {}}
    for name in wanted:
        needed, fn, reason = jobs[name]
        if needed is None:
            out["skipped"][name] = reason
            continue
        t0 = time.perf_counter()
        out["scores"][name] = fn()
        out["seconds"][name] = time.perf_counter() - t0
    return out


def rank_table(per_model: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Ranks (1 = best) of each model under each score, plus ``mean_rank`` over the scores.

    Args:
        per_model: ``{model: {score: value}}``; a score missing for some model is left out
            of that score's ranking for every model.

    Returns:
        ``{model: {score: rank, ..., "mean_rank": float}}`` (ties share the average rank).
    """
    from scipy.stats import rankdata

    models = list(per_model)
    names = [s for s in SCORE_NAMES if all(s in per_model[m] for m in models)]
    table: dict[str, dict[str, float]] = {m: {} for m in models}
    for s in names:
        ranks = rankdata([-per_model[m][s] for m in models], method="average")
        for m, r in zip(models, ranks):
            table[m][s] = float(r)
    for m in models:
        table[m]["mean_rank"] = float(np.mean([table[m][s] for s in names])) if names else float("nan")
    return table
