"""Known-answer tests for the transferability scores in zootune.select."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zootune.errors import ZootuneError
from zootune.select import (
    ScoreInputError,
    domain_similarity,
    hscore,
    leep,
    lfc,
    lgc,
    logme,
    logme_reference,
    nce,
    rsa,
)


def _data(n, d, c, *, signal=2.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    f = rng.normal(size=(n, d))
    f[:, :c] += signal * np.eye(c)[y]
    return f, y


# ----------------------------------------------------------------------------------- LEEP / NCE


def test_leep_hand_computed_table():
    theta = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    # P(y,z) = [[17/40, 3/40], [1/10, 2/5]], P(z) = [21/40, 19/40],
    # P(y|z) = [[17/21, 3/19], [4/21, 16/19]]; expected empirical predictions of the true
    # labels: 0.9*17/21 + 0.1*3/19 = 99/133, then 271/399, 86/133, 310/399.
    expected = np.mean(np.log([99 / 133, 271 / 399, 86 / 133, 310 / 399]))
    assert leep(theta, y) == pytest.approx(expected, abs=1e-12)
    # logits give the same answer after a softmax; torch input and string labels too
    assert leep(np.log(theta) + 3.0, y, from_logits=True) == pytest.approx(expected, abs=1e-12)
    assert leep(torch.tensor(theta, dtype=torch.float32), ["a", "a", "b", "b"]) == pytest.approx(expected, abs=1e-6)


def test_leep_is_zero_for_a_deterministic_source_and_rejects_non_probabilities():
    theta = np.eye(3)[[0, 1, 2, 0]]
    assert leep(theta, [5, 6, 7, 5]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ScoreInputError, match="sum to 1"):
        leep(theta * 2, [0, 1, 2, 0])


def test_nce_hand_computed_table():
    z = [0, 0, 1, 1, 1]
    y = [0, 0, 0, 1, 1]
    # P(y,z): (0,0)=2/5, (0,1)=1/5, (1,1)=2/5; P(z) = 2/5, 3/5
    expected = 0.4 * math.log(1.0) + 0.2 * math.log(1 / 3) + 0.4 * math.log(2 / 3)
    assert nce(z, y) == pytest.approx(expected, abs=1e-12)
    # probabilities are turned into hard labels by argmax
    probs = np.eye(2)[z] * 0.8 + 0.1
    assert nce(probs, y) == pytest.approx(expected, abs=1e-12)
    # target fully determined by the source label -> 0; independent -> -H(Y)
    assert nce([3, 3, 4, 4], ["x", "x", "y", "y"]) == pytest.approx(0.0, abs=1e-12)
    assert nce([0, 0, 0, 0], [0, 1, 0, 1]) == pytest.approx(-math.log(2), abs=1e-12)


# -------------------------------------------------------------------------------------- H-score


def _hscore_direct(f, y):
    f = f - f.mean(0)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    cov_f = f.T @ f / len(f)
    cov_g = g.T @ g / len(f)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g)), cov_f, cov_g


@pytest.mark.parametrize("n,d", [(300, 20), (30, 80)])
def test_hscore_matches_direct_formula(n, d):
    f, y = _data(n, d, 4)
    direct, _, _ = _hscore_direct(f, y)
    assert hscore(f, y) == pytest.approx(direct, rel=1e-7)
    # at most C - 1 (between-class covariance has rank C - 1)
    assert hscore(f, y) <= 3 + 1e-9


@pytest.mark.parametrize("n,d", [(300, 20), (30, 80)])
def test_shrinkage_hscore_matches_direct_formula(n, d):
    from sklearn.covariance import LedoitWolf

    f, y = _data(n, d, 4, seed=1)
    _, _, cov_g = _hscore_direct(f, y)
    lw = LedoitWolf(assume_centered=True).fit(f - f.mean(0))
    a = lw.shrinkage_
    direct = np.trace(np.linalg.inv(lw.covariance_) @ ((1 - a) * cov_g))
    assert hscore(f, y, shrinkage=True) == pytest.approx(direct, rel=1e-7)
    # shrinkage can only lower the score of the plain form here
    assert hscore(f, y, shrinkage=True) < hscore(f, y)


def test_hscore_is_invariant_to_invertible_linear_maps():
    f, y = _data(200, 10, 3, seed=2)
    a = np.random.default_rng(3).normal(size=(10, 10))
    assert hscore(f @ a, y) == pytest.approx(hscore(f, y), rel=1e-6)


# -------------------------------------------------------------------------------------- LFC/LGC


def _lfc_direct(f, y):
    k = f @ f.T
    lab = np.where(y[:, None] == y[None, :], 1.0, -1.0)
    return float(np.corrcoef(k.ravel(), lab.ravel())[0, 1])


@pytest.mark.parametrize("n,d", [(200, 16), (40, 100)])
@pytest.mark.parametrize("method", ["auto", "features", "gram"])
def test_lfc_matches_pearson_of_gram_and_label_matrix(n, d, method):
    f, y = _data(n, d, 5, seed=4)
    f = np.abs(f)  # positive, ReLU-like features with a large constant part in the Gram matrix
    assert lfc(f, y, method=method) == pytest.approx(_lfc_direct(f, y), abs=1e-10)
    fc = f - f.mean(0)
    assert lfc(f, y, center=True, method=method) == pytest.approx(_lfc_direct(fc, y), abs=1e-10)


def test_lgc_is_lfc_of_gradients_and_projection_preserves_it():
    g, y = _data(120, 3000, 4, signal=3.0, seed=5)
    exact = lfc(g, y)
    assert lgc(g, y) == pytest.approx(exact, abs=1e-12)
    assert lgc(g, y, projection_dim=5000) == pytest.approx(exact, abs=1e-12)  # no projection needed
    projected = lgc(g, y, projection_dim=1024, seed=1)
    assert projected == pytest.approx(exact, abs=0.05)
    assert projected == lgc(g, y, projection_dim=1024, seed=1)  # seeded
    assert projected != lgc(g, y, projection_dim=1024, seed=2)


# ---------------------------------------------------------------------------------------- LogME


@pytest.mark.parametrize("n,d,c", [(400, 30, 5), (40, 120, 4), (64, 64, 3)])
def test_logme_agrees_with_reference_implementation(n, d, c):
    f, y = _data(n, d, c, seed=6)
    assert logme(f, y) == pytest.approx(logme_reference(f, y), abs=1e-8)


def test_logme_regression_form_agrees_with_reference():
    rng = np.random.default_rng(7)
    f = rng.normal(size=(150, 12))
    t = f @ rng.normal(size=(12, 2)) + 0.3 * rng.normal(size=(150, 2))
    assert logme(f, t, regression=True) == pytest.approx(logme_reference(f, t, regression=True), abs=1e-8)
    # a 1-D target is one column; one-hot targets give the classification score
    assert logme(f, t[:, 0], regression=True) == pytest.approx(
        logme_reference(f, t[:, 0], regression=True), abs=1e-8
    )
    y = rng.integers(0, 3, 150)
    assert logme(f, np.eye(3)[y], regression=True) == pytest.approx(logme(f, y), abs=1e-12)
    # an informative target scores higher than noise
    assert logme(f, t[:, 0], regression=True) > logme(f, rng.normal(size=150), regression=True)


def test_logme_invariances():
    f, y = _data(300, 20, 4, seed=8)
    base = logme(f, y)
    perm = np.array([2, 0, 3, 1])
    assert logme(f, perm[y]) == pytest.approx(base, abs=1e-10)  # class names do not matter
    order = np.random.default_rng(9).permutation(len(y))
    assert logme(f[order], y[order]) == pytest.approx(base, abs=1e-10)  # sample order
    q, _ = np.linalg.qr(np.random.default_rng(10).normal(size=(20, 20)))
    assert logme(f @ q, y) == pytest.approx(base, abs=1e-8)  # rotation of the features
    for scale in (1e-3, 7.0, 1e3):  # one scale for all features: absorbed by alpha
        assert logme(scale * f, y) == pytest.approx(base, abs=1e-7)
    # but not per-dimension rescaling: shrinking the informative dimensions lowers the evidence
    g = f.copy()
    g[:, :4] *= 0.05
    assert logme(g, y) < base - 0.01
    # float32 torch input gives the float64 answer (computation is in float64)
    assert logme(torch.tensor(f, dtype=torch.float32), y) == pytest.approx(
        logme(f.astype(np.float32), y), abs=1e-12
    )


# ---------------------------------------------------------------------- separable beats noise


def _separable_and_noise(n=120, d=16, c=4, seed=11):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    sep = rng.normal(size=(n, d)) * 0.1
    sep[:, :c] += 3 * np.eye(c)[y]
    noise = rng.normal(size=(n, d))
    return y, sep, noise


@pytest.mark.parametrize("n,d", [(120, 16), (24, 64)])
def test_separable_features_outrank_noise_for_every_score(n, d):
    y, sep, noise = _separable_and_noise(n, d)
    rng = np.random.default_rng(12)
    probe = np.eye(4)[y] + 0.05 * rng.normal(size=(n, 4))
    for name, fn in {
        "logme": lambda f: logme(f, y),
        "hscore_shrinkage": lambda f: hscore(f, y, shrinkage=True),
        "lfc": lambda f: lfc(f, y),
        "lgc": lambda f: lgc(f, y, projection_dim=8),
        "rsa": lambda f: rsa(f, probe),
        "leep": lambda f: leep(f, y, from_logits=True),
        "nce": lambda f: nce(f, y),
    }.items():
        assert fn(sep) > fn(noise), name
    if n > d:
        assert hscore(sep, y) > hscore(noise, y)
    else:
        # known degeneracy: with N <= D the pseudo-inverse separates any features in general
        # position, so plain H-score sits at its maximum C - 1 (why the shrinkage form exists)
        assert hscore(noise, y) == pytest.approx(3.0) == hscore(sep, y)
    # domain similarity: a model that maps source and target data close together wins
    src_close = sep + 0.01 * rng.normal(size=sep.shape)
    src_far = noise + 10.0
    assert domain_similarity(src_close, sep, source_labels=y, target_labels=y) > domain_similarity(
        src_far, noise, source_labels=y, target_labels=y
    )


def test_domain_similarity_matches_hand_computed_emd():
    # two class means per domain with weights 1/2: EMD = mean of the matched distances
    s = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 0.0]])
    t = np.array([[0.0, 3.0], [10.0, 4.0]])
    d = domain_similarity(s, t, source_labels=[0, 0, 1, 1], target_labels=[0, 1], return_distance=True)
    assert d == pytest.approx(3.5)
    assert domain_similarity(s, t, source_labels=[0, 0, 1, 1], target_labels=[0, 1]) == pytest.approx(
        math.exp(-0.035)
    )
    # without labels: samples with equal weights; identical sets are at distance 0
    assert domain_similarity(t, t, return_distance=True) == pytest.approx(0.0, abs=1e-12)


def test_rsa_is_one_for_identical_geometry_and_subsamples():
    y, sep, noise = _separable_and_noise(200, 16)
    q, _ = np.linalg.qr(np.random.default_rng(13).normal(size=(16, 16)))
    assert rsa(sep, 2 * sep) == pytest.approx(1.0)
    assert abs(rsa(noise, sep)) < 0.2
    assert rsa(sep, sep @ q + 0.01, labels=y, max_samples=50) > 0.5


# ------------------------------------------------------------------------------------- errors


SCORES_ON_FEATURES = {
    "logme": lambda f, y: logme(f, y),
    "hscore": lambda f, y: hscore(f, y),
    "hscore_shrinkage": lambda f, y: hscore(f, y, shrinkage=True),
    "lfc": lambda f, y: lfc(f, y),
    "lgc": lambda f, y: lgc(f, y, projection_dim=4),
    "leep": lambda f, y: leep(f, y, from_logits=True),
    "nce": lambda f, y: nce(f, y),
}


@pytest.mark.parametrize("name", sorted(SCORES_ON_FEATURES))
def test_errors_are_one_clear_message(name):
    fn = SCORES_ON_FEATURES[name]
    f, y = _data(20, 6, 2)
    with pytest.raises(ScoreInputError, match="19 entries but the features have 20"):
        fn(f, y[:19])
    with pytest.raises(ScoreInputError, match="1 class"):
        fn(f, np.zeros(20, dtype=int))
    bad = f.copy()
    bad[7, 2] = np.nan
    if name != "nce":  # NCE only sees argmax labels of the source predictions
        with pytest.raises(ScoreInputError, match="NaN or Inf"):
            fn(bad, y)
    with pytest.raises(ZootuneError):  # what the CLI turns into one "error:" line
        fn(f, y[:3])


def test_errors_for_pairwise_scores():
    f, y = _data(20, 6, 2)
    with pytest.raises(ScoreInputError, match="20 samples but probe_features has 19"):
        rsa(f, f[:19])
    with pytest.raises(ScoreInputError, match="different dimensions"):
        domain_similarity(f, f[:, :3])
    bad = f.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ScoreInputError, match="NaN or Inf"):
        rsa(f, bad)
    with pytest.raises(ScoreInputError, match="NaN or Inf"):
        logme(f, np.where(np.arange(20) == 3, np.nan, 1.0), regression=True)


def test_scores_do_not_import_the_trainer_methods_or_commands():
    """The scores stand alone (zootune.select docstring): importing them loads no trainer."""
    import subprocess
    import sys

    code = ("import sys, zootune.select, zootune.select.features, zootune.select.ranking; "
            "bad = [m for m in sys.modules if m.startswith(('zootune.train', 'zootune.methods', "
            "'zootune.commands'))]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
