"""``arch=package.module:callable``: raw checkpoints loaded into a model builder of one's own."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from zootune.zoo import CheckpointError, ZooSpecError, load, load_zoo

BUILDER = textwrap.dedent('''
    import torch.nn as nn

    class Net(nn.Module):
        """Head size is a required argument (like the demo's MiniCNN)."""
        zootune_preprocessing = {"input_size": [1, 12, 12], "resize_size": None,
                                 "mean": [0.5], "std": [0.25]}

        def __init__(self, num_classes, width=8):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width),
                                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.features(x))

    def wide(num_classes=5):
        return Net(num_classes, width=16)

    NOT_CALLABLE = 3

    def not_a_module():
        return "hello"
''')


@pytest.fixture()
def builder_module(tmp_path, monkeypatch):
    name = f"zt_arch_builder_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _save(model, path, metadata=None):
    state = {k: v.detach().half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata or {"format": "pt"})


def test_file_into_imported_class_with_required_num_classes(builder_module, tmp_path):
    mod = __import__(builder_module)
    torch.manual_seed(0)
    ref = mod.Net(7)
    with torch.no_grad():
        ref.features[1].running_mean.uniform_(-1, 1)
    path = tmp_path / "a.safetensors"
    _save(ref, path)
    m = load(f"file:{path} arch={builder_module}:Net")
    assert type(m).__name__ == "Net" and m.head.out_features == 7  # head size from the checkpoint
    sd, want = m.state_dict(), ref.state_dict()
    for k, v in want.items():  # float16 file, float32 model
        assert sd[k].dtype == v.dtype
        assert torch.allclose(sd[k].float(), v.half().float()), k
    # the builder's declared preprocessing is used
    pre = m.zootune_preprocessing
    assert pre.input_size == (1, 12, 12) and pre.mean == (0.5,) and pre.std == (0.25,)


def test_checkpoint_metadata_overrides_declared_preprocessing(builder_module, tmp_path):
    mod = __import__(builder_module)
    path = tmp_path / "b.safetensors"
    meta = {"input_size": [1, 16, 16], "resize_size": None, "mean": [0.0], "std": [1.0]}
    _save(mod.Net(3), path, {"format": "pt", "preprocessing": json.dumps(meta)})
    m = load(f"file:{path} arch={builder_module}:Net")
    assert m.zootune_preprocessing.input_size == (1, 16, 16)
    assert m.zootune_preprocessing.std == (1.0,)


def test_function_builder_and_zoo_with_different_heads(builder_module, tmp_path):
    mod = __import__(builder_module)
    paths = []
    for i, c in enumerate((4, 9)):
        torch.manual_seed(i)
        paths.append(tmp_path / f"m{i}.safetensors")
        _save(mod.wide(c), paths[-1])
    zoo = load_zoo([f"file:{p} arch={builder_module}:wide" for p in paths], strip_heads=True,
                   check_related=False)
    assert zoo.names == ["m0", "m1"]
    x = torch.rand(2, 1, 12, 12)
    assert zoo[0](x).shape == (2, 16) and zoo[1](x).shape == (2, 16)
    assert zoo.preprocessing.input_size == (1, 12, 12)


def test_demo_architecture_by_import_path(tmp_path):
    from zootune.demo.model import MiniCNN

    torch.manual_seed(1)
    ref = MiniCNN(11, width=8)
    path = tmp_path / "demo.safetensors"
    _save(ref, path)
    m = load(f"file:{path} arch=zootune.demo.model:MiniCNN", strict=False)
    # default width is 32: the trunk does not fit, and strict=false leaves it random
    assert m.width == 32
    # MiniCNN declares the demo's input: 1x16x16 in [0, 1], not normalised
    pre = m.zootune_preprocessing
    assert pre.input_size == (1, 16, 16) and pre.mean == (0.0,) and pre.std == (1.0,)
    assert pre.source == "declared by zootune.demo.model:MiniCNN"
    with pytest.raises(CheckpointError, match="does not fit MiniCNN"):
        load(f"file:{path} arch=zootune.demo.model:MiniCNN")
    # kwargs fit the trunk
    m = load({"spec": f"file:{path}", "arch": "zootune.demo.model:MiniCNN", "kwargs": {"width": 8}})
    assert m.width == 8 and torch.equal(m.head.weight, ref.head.weight.half().float())


def test_undeclared_preprocessing_keeps_the_first_conv_channel_count():
    m = load("random:zootune.models:small_cnn")  # declares nothing, grey-scale input
    pre = m.zootune_preprocessing
    assert pre.input_size == (1, 224, 224) and len(pre.mean) == 1 and len(pre.std) == 1
    assert pre.source.startswith("assumed: ImageNet default, 1 channel")


@pytest.mark.parametrize("arch, message", [
    ("no_such_module_xyz:Net", "cannot import module 'no_such_module_xyz'"),
    ("{mod}:Missing", "has no attribute 'Missing'"),
    ("{mod}:NOT_CALLABLE", "is not callable"),
    ("{mod}:not_a_module", "returned str, not an nn.Module"),
    ("{mod}:Net.__init__.x", "has no attribute"),
    ("bad-name:Net", "package.module:callable"),
])
def test_import_errors_are_one_line(builder_module, tmp_path, arch, message):
    path = tmp_path / "c.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(ZooSpecError) as err:
        load(f"file:{path} arch={arch.format(mod=builder_module)}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_plain_name_mentions_import_paths(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(ZooSpecError, match="package.module:callable"):
        load(f"file:{path} arch=resnet5000")
