"""Weight relatedness on real (tiny) training runs: the warning separates a model and its
fine-tuned copy from networks that started from independent random initialisations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zootune.zoo import RELATED_THRESHOLD, relatedness


def _net(seed: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes),
    )


def _train(model, x, y, steps, lr, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convs: one thread is faster than two contending ones on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(d.target)


def test_random_inits_and_independent_training_are_flagged(digits):
    x, y = digits
    a, b = _net(0), _net(1)
    rel = relatedness([a, b], ["a", "b"], exclude_prefixes=["6"])
    assert rel.layers == ["0.weight", "2.weight"]
    assert rel.unrelated() == ["a", "b"]
    _train(a, x, y, 80, 0.05, 0)
    _train(b, x, y, 80, 0.05, 1)
    rel = relatedness([a, b], ["a", "b"], exclude_prefixes=["6"])
    assert np.abs(rel.pairwise()[0, 1]) < RELATED_THRESHOLD
    assert rel.warning_text() and "all zoo members" in rel.warning_text()


def test_fine_tuned_copy_is_related_and_outlier_is_named(digits):
    x, y = digits
    base = _train(_net(0), x, y, 80, 0.05, 0)
    tuned = copy.deepcopy(base)
    tuned[6] = nn.Linear(32, 3)
    _train(tuned, x, y % 3, 60, 0.01, 1)  # a brief fine-tune on another task
    other = _train(_net(5), x, y, 80, 0.05, 2)
    rel = relatedness([base, tuned, other], ["base", "tuned", "other"], exclude_prefixes=["6"])
    scores = dict(zip(rel.names, rel.member_scores()))
    assert scores["base"] > 0.5 and scores["tuned"] > 0.5
    assert scores["other"] < RELATED_THRESHOLD
    assert rel.unrelated() == ["other"]
    text = rel.warning_text()
    assert text.startswith("some zoo members") and "other (" in text
    table = rel.table()
    assert "0.weight" in table and "closest (median)" in table
    assert rel.per_layer_to_others().shape == (2, 3)
