"""Gate statistics are recorded only when asked: ``track_gates`` on AdaAgg layers and ZooModel."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zootune
from zootune.layers import AdaAggBase, AdaAggConv2d
from zootune.models import small_cnn


def _zoo(m: int = 3, seed: int = 0) -> list[nn.Module]:
    """Small CNNs without norm layers: every buffer of the ZooModel is a gate statistic."""
    torch.manual_seed(seed)
    return [small_cnn(num_classes=4, in_channels=3, widths=(4, 6), norm="none") for _ in range(m)]


def _buffers(zm: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in zm.named_buffers()}


def _step(zm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    zm.zero_grad(set_to_none=True)
    y = zm(x)
    y.square().mean().backward()
    return y.detach()


@pytest.mark.parametrize("lite", [False, True])
def test_tracking_off_freezes_every_buffer_but_not_outputs_or_gradients(lite):
    zm_on = zootune.zoo_tune(_zoo(), lite=lite, align=True).train()
    zm_off = copy.deepcopy(zm_on)
    assert any(".te." in k for k, _ in zm_on.named_buffers())
    x = torch.randn(5, 3, 8, 8)
    before = _buffers(zm_off)
    zm_off.track_gates(False)
    y_off = _step(zm_off, x)
    y_on = _step(zm_on, x)
    # off: bit-identical statistics (accumulator and step counter of every layer)
    after = _buffers(zm_off)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    for layer in zm_off.adaagg_layers().values():
        assert int(layer.te.steps) == 0 and torch.equal(layer.te.accumulator,
                                                        torch.zeros_like(layer.te.accumulator))
    # on: they moved
    for layer in zm_on.adaagg_layers().values():
        assert int(layer.te.steps) == 1 and layer.te.accumulator.abs().sum() > 0
    # the computation itself is the same, and every trainable parameter still learns
    assert torch.equal(y_on, y_off)
    grads_on = {n: p.grad for n, p in zm_on.named_parameters()}
    for n, p in zm_off.named_parameters():
        assert p.grad is not None, n
        assert torch.equal(p.grad, grads_on[n]), n
    assert any(n.endswith("gate.fc2.weight") and p.grad.abs().sum() > 0
               for n, p in zm_off.named_parameters())


def test_lite_training_forward_uses_the_batch_mean_gate_either_way():
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 4, 3, padding=1) for _ in range(3)]
    layer = AdaAggConv2d(convs, align=False, lite=True, gate="softmax", gate_init="default",
                         gate_hidden=None, te_momentum=0.9, recompute=False)
    layer.train()
    x = torch.randn(6, 3, 5, 5)
    ref = layer(x).detach()
    layer.te.reset()
    layer.track_gates = False
    out = layer(x)
    assert torch.equal(out.detach(), ref)
    assert int(layer.te.steps) == 0
    out.sum().backward()
    assert layer.gate.fc1.weight.grad is not None and layer.gate.fc1.weight.grad.abs().sum() > 0


def test_default_is_on_so_a_plain_training_loop_keeps_the_ensemble():
    zm = zootune.zoo_tune(_zoo(), lite=True).train()
    assert all(layer.track_gates is True for layer in zm.adaagg_layers().values())
    opt = torch.optim.SGD(zm.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        zm(torch.randn(4, 3, 8, 8)).sum().backward()
        opt.step()
    assert all(int(layer.te.steps) == 3 for layer in zm.adaagg_layers().values())
    zm.eval()
    zm(torch.randn(2, 3, 8, 8))  # eval forwards never record
    assert all(int(layer.te.steps) == 3 for layer in zm.adaagg_layers().values())


def test_call_sets_and_context_manager_restores_each_layers_previous_value():
    zm = zootune.zoo_tune(_zoo(), lite=False)
    layers = list(zm.adaagg_layers().values())
    assert len(layers) >= 3

    def states():
        return [layer.track_gates for layer in layers]

    result = zm.track_gates(False)  # a plain call: stays set
    assert states() == [False] * len(layers)
    assert result.mode is False
    zm.track_gates()  # default: on
    assert states() == [True] * len(layers)
    with zm.track_gates(False) as ctx:
        assert ctx.mode is False and states() == [False] * len(layers)
    assert states() == [True] * len(layers)
    # per-layer mixed states come back exactly, also when the block raises
    layers[1].track_gates = False
    mixed = states()
    with zm.track_gates(True):
        assert states() == [True] * len(layers)
    assert states() == mixed
    with pytest.raises(RuntimeError):
        with zm.track_gates(False):
            raise RuntimeError("boom")
    assert states() == mixed
    # nested
    with zm.track_gates(False):
        with zm.track_gates(True):
            assert states() == [True] * len(layers)
        assert states() == [False] * len(layers)
    assert states() == mixed


def test_flag_survives_deepcopy_is_not_saved_and_is_absent_from_exports(tmp_path):
    zm = zootune.zoo_tune(_zoo(), lite=True).train()
    x = torch.randn(3, 3, 8, 8)
    zm(x)  # one recorded step
    zm.track_gates(False)
    assert "track_gates=False" in repr(zm)
    twin = copy.deepcopy(zm)
    assert all(layer.track_gates is False for layer in twin.adaagg_layers().values())
    assert not any("track" in k for k in zm.state_dict())
    path = zootune.save(zm, tmp_path / "zm.safetensors")
    loaded = zootune.load(path, template=_zoo(1)[0])
    for a, b in zip(zm.adaagg_layers().values(), loaded.adaagg_layers().values()):
        assert torch.equal(a.te.accumulator, b.te.accumulator) and int(b.te.steps) == 1
        assert b.track_gates is True  # like track_running_stats: a setting, not state
    zm.eval()
    loaded.eval()
    assert torch.allclose(zm(x), loaded(x), atol=1e-6)
    plain = zm.export()
    assert not any(isinstance(m, AdaAggBase) or hasattr(m, "track_gates") for m in plain.modules())
    assert torch.allclose(plain(x), zm(x), atol=1e-5)
    # a layer unpickled from before the attribute existed falls back to the class default
    layer = next(iter(zm.adaagg_layers().values()))
    del layer.__dict__["track_gates"]
    assert layer.track_gates is True
