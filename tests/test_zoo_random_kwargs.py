"""Spec additions: ``kwargs`` for the architecture builder and ``random:ARCH seed=N``."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zootune.models import small_cnn
from zootune.zoo import CheckpointError, ZooSpecError, load, load_zoo, parse_spec

ARCH = "zootune.models:small_cnn"
KW = {"widths": [4, 8], "norm": "group"}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------- parsing


def test_parse_random_specs_text_and_mapping():
    s = parse_spec(f"random:{ARCH} seed=3")
    assert (s.kind, s.target, s.arch, s.seed, s.label) == ("random", ARCH, ARCH, 3, "random3")
    s = parse_spec("random:torchvision:resnet18")
    assert s.arch == "torchvision:resnet18" and s.seed is None and s.label == "random0"
    s = parse_spec({"spec": f"random:{ARCH}", "seed": 2, "kwargs": KW, "name": "scratch"})
    assert s.seed == 2 and s.kwargs == KW and s.label == "scratch"
    assert s.text == f"random:{ARCH} seed=2"  # the text names what determines the weights
    s = parse_spec({"spec": "file:a b.safetensors", "arch": ARCH, "kwargs": KW})
    assert s.kwargs == KW and s.arch == ARCH and s.text == f"file:a b.safetensors arch={ARCH}"
    assert parse_spec(f"file:a.pth arch={ARCH}").kwargs == {}


@pytest.mark.parametrize("spec, message", [
    (f"random:{ARCH} arch=resnet18", "names its architecture after 'random:'"),
    ({"spec": f"random:{ARCH}", "arch": "resnet18"}, "names its architecture after 'random:'"),
    (f"random:{ARCH} seed=x", "seed='x' is not an integer"),
    (f"random:{ARCH} seed=-1", "must be >= 0"),
    ({"spec": f"random:{ARCH} seed=1", "seed": 2}, "seed given twice"),
    ({"spec": f"file:a.pth arch={ARCH}", "arch": "resnet18"}, "arch given twice"),
    ("torchvision:resnet18 seed=1", "seed= is an option of random: specs only"),
    ({"spec": "torchvision:resnet18", "kwargs": {"num_classes": 3}}, "kwargs are passed to the arch= builder"),
    ({"spec": f"file:a.pth arch={ARCH}", "kwargs": [1, 2]}, "kwargs must be a mapping"),
    ({"spec": f"file:a.pth arch={ARCH}", "kwarg": {}}, "unknown option"),
    ("random:", "nothing after 'random:'"),
])
def test_bad_specs_give_one_clear_error(spec, message):
    with pytest.raises(ZooSpecError) as err:
        parse_spec(spec)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------- random:


def test_random_weights_are_a_function_of_arch_kwargs_and_seed_only():
    spec = {"spec": f"random:{ARCH}", "seed": 5, "kwargs": KW}
    torch.manual_seed(123)
    a = load(spec)
    torch.manual_seed(456)
    b = load(spec)
    assert _same_weights(a, b)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        manual = small_cnn(**KW)
    assert _same_weights(a, manual)
    c = load({**spec, "seed": 6})
    assert not _same_weights(a, c)
    d = load(f"random:{ARCH}")  # seed 0, default kwargs
    e = load(f"random:{ARCH} seed=0")
    assert _same_weights(d, e) and d.fc.in_features == 64
    assert "seed 5" in a.zootune_load_report.summary()


def test_random_leaves_the_global_rng_untouched():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    load(f"random:{ARCH} seed=1")
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(3), expected)


def test_kwargs_reach_the_builder():
    m = load({"spec": f"random:{ARCH}", "kwargs": KW})
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8]
    assert any(isinstance(mod, nn.GroupNorm) for mod in m.modules())
    with pytest.raises(ZooSpecError, match="calling small_cnn.*widthz"):
        load({"spec": f"random:{ARCH}", "kwargs": {"widthz": [4]}})


def test_zoo_of_random_members():
    zoo = load_zoo([f"random:{ARCH} seed=0", f"random:{ARCH} seed=1", f"random:{ARCH} seed=1"])
    assert zoo.names == ["random0", "random1", "random1#2"]
    assert zoo.relatedness is None  # random weights: relatedness is not computed by default
    assert _same_weights(zoo[1], zoo[2]) and not _same_weights(zoo[0], zoo[1])
    assert zoo.specs[0] == f"random:{ARCH} seed=0"


# ---------------------------------------------------------------------------------- file + kwargs


def test_file_spec_with_kwargs_loads_into_the_configured_builder(tmp_path):
    torch.manual_seed(0)
    ref = small_cnn(num_classes=3, **KW)
    path = tmp_path / "a.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    m = load({"spec": f"file:{path}", "arch": ARCH, "kwargs": KW, "name": "a"})
    assert _same_weights(m, ref) and m.fc.out_features == 3  # head size from the checkpoint
    with pytest.raises(CheckpointError, match="does not fit SmallCNN"):
        load({"spec": f"file:{path}", "arch": ARCH})  # default widths (16, 32, 64)
    zoo = load_zoo([{"spec": f"file:{path}", "arch": ARCH, "kwargs": KW, "name": n}
                    for n in ("a", "b")], warn=False)
    assert zoo.names == ["a", "b"] and all(_same_weights(z, ref) for z in zoo)


def test_unknown_option_error_names_the_unknown_key():
    import pytest

    from zootune.zoo import ZooSpecError, parse_spec

    with pytest.raises(ZooSpecError, match="unknown option 'num_classes'"):
        parse_spec("random:zootune.demo.model:MiniCNN seed=0 num_classes=5 name=m0")
