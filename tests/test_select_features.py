"""Feature / logit / projected-gradient extraction and its cache (zootune.select.features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from zootune.select.features import Extracted, _Projector, cap_per_class, extract, extract_zoo


def _cnn(seed=0, head=True):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.ReLU(),
              nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if head:
        layers.append(nn.Linear(8, 7))
    return nn.Sequential(*layers)


def _data(n=90, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % c


def test_cap_per_class_is_seeded_and_capped():
    y = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = cap_per_class(y, 4, seed=1)
    assert np.bincount(y[idx]).tolist() == [4, 3, 4]
    assert (idx == np.sort(idx)).all()
    assert (idx == cap_per_class(y, 4, seed=1)).all()
    assert not (idx == cap_per_class(y, 4, seed=2)).all()
    assert len(cap_per_class(y, None)) == 20


def test_features_and_logits_are_head_input_and_model_output():
    model = _cnn()
    x, y = _data()
    ex = extract(model, (x, y), max_per_class=10, batch_size=7)
    assert ex.features.shape == (30, 8) and ex.logits.shape == (30, 7) and ex.gradients is None
    with torch.no_grad():
        feats = model[:-1](x[ex.indices])
        logits = model(x[ex.indices])
    np.testing.assert_allclose(ex.features, feats.numpy(), atol=1e-5)
    np.testing.assert_allclose(ex.logits, logits.numpy(), atol=1e-5)
    assert (ex.labels == y[ex.indices].numpy()).all()
    # a per-model transform is applied to every input
    ex2 = extract(model, (x, y), indices=ex.indices, transform=lambda t: t * 0)
    assert np.allclose(ex2.features, ex2.features[0])
    assert model.training  # the model's mode is restored


def test_projected_gradients_equal_projection_of_direct_per_sample_gradients():
    model = _cnn(1)
    x, y = _data(12)
    ex = extract(model, (x, y), gradients=True, projection=(5, 6), batch_size=5, seed=3)
    assert ex.gradients.shape == (12, 30)
    conv = model[2]
    proj = _Projector(conv, 5, 6, seed=3, device=torch.device("cpu"))
    for i in (0, 7, 11):
        model.zero_grad()
        torch.logsumexp(model(x[i : i + 1]), 1).sum().backward()
        g = conv.weight.grad.reshape(conv.out_channels, -1)
        expected = (proj.r1.T @ g @ proj.r2).reshape(-1) * proj.scale
        np.testing.assert_allclose(ex.gradients[i], expected.numpy(), rtol=1e-4, atol=1e-6)


def test_headless_model_gives_output_features_and_no_logits():
    model = _cnn(head=False)
    x, y = _data(20)
    ex = extract(model, (x, y), gradients=True)
    assert ex.features.shape == (20, 8) and ex.logits is None and ex.gradients.shape == (20, 256)
    assert any("no classification head" in n for n in ex.notes)


def test_cache_hits_and_is_invalidated_by_weights_data_and_transform(tmp_path):
    model = _cnn(2)
    x, y = _data(30)
    a = extract(model, (x, y), cache_dir=tmp_path, gradients=True)
    assert not a.cached and len(list(tmp_path.glob("*.npz"))) == 1
    b = extract(model, (x, y), cache_dir=tmp_path, gradients=True)
    assert b.cached
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.gradients, b.gradients)
    with torch.no_grad():
        model[0].weight.add_(0.1)
    assert not extract(model, (x, y), cache_dir=tmp_path, gradients=True).cached
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1
    assert not extract(model, (x2, y), cache_dir=tmp_path, gradients=True).cached
    assert not extract(model, (x, y), cache_dir=tmp_path, gradients=True, transform=torch.nn.Identity()).cached
    assert len(list(tmp_path.glob("*.npz"))) == 4
    loaded = Extracted.load(next(tmp_path.glob("*.npz")))
    assert loaded.cached and loaded.features.shape[0] == 30


def test_extract_zoo_uses_one_subset_for_all_models_and_dataset_input(tmp_path):
    x, y = _data(60)
    ds = torch.utils.data.TensorDataset(x, y)
    zoo = {"a": _cnn(0), "b": _cnn(1)}
    out = extract_zoo(zoo, ds, max_per_class=5, seed=4, cache_dir=tmp_path)
    assert (out["a"].indices == out["b"].indices).all() and len(out["a"].indices) == 15
    assert not np.allclose(out["a"].features, out["b"].features)


class _DictSamples(torch.utils.data.Dataset):
    """A data set of sample dicts, as zootune's data sets return them."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def test_dict_samples_extract_exactly_like_pairs(tmp_path):
    from zootune.select.features import data_fingerprint, dataset_labels

    x, y = _data(30)
    pairs = torch.utils.data.TensorDataset(x, y)
    dicts = _DictSamples(x, y)
    assert (dataset_labels(dicts) == y.numpy()).all()
    model = _cnn(3)
    a = extract(model, pairs, max_per_class=4, seed=1, gradients=True)
    b = extract(model, dicts, max_per_class=4, seed=1, gradients=True, cache_dir=tmp_path)
    assert (a.indices == b.indices).all() and (a.labels == b.labels).all()
    np.testing.assert_allclose(a.features, b.features, atol=1e-6)
    np.testing.assert_allclose(a.gradients, b.gradients, atol=1e-6)
    assert data_fingerprint(pairs, a.indices) == data_fingerprint(dicts, a.indices)
    assert extract(model, dicts, max_per_class=4, seed=1, gradients=True, cache_dir=tmp_path).cached


