"""Gate routing statistics: known answers on synthetic gates, domains from a sample field or
``info["class_domains"]``, and the numbers coming out of a real per-sample ZooModel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from zootune.compare.routing import (
    collect_gates,
    entropy_bits,
    mutual_information_bits,
    routing_report,
    routing_stats,
    sample_domains,
)


def test_entropy_and_mutual_information_known_values():
    assert entropy_bits([0, 1, 0, 1]) == pytest.approx(1.0)
    assert entropy_bits(["a"] * 5) == 0.0
    assert entropy_bits([0, 1, 2, 3]) == pytest.approx(2.0)
    x = [0, 0, 1, 1, 2, 2, 3, 3]
    assert mutual_information_bits(x, x) == pytest.approx(2.0)
    assert mutual_information_bits(x, [0, 1] * 4) == pytest.approx(0.0)  # independent
    assert mutual_information_bits(x, [v // 2 for v in x]) == pytest.approx(1.0)  # a coarsening
    with pytest.raises(ValueError, match="different lengths"):
        mutual_information_bits([0], [0, 1])


def _domains(n_a, n_b):
    return ["digits"] * n_a + ["greek"] * n_b


def test_perfect_routing_gives_mi_equal_to_domain_entropy():
    # 3 sources; digits -> source 0, greek -> source 2, with a little per-sample jitter
    rng = np.random.default_rng(0)
    n_a, n_b = 60, 20
    g = np.full((n_a + n_b, 3), 0.05)
    g[:n_a, 0] = 0.9
    g[n_a:, 2] = 0.9
    g += rng.uniform(0, 0.01, g.shape)
    dom = _domains(n_a, n_b)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    st = routing_stats({"layer": g}, dom, bins=4, shuffles=10)
    lay = st["layers"]["layer"]
    assert st["domain_entropy"] == pytest.approx(h)
    assert lay["mi_argmax"] == pytest.approx(h) and lay["mi_binned"] == pytest.approx(h)
    assert lay["mi_argmax_chance"] < 0.1 * h  # shuffled labels: the estimator's bias only
    assert lay["domain_gap"] == pytest.approx(0.85, abs=0.02)
    assert lay["argmax_share"] == pytest.approx([0.75, 0.0, 0.25])
    assert lay["spread"] > 0.2 and st["overall"]["mi_argmax"] == pytest.approx(h)
    assert st["domains"] == {"digits": 60, "greek": 20} and st["samples"] == 80


def test_identical_gates_give_zero_spread_and_zero_information():
    g = np.tile([0.2, 0.5, 0.3], (50, 1))
    st = routing_stats({"a": g, "b": g * 2}, _domains(25, 25))
    for lay in st["layers"].values():
        assert lay["spread"] == pytest.approx(0.0, abs=1e-12)
        assert lay["relative_spread"] == pytest.approx(0.0, abs=1e-12)
        assert lay["mi_argmax"] == 0.0 and lay["mi_binned"] == 0.0 and lay["domain_gap"] == 0.0
        assert lay["argmax_share"] == [0.0, 1.0, 0.0]
    assert st["layers"]["a"]["mean"] == pytest.approx([0.2, 0.5, 0.3])
    assert st["overall"]["spread_max"] == pytest.approx(0.0, abs=1e-12)


def test_varying_gates_that_ignore_the_domain_have_spread_but_no_information():
    rng = np.random.default_rng(1)
    n = 4000
    g = rng.dirichlet([1, 1, 1], size=n)
    dom = rng.integers(0, 2, n).tolist()  # independent of the gates
    lay = routing_stats({"l": g}, dom, bins=8, shuffles=5)["layers"]["l"]
    assert lay["spread"] > 0.15
    assert lay["mi_argmax"] < 0.01 and lay["mi_binned"] < 0.01
    assert abs(lay["mi_binned"] - lay["mi_binned_chance"]) < 0.01


def test_without_domains_only_spread_is_reported_and_shapes_are_checked():
    st = routing_stats({"l": np.eye(3)})
    assert st["domain_entropy"] is None and "mi_argmax" not in st["layers"]["l"]
    assert st["layers"]["l"]["spread"] == pytest.approx(np.sqrt(2) / 3)
    with pytest.raises(ValueError, match="samples, sources"):
        routing_stats({"l": np.zeros(3)})
    with pytest.raises(ValueError, match="domain labels"):
        routing_stats({"l": np.eye(3)}, [0, 1])


class _DS:
    """Samples with labels and (optionally) a domain field."""

    def __init__(self, n=12, domain_field=False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 8, 8, generator=g)
        self.targets = np.arange(n) % 4
        self.domain_field = domain_field

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        s = {"image": self.x[i], "label": int(self.targets[i])}
        if self.domain_field:
            s["domain"] = "bright" if float(self.x[i].mean()) > 0.5 else "dark"
        return s


def test_sample_domains_from_a_field_or_class_domains():
    ds = _DS()
    idx = np.arange(len(ds))
    assert sample_domains(ds, {}, idx) is None
    doms = sample_domains(ds, {"class_domains": ["a", "a", "b", "b"]}, idx)
    assert doms == ["a", "a", "b", "b"] * 3
    with_field = _DS(domain_field=True)
    samples = [with_field[i] for i in idx]
    assert sample_domains(with_field, {"class_domains": ["x"] * 4}, idx, samples) == \
        [s["domain"] for s in samples]  # the field wins


def _tiny_zoo_model(lite):
    import zootune

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    zm = zootune.zoo_tune([net(0), net(1), net(2)], lite=lite, gate="softmax", gate_init="kaiming")
    return zm


def test_a_real_per_sample_zoo_model_is_analysed_and_lite_is_not():
    from zootune.data import DataSplits

    zm = _tiny_zoo_model(lite=False)
    ds = _DS(n=40)
    data = DataSplits(train=ds, val=None, test=ds, classes=list("abcd"),
                      info={"class_domains": ["p", "p", "q", "q"]})
    before = {k: v.clone() for k, v in zm.gate_values().items()}
    zm.train()
    rep = routing_report(zm, data, shuffles=3)
    assert zm.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in zm.gate_values().items())  # stats untouched
    assert set(rep["layers"]) == set(zm.layer_names) and rep["samples"] == 40
    assert rep["domains"] == {"p": 20, "q": 20} and rep["domain_entropy"] == pytest.approx(1.0)
    # the collected gates are exactly what the gate networks compute per sample
    gates, _idx = collect_gates(zm, ds)
    first = zm.adaagg_layers()[zm.layer_names[0]]
    expect = first.gate(ds.x.mean(dim=(-2, -1)))
    assert np.allclose(gates[zm.layer_names[0]], expect.detach().numpy(), atol=1e-6)
    assert rep["layers"][zm.layer_names[0]]["spread"] == pytest.approx(
        float(expect.detach().double().std(0, unbiased=False).mean()), rel=1e-5)
    # kaiming-initialised gates vary between inputs
    assert rep["overall"]["spread"] > 0
    # subsampling keeps evenly spaced samples
    assert len(collect_gates(zm, ds, max_samples=7)[1]) == 7
    assert routing_report(_tiny_zoo_model(lite=True), data) is None


def _digits_with_domains(cfg_data, preprocessing=None):
    """scikit-learn digits with a sub-domain per class (small: 0-4, large: 5-9) — a data set
    that is not the demo, to show the compare runner reads ``info["class_domains"]`` generically."""
    from zootune.data.digits import build_digits

    d = build_digits(cfg_data, preprocessing)
    d.info["class_domains"] = ["small"] * 5 + ["large"] * 5
    return d


def test_compare_reports_routing_for_per_sample_zoo_tuning_only(tmp_path):
    from trainer_utils import tiny_raw

    from zootune.compare import load_compare, run_compare
    from zootune.data import register_dataset

    register_dataset("digits_with_domains_test", _digits_with_domains)
    raw = tiny_raw(train__steps=2, train__eval_every=0, train__checkpoint_every=0,
                   data__name="digits_with_domains_test")
    raw.pop("method")
    raw["compare"] = {"methods": [{"name": "zoo_tuning", "gate_init": "kaiming", "label": "zt"},
                                  {"name": "zoo_tuning", "lite": True, "label": "lite"}],
                      "seeds": [0, 1], "reports": False}
    res = run_compare(load_compare(raw=raw), tmp_path / "cmp", log=lambda s: None)
    per_sample = res["cells"]["zt@seed0"]["routing"]
    from zootune.config import DataConfig

    test_y = _digits_with_domains(DataConfig(name="digits", seed=0)).test.targets
    assert per_sample["domains"] == {"small": int((test_y < 5).sum()), "large": int((test_y >= 5).sum())}
    assert per_sample["samples"] == len(test_y) and per_sample["split"] == "test"
    assert per_sample["domain_entropy"] == pytest.approx(1.0, abs=1e-3)
    assert res["cells"]["lite@seed0"]["routing"] is None
    rows = {r["label"]: r for r in res["summary"]["rows"]}
    rt = rows["zt"]["routing"]
    assert rt["seeds"] == 2 and rt["spread"] > 0 and 0 <= rt["mi_argmax"] <= 1.0
    assert set(rt["layers"]) == set(per_sample["layers"])
    assert rows["lite"]["routing"] is None
    md = res["results_md"].read_text()
    assert "Do the gates route?" in md and "| zt |" in md.split("Do the gates route?")[1]
    assert "| lite |" not in md.split("Do the gates route?")[1]
    # a second run skips the finished cells and keeps their routing
    again = run_compare(load_compare(raw=raw), tmp_path / "cmp", log=lambda s: None)
    assert again["summary"]["rows"][0]["routing"]["spread"] == pytest.approx(rt["spread"])
