"""Ranking measures and the score runner (zootune.select.ranking / scoring)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from zootune.select import ScoreInputError, rank_table, score_features
from zootune.select.ranking import (
    random_top_k_accuracy,
    random_trials_to_best,
    spearman,
    top_k_accuracy,
    trials_to_best,
    weighted_kendall,
)


def test_trials_and_top_k_against_brute_force():
    acc = np.array([0.7, 0.9, 0.8, 0.6, 0.85])
    scores = np.array([5.0, 3.0, 4.0, 1.0, 2.0])  # order: 0, 2, 1, 4, 3
    assert trials_to_best(scores, acc) == 3
    assert trials_to_best(scores, acc, tol=0.1) == 2  # 0.8 is within 0.1 of the best
    assert top_k_accuracy(scores, acc, 1) == 0.7 and top_k_accuracy(scores, acc, 3) == 0.9
    for k in (1, 2, 3, 5):
        brute = np.mean([max(acc[list(c)]) for c in combinations(range(5), k)])
        assert random_top_k_accuracy(acc, k) == pytest.approx(brute)
    # expected position of the best in a random order: (m + 1) / 2 for a unique best
    assert random_trials_to_best(acc) == pytest.approx(3.0)
    assert spearman(acc, acc) == pytest.approx(1.0) and spearman(-acc, acc) == pytest.approx(-1.0)
    assert weighted_kendall(acc, acc) == pytest.approx(1.0)


def test_rank_table_and_score_runner():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    good = np.eye(3)[y] * 3 + 0.1 * rng.normal(size=(60, 3))
    bad = rng.normal(size=(60, 3))
    per = {}
    for name, f in {"good": good, "bad": bad}.items():
        res = score_features({"features": f, "logits": f, "gradients": None}, y, probe=good)
        assert res["skipped"] == {"lgc": "no gradients extracted", "domain_similarity": "no source-domain samples given"}
        per[name] = res["scores"]
    table = rank_table(per)
    assert table["good"]["mean_rank"] == 1.0 and table["bad"]["mean_rank"] == 2.0
    with pytest.raises(ScoreInputError, match="unknown score"):
        score_features({"features": good}, y, scores=["logme", "nope"])
