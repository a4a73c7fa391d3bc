"""L2-SP, DELTA and BSS: values and gradients against their formulas; config and trainer hook."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from zootune.config import ConfigError, build_config
from zootune.methods.regularizers import (
    BSS,
    L2SP,
    Delta,
    RegularizerError,
    build_regularizers,
    smallest_singular_penalty,
)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))  # head: "2"


def _task(head: str = "2") -> SimpleNamespace:
    return SimpleNamespace(head_name=head, input_field="image", label_field="label",
                           forward=lambda m, b: m(b["image"]))


def _setup(cls, model, task=None, data=None, **opts):
    r = cls(cls.Options(name=cls.name, **opts))
    from zootune.methods.regularizers import RegularizerContext

    r.setup(RegularizerContext(model, task or _task(), data))
    return r


def test_l2sp_is_zero_at_the_start_and_its_gradient_is_the_formula():
    start = _net()
    assert float(_setup(L2SP, _net(), alpha=0.3, beta=0.0)().detach()) == 0.0
    r = _setup(L2SP, start, alpha=0.3, beta=0.05)
    with torch.no_grad():  # move the model away from its start
        for p in start.parameters():
            p.add_(0.5 * torch.randn_like(p))
    ref = _net()  # same seed: the starting weights
    value = r()
    value.backward()
    expect = 0.0
    for (n, p), (_, p0) in zip(start.named_parameters(), ref.named_parameters()):
        if n.startswith("2."):  # the new head: beta * w
            g, v = 0.05 * p.detach(), 0.5 * 0.05 * (p.detach() ** 2).sum()
        else:  # pretrained: alpha * (w - w0)
            g, v = 0.3 * (p.detach() - p0), 0.5 * 0.3 * ((p.detach() - p0) ** 2).sum()
        torch.testing.assert_close(p.grad, g)
        expect += float(v)
    assert float(value) == pytest.approx(expect, rel=1e-6)


def test_bss_penalises_exactly_the_k_smallest_singular_values():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(8, 5))
    v, _ = torch.linalg.qr(torch.randn(5, 5))
    s = torch.tensor([5.0, 4.0, 3.0, 0.5, 0.2])
    f = (u * s) @ v.T
    assert float(smallest_singular_penalty(f, 1)) == pytest.approx(0.2 ** 2, rel=1e-5)
    assert float(smallest_singular_penalty(f, 2)) == pytest.approx(0.2 ** 2 + 0.5 ** 2, rel=1e-5)
    f = f.clone().requires_grad_(True)
    smallest_singular_penalty(f, 2).backward()
    # d(sigma_i^2)/dF = 2 sigma_i u_i v_i^T: only the two smallest directions
    expect = 2 * 0.2 * torch.outer(u[:, 4], v[:, 4]) + 2 * 0.5 * torch.outer(u[:, 3], v[:, 3])
    torch.testing.assert_close(f.grad, expect, atol=1e-4, rtol=1e-4)


def test_bss_reads_the_features_entering_the_head_of_the_training_forward():
    net = _net()
    r = _setup(BSS, net, eta=0.01, k=2)
    x = torch.randn(7, 4)
    net.train()
    net(x)
    feats = torch.relu(net[0](x))
    assert float(r({"image": x})) == pytest.approx(0.01 * float(smallest_singular_penalty(feats, 2)),
                                                   rel=1e-5)
    with pytest.raises(RegularizerError, match="no features"):
        r({"image": x})  # nothing captured since the last call
    with pytest.raises(RegularizerError, match="no module"):
        _setup(BSS, net, layer="nope")


def test_delta_is_zero_at_the_start_then_the_attention_weighted_feature_distance():
    net = _net()
    start = copy.deepcopy(net)
    r = _setup(Delta, net, alpha=2.0, beta=0.0, attention="uniform")
    x = torch.randn(5, 4)
    net.train()
    net(x)
    assert float(r({"image": x})) == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        net[0].weight.add_(torch.randn_like(net[0].weight))
    net(x)
    value = r({"image": x})
    d = (torch.relu(net[0](x)) - torch.relu(start[0](x))) ** 2  # (B, 6): 6 channels of size 1
    assert float(value) == pytest.approx(2.0 * float((d.mean(0) / 6).sum()), rel=1e-5)


def test_delta_supervised_attention_favours_the_informative_channel():
    torch.manual_seed(0)
    n = 200
    y = torch.arange(n) % 2
    x = torch.randn(n, 2)
    x[:, 0] = (2 * y - 1).float() * 2 + 0.3 * torch.randn(n)  # channel 0 carries the label
    net = nn.Sequential(nn.Identity(), nn.Linear(2, 2))  # head "1", features = the input
    data = SimpleNamespace(train=[{"image": x[i], "label": int(y[i])} for i in range(n)])
    r = _setup(Delta, net, _task("1"), data, attention="supervised")
    att = r._att[0]
    assert float(att.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(att[0]) > float(att[1])


def test_regularizers_config_section_and_errors():
    cfg = build_config({"regularizers": [{"name": "l2_sp", "alpha": 0.2}, "bss"]})
    assert [r.name for r in cfg.regularizers] == ["l2_sp", "bss"]
    assert cfg.regularizers[0].alpha == 0.2 and cfg.regularizers[1].k == 1
    assert build_config({}).regularizers == []
    with pytest.raises(ConfigError, match="unknown regularizer 'l2sp'.*did you mean 'l2_sp'"):
        build_config({"regularizers": [{"name": "l2sp"}]})
    with pytest.raises(ConfigError, match="alpa"):
        build_config({"regularizers": [{"name": "l2_sp", "alpa": 1}]})
    with pytest.raises(ConfigError, match="needs a 'name'"):
        build_config({"regularizers": [{"alpha": 1}]})
    # round trip through the resolved config
    again = build_config(cfg.to_dict())
    assert again.regularizers[0].alpha == 0.2
    assert build_regularizers([], _net(), _task()) is None


def test_trainer_adds_the_terms_l2sp_keeps_weights_near_the_start():
    from trainer_utils import tiny_config

    from zootune.train import build_run, fit

    def drift(regs):
        cfg = tiny_config(method="finetune", regularizers=regs, train__steps=10, train__eval_every=0,
                          optim__lr=0.05)
        run = build_run(cfg)
        start = {k: v.clone() for k, v in run.model.state_dict().items()}
        res = fit(run.model, run.task, run.data, cfg, None, method=run.method)
        end = res.model.state_dict()
        return sum(float((end[k].float() - start[k].float()).pow(2).sum()) for k in start
                   if not k.startswith("head") and end[k].is_floating_point())

    free = drift([])
    held = drift([{"name": "l2_sp", "alpha": 200.0, "beta": 0.0}])
    assert held < 0.5 * free
    drift([{"name": "bss"}, {"name": "delta", "attention": "uniform"}])  # runs
