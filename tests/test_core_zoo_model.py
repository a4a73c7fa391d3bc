"""zoo_tune on whole models: averaging, batch independence, export, save/load, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import zootune
from zootune.errors import CheckpointError, LayerSelectionError, ZooMismatchError, ZootuneError
from zootune.layers import AdaAggConv2d, AdaAggLinear


class SmallNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 16, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


def make_zoo(m=3, seed=0):
    torch.manual_seed(seed)
    zoo = [SmallNet() for _ in range(m)]
    for net in zoo:  # non-trivial BN statistics and affine parameters
        for bn in (net.bn1, net.bn3):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_()
    return zoo


def averaged_model(zoo):
    avg = copy.deepcopy(zoo[0])
    with torch.no_grad():
        for key, t in avg.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.stack([z.state_dict()[key] for z in zoo]).mean(0))
    return avg


@pytest.mark.parametrize("lite", [False, True])
def test_identity_alignment_equal_gates_is_weight_averaging(lite):
    zoo = make_zoo()
    zm = zootune.zoo_tune(zoo, align=True, lite=lite, gate="normalized", gate_init="uniform")
    zm.eval()
    x = torch.randn(4, 3, 12, 12)
    torch.testing.assert_close(zm(x), averaged_model(zoo).eval()(x), atol=1e-5, rtol=1e-5)


def test_sources_are_not_modified():
    zoo = make_zoo()
    before = [copy.deepcopy(z.state_dict()) for z in zoo]
    zm = zootune.zoo_tune(zoo, align=True)
    opt = torch.optim.SGD(zm.parameters(), lr=0.1)
    zm(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    for z, b in zip(zoo, before):
        for k, v in z.state_dict().items():
            assert torch.equal(v, b[k]), k
        assert not any(isinstance(mod, (AdaAggConv2d, AdaAggLinear)) for mod in z.modules())


def test_eval_output_of_a_sample_does_not_depend_on_its_batch():
    zm = zootune.zoo_tune(make_zoo(), align=True, gate_init="default")
    zm.eval()
    x = torch.randn(6, 3, 12, 12)
    with torch.no_grad():
        full = zm(x)
        alone = torch.cat([zm(x[i : i + 1]) for i in range(6)])
        shuffled = zm(torch.cat([x[3:], torch.randn(5, 3, 12, 12)]))[:3]
    torch.testing.assert_close(full, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full[3:], shuffled, atol=1e-5, rtol=1e-5)


def test_per_sample_gates_differ_between_samples():
    zoo = make_zoo()
    zm = zootune.zoo_tune(zoo, gate_init="default")
    zm.train()
    seen = {}
    layer = zm.adaagg_layers()["conv2"]
    layer.gate.register_forward_hook(lambda mod, inp, out: seen.__setitem__("a", out))
    zm(torch.randn(4, 3, 8, 8))
    assert seen["a"].std(dim=0).max() > 0


def _train_steps(zm, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(zm.parameters(), lr=0.05)
    zm.train()
    for _ in range(steps):
        x = torch.randn(6, 3, 12, 12, generator=g)
        opt.zero_grad()
        zm(x).pow(2).mean().backward()
        opt.step()
    return zm


def test_lite_export_is_plain_same_class_same_outputs():
    zoo = make_zoo()
    zm = _train_steps(zootune.zoo_tune(zoo, align=True, lite=True, gate_init="default"))
    zm.eval()
    plain = zm.export()
    assert type(plain) is SmallNet
    assert not any(isinstance(mod, (AdaAggConv2d, AdaAggLinear)) for mod in plain.modules())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_plain == sum(p.numel() for p in zoo[0].parameters())
    assert plain.state_dict().keys() == zoo[0].state_dict().keys()
    x = torch.randn(8, 3, 12, 12)
    with torch.no_grad():
        diff = (plain(x) - zm(x)).abs().max().item()
    assert diff <= 1e-4
    # the merged weights are sum_i abar_i T_i W_i
    layer = zm.adaagg_layers()["conv1"]
    abar = zm.gate_values()["conv1"]
    T = layer.align.matrices().detach()
    expect = sum(abar[i] * torch.einsum("oc,c...->o...", T[i], layer.weight[i].detach())
                 for i in range(3))
    torch.testing.assert_close(plain.conv1.weight.detach(), expect)


def test_export_of_per_sample_model_needs_explicit_averaging():
    zm = _train_steps(zootune.zoo_tune(make_zoo(), gate_init="default"))
    with pytest.raises(ZootuneError, match="lite=False"):
        zm.export()
    plain = zm.export(average_gates=True)
    assert type(plain) is SmallNet
    gv = zm.gate_values()
    assert set(gv) == set(zm.layer_names) and all(v.shape == (3,) for v in gv.values())


def test_gate_values_are_abar_in_lite_mode():
    zm = zootune.zoo_tune(make_zoo(), lite=True, gate_init="default")
    gv0 = zm.gate_values()
    for name, layer in zm.adaagg_layers().items():
        torch.testing.assert_close(gv0[name], layer.gate.neutral().detach())
    _train_steps(zm, steps=2)
    for name, layer in zm.adaagg_layers().items():
        assert int(layer.te.steps) == 2
        torch.testing.assert_close(zm.gate_values()[name], layer.te.value())


@pytest.mark.parametrize("lite", [False, True])
def test_save_load_round_trip(tmp_path, lite):
    zm = _train_steps(zootune.zoo_tune(make_zoo(), lite=lite, align="default", gate="sigmoid"))
    path = zootune.save(zm, tmp_path / "run" / "model.safetensors")
    zm2 = zootune.load(path, template=SmallNet)
    assert isinstance(zm2, zootune.ZooModel)
    assert zm2.settings["layers"] == zm.settings["layers"]
    assert zm2.settings["align"] == zm.settings["align"]
    zm.eval(), zm2.eval()
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(zm2(x), zm(x))
    for name in zm.layer_names:
        torch.testing.assert_close(zm2.gate_values()[name], zm.gate_values()[name])


def test_exported_plain_model_loads_without_zootune(tmp_path):
    zm = _train_steps(zootune.zoo_tune(make_zoo(), lite=True))
    zm.eval()
    plain = zm.export()
    path = zootune.save(plain, tmp_path / "plain.safetensors")
    fresh = SmallNet()
    fresh.load_state_dict(load_file(str(path)))
    fresh.eval()
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), zm(x), atol=1e-5, rtol=1e-5)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        zootune.load(tmp_path / "missing.safetensors", template=SmallNet)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError):
        zootune.load(bad, template=SmallNet)
    zm = zootune.zoo_tune(make_zoo())
    path = zootune.save(zm, tmp_path / "ok.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        zootune.load(truncated, template=SmallNet)
    with pytest.raises(CheckpointError, match="shape"):
        zootune.load(path, template=lambda: SmallNet(classes=7))


def test_layers_and_rest_selection():
    zoo = make_zoo()
    zm = zootune.zoo_tune(zoo, layers=["conv1", "conv2"], rest=1, align=False)
    assert zm.layer_names == ["conv1", "conv2"]
    assert isinstance(zm.model.conv3, nn.Conv2d) and not isinstance(zm.model.conv3, AdaAggConv2d)
    torch.testing.assert_close(zm.model.conv3.weight, zoo[1].conv3.weight)
    torch.testing.assert_close(zm.model.bn1.running_mean, zoo[1].bn1.running_mean)
    zm_avg = zootune.zoo_tune(zoo, exclude=["fc"])
    assert "fc" not in zm_avg.layer_names
    torch.testing.assert_close(
        zm_avg.model.fc.weight, torch.stack([z.fc.weight for z in zoo]).mean(0)
    )


def test_align_options():
    zoo = make_zoo()
    assert zootune.zoo_tune(zoo).settings["align"] == ["conv1", "conv2"]  # k>1 convs only
    assert zootune.zoo_tune(zoo, align=True).settings["align"] == ["conv1", "conv2", "conv3", "fc"]
    assert zootune.zoo_tune(zoo, align=False).settings["align"] == []
    assert zootune.zoo_tune(zoo, align=["conv3"]).settings["align"] == ["conv3"]
    with pytest.raises(LayerSelectionError, match="align pattern 'layer3"):
        zootune.zoo_tune(zoo, align="paper")


def test_param_groups_cover_every_trainable_parameter_once():
    zm = zootune.zoo_tune(make_zoo(), exclude=["fc"])
    groups = zm.param_groups(0.1, gate_lr=1.0, align_lr=0.01, head=["fc"], head_lr=0.5)
    by_name = {g["name"]: g for g in groups}
    assert by_name["gate"]["lr"] == 1.0 and by_name["head"]["lr"] == 0.5
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in zm.parameters() if p.requires_grad)
    zm.freeze_gates()
    assert all(g["name"] != "gate" for g in zm.param_groups(0.1))


# ---- errors ------------------------------------------------------------------------------------


def test_error_fewer_than_two_models():
    with pytest.raises(ZooMismatchError, match="at least 2"):
        zootune.zoo_tune([SmallNet()])
    with pytest.raises(ZooMismatchError, match="list or tuple"):
        zootune.zoo_tune(SmallNet())


def test_error_shapes_differ_names_parameter_and_shapes():
    with pytest.raises(ZooMismatchError, match=r"zoo members 0 and 1 differ at 'fc.weight': "
                       r"shape \(5, 16\) in member 0 but \(7, 16\) in member 1 "
                       r"\(a classification head: strip the heads"):
        zootune.zoo_tune([SmallNet(5), SmallNet(7)])


def test_error_messages_use_the_zoo_names_and_hint_only_at_heads():
    from zootune.zoo import Zoo

    other = SmallNet()
    other.conv3 = nn.Conv2d(8, 32, 1)
    zoo = Zoo([SmallNet(), SmallNet(), other], ["imagenet", "moco", "wide"])
    with pytest.raises(ZooMismatchError) as exc:
        zootune.zoo_tune(zoo)
    msg = str(exc.value)
    assert "zoo members 'imagenet' and 'wide' differ at 'conv3.weight'" in msg
    assert "(16, 8, 1, 1) in 'imagenet' but (32, 8, 1, 1) in 'wide'" in msg
    assert "classification head" not in msg  # a trunk layer
    # explicit names win over the Zoo's
    with pytest.raises(ZooMismatchError, match="in 'a' but .* in 'c'"):
        zootune.validate_zoo(zoo, names=["a", "b", "c"])


def test_error_head_present_in_one_member_only():
    stripped = SmallNet()
    stripped.fc = nn.Identity()
    with pytest.raises(ZooMismatchError, match=r"'fc.weight' \(5, 16\) is in member 0 but not in "
                       r"member 1 \(a classification head"):
        zootune.zoo_tune([SmallNet(), stripped])
    with pytest.raises(ZooMismatchError, match=r"'fc.weight' \(5, 16\) is in member 1 but not in "
                       r"member 0 \(a classification head"):
        zootune.zoo_tune([stripped, SmallNet()])


def test_error_module_trees_differ():
    # tensors differ too: the tensor check speaks first, with the key and its shape
    other = SmallNet()
    other.conv3 = nn.Sequential(nn.Conv2d(8, 16, 1))
    with pytest.raises(ZooMismatchError, match=r"'conv3.weight' \(16, 8, 1, 1\) is in member 0 but "
                       r"not in member 1"):
        zootune.zoo_tune([SmallNet(), other])

    # same tensors, different classes: only the module tree tells them apart
    class OtherBN(nn.BatchNorm2d):
        pass

    other = SmallNet()
    other.bn1 = OtherBN(8)
    with pytest.raises(ZooMismatchError, match=r"different module tree: 'bn1' \(BatchNorm2d\) in "
                       r"member 0 vs 'bn1' \(OtherBN\) in member 2"):
        zootune.zoo_tune([SmallNet(), SmallNet(), other])
    other = SmallNet()
    other.act = nn.GELU()  # a module without tensors, registered last
    with pytest.raises(ZooMismatchError, match=r"different module tree: 'act' \(GELU\) is only in member 1"):
        zootune.zoo_tune([SmallNet(), other])


def test_error_non_finite_names_model_and_tensor():
    zoo = make_zoo()
    with torch.no_grad():
        zoo[2].conv3.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ZooMismatchError, match=r"zoo member 2: weight 'conv3.weight' holds 1 "
                       r"non-finite value\(s\) \(NaN\)"):
        zootune.zoo_tune(zoo)


def test_validate_zoo_and_check_same_architecture_are_one_check():
    """zootune.validate_zoo adds only the container checks to zootune.zoo.check_same_architecture:
    for any zoo of two or more modules both raise the same error with the same message."""
    from zootune.zoo import check_same_architecture

    class OtherBN(nn.BatchNorm2d):
        pass

    def variants():
        yield [SmallNet(5), SmallNet(7)]
        stripped = SmallNet()
        stripped.fc = nn.Identity()
        yield [SmallNet(), stripped]
        other = SmallNet()
        other.bn1 = OtherBN(8)
        yield [SmallNet(), other]
        nan = make_zoo(2)
        with torch.no_grad():
            nan[1].bn1.running_var[0] = float("inf")
        yield nan

    for models in variants():
        with pytest.raises(ZooMismatchError) as a:
            zootune.validate_zoo(models)
        with pytest.raises(ZooMismatchError) as b:
            check_same_architecture(models)
        assert type(a.value) is type(b.value) and str(a.value) == str(b.value)
        names = [f"n{i}" for i in range(len(models))]
        with pytest.raises(ZooMismatchError) as c:
            zootune.validate_zoo(models, names)
        with pytest.raises(ZooMismatchError) as d:
            check_same_architecture(models, names)
        assert str(c.value) == str(d.value) and "'n1'" in str(c.value)
    zootune.validate_zoo(make_zoo())
    check_same_architecture(make_zoo(), ["a", "b", "c"])


def test_error_unsupported_layer_selected_explicitly():
    with pytest.raises(LayerSelectionError, match="'bn1' cannot be aggregated"):
        zootune.zoo_tune(make_zoo(), layers=["bn1"])

    class WeirdConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    zoo = make_zoo()
    for z in zoo:
        z.conv3 = WeirdConv(8, 16, 1)
    with pytest.raises(LayerSelectionError, match="'conv3' cannot be aggregated: WeirdConv overrides"):
        zootune.zoo_tune(zoo, layers=["conv3"])
    # ...and the default selection skips it silently
    assert "conv3" not in zootune.zoo_tune(zoo).layer_names


def test_error_pattern_matches_nothing():
    with pytest.raises(LayerSelectionError, match="'layer9.*' matches no module"):
        zootune.zoo_tune(make_zoo(), layers=["layer9.*"])
    with pytest.raises(LayerSelectionError, match="exclude pattern 'head'"):
        zootune.zoo_tune(make_zoo(), exclude=["head"])


def test_error_bad_options():
    with pytest.raises(ZootuneError, match="gate must be one of"):
        zootune.zoo_tune(make_zoo(), gate="relu")
    with pytest.raises(ZootuneError, match="rest must be"):
        zootune.zoo_tune(make_zoo(), rest=5)


def test_recalibrate_batchnorm_matches_statistics_of_target_data():
    zm = zootune.zoo_tune(make_zoo(), lite=True)
    data = [torch.randn(8, 3, 12, 12) + 2.0 for _ in range(4)]
    zootune.recalibrate_batchnorm(zm, data)
    assert zm.training  # mode restored
    zm.eval()
    feats = []
    hook = zm.model.conv1.register_forward_hook(lambda mod, inp, out: feats.append(out))
    with torch.no_grad():
        for x in data:
            zm(x)
    hook.remove()
    f = torch.cat(feats)
    torch.testing.assert_close(zm.model.bn1.running_mean, f.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    for layer in zm.adaagg_layers().values():
        assert int(layer.te.steps) == 0  # the temporal ensemble is untouched


def test_inference_mode_then_training_then_no_grad():
    """Cached weights and scratch buffers made under inference_mode must not break training."""
    zm = zootune.zoo_tune(make_zoo(), gate_init="default")
    x = torch.randn(3, 3, 12, 12)
    zm.eval()
    with torch.inference_mode():
        zm(x)
    zm.train()
    zm(x).sum().backward()
    torch.optim.SGD(zm.parameters(), lr=0.1).step()
    zm.eval()
    with torch.inference_mode():
        y1 = zm(x)
    with torch.no_grad():
        y2 = zm(x)
    y3 = zm(x)  # autograd on: nothing cached
    torch.testing.assert_close(y1, y3)
    torch.testing.assert_close(y2, y3)


@pytest.mark.parametrize("lite", [False, True])
def test_count_flops_does_not_depend_on_what_earlier_forwards_cached(lite):
    """``count_flops`` counts what one forward computes: the alignment once per training
    forward (new parameters every step), not at inference (data-independent, prepared
    beforehand) — whatever caches earlier forwards without autograd left behind."""
    from zootune.report import count_flops

    zm = zootune.zoo_tune(make_zoo(), gate_init="default", lite=lite)
    x = torch.randn(3, 3, 12, 12)
    counts = {train: count_flops(zm, x, train=train) for train in (True, False)}
    with torch.no_grad():
        zm.eval()
        zm(x)  # fills the eval caches (aligned / merged weights)
        zm.train()
        zm(x[:1])  # a training-mode forward without autograd fills the aligned cache
    assert {train: count_flops(zm, x, train=train) for train in (True, False)} == counts
    assert counts[True] > counts[False]