@pytest.mark.slow
def test_torchvision_resnet_extraction():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=5)
    x = torch.randn(6, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ex = extract(model, (x, y), gradients=True, projection=(8, 8))
    assert ex.features.shape == (6, 512) and ex.logits.shape == (6, 5) and ex.gradients.shape == (6, 64)
    assert np.isfinite(ex.gradients).all() and np.abs(ex.gradients).sum() > 0


# ------------------------------------------------ fast path vs the straightforward computation


def test_fast_projection_equals_the_unfold_reference():
    g = torch.Generator().manual_seed(0)
    for conv in (nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(4, 6, (3, 2), stride=2, padding=(1, 2), dilation=2,
                                                          bias=False), nn.Conv2d(2, 3, 1)):
        proj = _Projector(conv, 4, 7, seed=1, device=torch.device("cpu"))
        x = torch.randn(5, conv.in_channels, 11, 9, generator=g)
        with torch.no_grad():
            out = conv(x)
        grad = torch.randn(out.shape, generator=g)
        fast, ref = proj(x, grad), proj.reference(x, grad)
        assert fast.shape == ref.shape == (5, 28)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


class _Residual(nn.Module):
    """Stem, then a block whose last conv feeds BN, a skip connection and a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.conv = nn.Conv2d(6, 6, 3, padding=1, stride=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)
        for bn in (self.stem[1], self.bn):  # non-trivial eval statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(self.bn(self.conv(h)) + h)
        return self.fc(h.mean(dim=(2, 3)))


def _plain_forward(model, x, batch_size):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])


def test_features_and_logits_are_identical_to_a_plain_eval_forward():
    model = _Residual()
    x, y = _data(23)
    plain = _plain_forward(model, x, 6).numpy()
    for gradients in (False, True):
        ex = extract(model, (x, y), gradients=gradients, batch_size=6)
        np.testing.assert_array_equal(ex.logits, plain)  # bit for bit, with or without gradients
    seq = _cnn(4)
    feats = _plain_forward(seq[:-1], x, 6).numpy()
    np.testing.assert_array_equal(extract(seq, (x, y), gradients=True, batch_size=6).features, feats)


def test_projected_gradients_match_per_sample_backward_through_bn_and_skip():
    model = _Residual()
    x, y = _data(11)
    ex = extract(model, (x, y), gradients=True, projection=(3, 5), batch_size=4, seed=2)
    proj = _Projector(model.conv, 3, 5, seed=2, device=torch.device("cpu"))
    model.eval()
    for i in range(11):
        model.zero_grad()
        torch.logsumexp(model(x[i : i + 1]), 1).sum().backward()
        g = model.conv.weight.grad.reshape(model.conv.out_channels, -1)
        expected = (proj.r1.T @ g @ proj.r2).reshape(-1) * proj.scale
        np.testing.assert_allclose(ex.gradients[i], expected.numpy(), rtol=1e-4, atol=1e-6)


def test_grad_mode_is_restored_and_a_layer_before_the_gradient_conv_is_one_error():
    from zootune.select._inputs import ScoreInputError

    model = _cnn(head=False)
    x, y = _data(10)
    extract(model, (x, y), gradients=True)
    assert torch.is_grad_enabled()
    with torch.no_grad():
        extract(model, (x, y), gradients=True)
        assert not torch.is_grad_enabled()
    with pytest.raises(ScoreInputError, match="does not depend on layer"):
        extract(model, (x, y), gradients=True, feature_layer="1", gradient_layer="2")


def test_cache_hit_runs_no_forward(tmp_path):
    model = _cnn(6)
    x, y = _data(30)
    first = extract(model, (x, y), cache_dir=tmp_path, gradients=True)

    def boom(*a):
        raise AssertionError("the model ran on a cache hit")

    model.register_forward_pre_hook(boom)
    hit = extract(model, (x, y), cache_dir=tmp_path, gradients=True)
    assert hit.cached
    np.testing.assert_array_equal(hit.gradients, first.gradients)
