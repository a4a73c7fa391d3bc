"""Gate remedies of ``zoo_tuning`` (issue 10, item 5): noisy gating (``gate_noise``), the
importance balance term (``gate_balance``) and a wider gate (``gate_hidden``) for thin layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from trainer_utils import tiny_config

import zootune
from zootune.layers import AdaAggBase, AdaAggConv2d
from zootune.layers.gate import (
    Gate,
    capture_gates,
    cv_squared,
    importance_loss,
    set_gate_noise,
)
from zootune.methods import Method
from zootune.models import small_cnn
from zootune.train import build_run, fit


def _zoo(m: int = 3, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [small_cnn(num_classes=4, in_channels=3, widths=(4, 6), norm="none") for _ in range(m)]


def _gates(zm: nn.Module) -> list[Gate]:
    return [m.gate for m in zm.modules() if isinstance(m, AdaAggBase)]


def _cfg(steps: int = 6, log_every: int = 3, **method):
    return tiny_config(method={"name": "zoo_tuning", **method}, train__steps=steps,
                       train__eval_every=0, train__checkpoint_every=0, train__log_every=log_every)


def _batch(run, n: int = 16) -> dict:
    from zootune.data.sample import collate_samples

    return collate_samples([run.data.train[i] for i in range(n)])


# ---- noisy gating ---------------------------------------------------------------------------


@pytest.mark.parametrize("lite", [False, True])
def test_noise_is_off_in_eval_mode_and_on_in_training(lite):
    # a fixed kernel: "auto" times the kernels on random inputs at its first forward
    zm = zootune.zoo_tune(_zoo(), lite=lite, gate_init="default", kernel="grouped")
    noisy = copy.deepcopy(zm)
    assert set_gate_noise(noisy, 0.5) == len(zm.layer_names)
    x = torch.randn(5, 3, 8, 8)
    zm.eval(), noisy.eval()
    rng = torch.get_rng_state()
    with torch.no_grad():
        y_noisy = noisy(x)
    assert torch.equal(torch.get_rng_state(), rng)  # eval draws no noise at all
    with torch.no_grad():
        assert torch.equal(y_noisy, zm(x))
    zm.train(), noisy.train()
    assert not torch.equal(noisy(x), zm(x))


def test_noise_zero_is_the_noiseless_gate_and_draws_nothing():
    torch.manual_seed(0)
    gate = Gate(5, 3, kind="normalized", init="default").train()
    x = torch.randn(7, 5)
    rng = torch.get_rng_state()
    out = gate(x)
    assert torch.equal(torch.get_rng_state(), rng)
    expect = torch.sigmoid(gate.fc2(torch.relu(gate.fc1(x))))
    assert torch.equal(out, expect / expect.sum(-1, keepdim=True))
    gate.noise = 0.3  # neutral (the prior of the ensembles) is never noisy
    assert torch.equal(gate.neutral(), gate.activate(gate.logits(torch.zeros(1, 5)))[0])


@pytest.mark.parametrize("kind", ["sigmoid", "normalized", "softmax"])
def test_noise_is_gaussian_on_the_logits_before_normalisation(kind, monkeypatch):
    torch.manual_seed(0)
    std = 0.7
    gate = Gate(6, 4, kind=kind, init="default", noise=std).train()
    seen = []
    activate = gate.activate
    monkeypatch.setattr(gate, "activate", lambda z: seen.append(z) or activate(z))
    x = torch.randn(6000, 6)
    with torch.no_grad():
        out = gate(x)
        eps = seen[0] - gate.logits(x)
    assert out.shape == (6000, 4)
    assert abs(float(eps.std()) - std) < 0.02 and abs(float(eps.mean())) < 0.02
    for i in range(4):  # every source, independently of the others and of the samples
        assert abs(float(eps[:, i].std()) - std) < 0.04
    assert abs(float(torch.corrcoef(eps.T)[0, 1])) < 0.05
    if kind != "sigmoid":
        torch.testing.assert_close(out.sum(-1), torch.ones(6000))


def test_lite_ensemble_records_the_noisy_batch_mean():
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 4, 3, padding=1) for _ in range(3)]
    layer = AdaAggConv2d(convs, align=False, lite=True, gate="normalized", gate_init="default",
                         gate_hidden=None, te_momentum=0.9, recompute=False)
    layer.gate.noise = 1.0
    layer.train()
    x = torch.randn(6, 3, 5, 5)
    with capture_gates([layer.gate]) as seen:
        layer(x)
    assert len(seen) == 1 and int(layer.te.steps) == 1
    torch.testing.assert_close(layer.te.value(), seen[0].detach().mean(0))
    clean = layer.gate.activate(layer.gate.logits(x.mean(dim=(2, 3)))).detach().mean(0)
    assert not torch.allclose(layer.te.value(), clean, atol=1e-4)


def test_options_are_validated_and_described():
    from zootune.config import ConfigError

    with pytest.raises((ConfigError, ValueError)):
        _cfg(gate_noise=-0.1)
    with pytest.raises((ConfigError, ValueError)):
        _cfg(gate_balance=float("nan"))
    with pytest.raises(ValueError):
        Gate(3, 2, noise=-1.0)
    run = build_run(_cfg(gate_noise=0.5, gate_balance=0.01, gate_hidden=8))
    assert all(g.noise == 0.5 and g.fc1.out_features == 8 for g in _gates(run.model))
    assert run.model.settings["gate_noise"] == 0.5
    d = run.method.describe()
    assert "gate_noise=0.5" in d and "gate_balance=0.01" in d and "gate_hidden=8" in d


# ---- importance balance ---------------------------------------------------------------------


def _naive_cv2(a: torch.Tensor) -> float:
    b, m = a.shape
    imp = [sum(float(a[j, i]) for j in range(b)) for i in range(m)]
    mean = sum(imp) / m
    var = sum((v - mean) ** 2 for v in imp) / m
    return var / (mean**2 + 1e-10)


def test_importance_loss_known_values():
    assert float(importance_loss([torch.full((7, 3), 0.2)])) == 0.0
    # every sample routed differently, balanced over the batch: no penalty
    assert float(importance_loss([torch.eye(3)])) == 0.0
    # all samples to one source: CV^2 = m - 1
    one_hot = torch.zeros(5, 4)
    one_hot[:, 0] = 1
    assert float(importance_loss([one_hot])) == pytest.approx(3.0, rel=1e-6)
    # scale-free, and the mean over layers
    a = torch.rand(9, 3)
    assert float(cv_squared(a.sum(0))) == pytest.approx(float(cv_squared(5 * a.sum(0))), rel=1e-5)
    assert float(importance_loss([a, one_hot[:, :3]])) == pytest.approx(
        (_naive_cv2(a) + 2.0) / 2, rel=1e-5)
    assert float(importance_loss([])) == 0.0


@pytest.mark.parametrize("lite", [False, True])
def test_balance_term_equals_naive_recomputation_from_captured_gates(lite):
    w = 0.3
    run = build_run(_cfg(gate_balance=w, gate_init="default", lite=lite))
    model, task = run.model.train(), run.task
    batch = _batch(run)
    mine: list[torch.Tensor] = []
    hooks = [g.register_forward_hook(lambda _m, _i, out: mine.append(out.detach()))
             for g in _gates(model)]
    try:
        loss, outputs = run.method.loss(model, batch, task)
    finally:
        for h in hooks:
            h.remove()
    assert len(mine) == len(model.layer_names) >= 2
    naive = sum(_naive_cv2(a) for a in mine) / len(mine)
    assert naive > 1e-4  # the check means something: the gates are not balanced
    assert float(run.method.last_balance) == pytest.approx(naive, rel=1e-4)
    task_loss = task.loss(outputs, batch)
    assert float((loss - task_loss).detach()) == pytest.approx(w * naive, rel=1e-4)
    # the hooks are gone, the gates keep nothing
    assert all(not g._forward_hooks for g in _gates(model))


def test_balance_is_zero_for_uniform_gates():
    run = build_run(_cfg(gate_balance=1.0))  # uniform start: every gate exactly 1/m
    batch = _batch(run)
    loss, outputs = run.method.loss(run.model.train(), batch, run.task)
    assert float(run.method.last_balance) == 0.0
    assert torch.equal(loss, run.task.loss(outputs, batch))


def test_balance_gradient_reaches_the_gate_parameters():
    # hidden 8: with the default single hidden unit this zoo's first gate (3 input channels) is
    # dead on these inputs (see test_wider_gate_avoids_a_dead_thin_first_layer_gate)
    zm = zootune.zoo_tune(_zoo(), gate_init="default", gate_hidden=8).train()
    x = torch.randn(6, 3, 8, 8)
    with capture_gates(_gates(zm)) as seen:
        zm(x)
    importance_loss(seen).backward()
    for name, layer in zm.adaagg_layers().items():
        for p in (layer.gate.fc1.weight, layer.gate.fc2.weight, layer.gate.fc2.bias):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # through the method: the gate gradients differ from the task loss's alone
    run = build_run(_cfg(gate_balance=1.0, gate_init="default"))
    grads = []
    for w in (0.0, 1.0):
        model = copy.deepcopy(run.model).train()
        run.method.options = run.method.options.model_copy(update={"gate_balance": w})
        loss, _ = run.method.loss(model, _batch(run), run.task)
        loss.backward()
        grads.append(torch.cat([g.fc2.weight.grad.flatten() for g in _gates(model)]))
    assert not torch.allclose(grads[0], grads[1])


# ---- defaults are the current behaviour -------------------------------------------------------


def test_defaults_leave_build_forward_loss_and_gradients_bit_identical():
    default = build_run(_cfg())
    explicit = build_run(_cfg(gate_noise=0.0, gate_balance=0.0))
    a, b = default.model.train(), explicit.model.train()
    assert a.state_dict().keys() == b.state_dict().keys()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert "gate_noise" not in a.settings and all(g.noise == 0.0 for g in _gates(a))
    batch = _batch(default)
    rng = torch.get_rng_state()
    loss_a, out_a = default.method.loss(a, batch, default.task)
    assert torch.equal(torch.get_rng_state(), rng)
    # the base Method.loss (task forward + task loss) on the other, identical build
    loss_b, out_b = Method.loss(explicit.method, b, batch, explicit.task)
    assert torch.equal(loss_a, loss_b) and torch.equal(out_a, out_b)
    loss_a.backward()
    loss_b.backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), n
        assert p.grad is None or torch.equal(p.grad, q.grad), n


# ---- training with the remedies ----------------------------------------------------------------


def test_config_with_noise_and_balance_trains_and_its_loss_falls():
    # the shipped demo zoo (pretrained MiniCNNs, no download): the tiny random zoo learns too slowly
    cfg = tiny_config(method={"name": "zoo_tuning", "gate_noise": 0.5, "gate_balance": 0.01},
                      zoo={"spec": "demo"}, optim__lr=0.003, train__steps=30, train__log_every=5,
                      train__eval_every=0, train__checkpoint_every=0)
    run = build_run(cfg)
    assert all(g.noise == 0.5 for g in _gates(run.model))
    res = fit(run.model, run.task, run.data, cfg, None, method=run.method, report=False,
              run_info=run.info(), record=run.record())
    losses = [e["loss"] for e in res.history if e["split"] == "train"]
    assert len(losses) == 6
    assert (losses[-1] + losses[-2]) / 2 < 0.5 * losses[0], losses
    b = float(run.method.last_balance)
    assert 0 < b < float("inf")  # computed in the training steps


def test_exported_lite_model_is_unaffected(tmp_path):
    cfg = _cfg(steps=8, lite=True, gate_noise=1.0, gate_balance=0.1, gate_init="default")
    run = build_run(cfg)
    res = fit(run.model, run.task, run.data, cfg, tmp_path / "run", method=run.method,
              report=False, run_info=run.info(), record=run.record())
    zm = res.model.eval()
    assert int(next(iter(zm.adaagg_layers().values())).te.steps) == 8
    x = _batch(run, 12)[run.task.input_field]
    with torch.no_grad():
        y1, y2 = zm(x), zm(x)
        plain = zm.export()
        y_plain = plain(x)
    assert torch.equal(y1, y2)  # eval: no noise
    assert not any(isinstance(m, (AdaAggBase, Gate)) for m in plain.modules())
    torch.testing.assert_close(y_plain, y1, atol=1e-5, rtol=1e-5)
    # the plain model has the tensors of an export without the remedies
    ref = build_run(_cfg(lite=True)).model.eval().export()
    assert plain.state_dict().keys() == ref.state_dict().keys()
    # the run's model file loads (structure rebuilt from the config with its gate options)
    loaded = zootune.load(tmp_path / "run" / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y1)


# ---- a wider gate for thin layers ---------------------------------------------------------------


def _dead_on_unit_interval(gate: Gate) -> bool:
    """Every hidden unit's pre-activation negative for every pooled input in [0, 1] (a grey-scale
    first conv's mean intensity): the gate is constant and its first layer gets no gradient."""
    x = torch.linspace(0, 1, 101).unsqueeze(1)
    return bool((gate.fc1(x) <= 0).all())


def test_wider_gate_avoids_a_dead_thin_first_layer_gate():
    narrow, wide = 0, 0
    for seed in range(200):
        torch.manual_seed(seed)
        narrow += _dead_on_unit_interval(Gate(1, 3))  # default hidden: 1 // 4 + 1 = 1 unit
        torch.manual_seed(seed)
        wide += _dead_on_unit_interval(Gate(1, 3, hidden=16))
    assert narrow > 40 and wide == 0  # 37.5% expected with one unit (U(-1, 1) weight and bias)
    # gate_hidden reaches the thin first conv (1 input channel) of a zoo_tuning model, which trains
    run = build_run(_cfg(gate_hidden=16, gate_init="default"))
    first = next(iter(run.model.adaagg_layers().values()))
    assert first.gate.fc1.in_features == 1 and first.gate.fc1.out_features == 16
    loss, _ = run.method.loss(run.model.train(), _batch(run), run.task)
    loss.backward()
    assert first.gate.fc1.weight.grad.abs().sum() > 0
