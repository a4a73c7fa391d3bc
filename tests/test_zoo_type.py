"""The one Zoo type, and ``load_zoo(strip_heads="differing")``."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import zootune
from zootune.zoo import (
    KeyMapReport,
    Preprocessing,
    Zoo,
    ZooMismatchError,
    ZooSpecError,
    heads_differ,
    load_zoo,
)

ARCH = "zootune.models:small_cnn"


def _random(seed: int, classes: int = 10, **kw) -> dict:
    return {"spec": f"random:{ARCH}", "seed": seed,
            "kwargs": {"num_classes": classes, "widths": [4, 8], **kw}}


# ---------------------------------------------------------------------------------- Zoo


def test_zoo_built_by_hand_has_every_attribute():
    models = [nn.Linear(3, 2), nn.Linear(3, 2)]
    zoo = Zoo(models)
    assert list(zoo) == models and zoo.models == models and zoo.models is not zoo.models
    assert zoo.names == ["source0", "source1"] and zoo.specs == ["", ""]
    assert zoo.preprocessing is None and zoo.relatedness is None
    assert zoo.warnings == [] and zoo.info == {}
    assert all(isinstance(r, KeyMapReport) for r in zoo.reports) and len(zoo.reports) == 2
    assert repr(zoo) == "Zoo(2 members: source0, source1)"
    empty = Zoo()
    assert len(empty) == 0 and empty.names == [] and empty.info == {}
    pre = Preprocessing(input_size=(1, 8, 8))
    zoo = Zoo(models, ["a", "b"], preprocessing=pre, info={"members": {"a": {"x": 1}}})
    assert zoo.names == ["a", "b"] and zoo.preprocessing is pre and zoo.info["members"]["a"] == {"x": 1}
    with pytest.raises(ValueError, match="1 names for 2 models"):
        Zoo(models, ["a"])
    with pytest.raises(TypeError, match="zoo member 1 is a str"):
        Zoo([nn.Linear(1, 1), "x"])


def test_zoo_picks_up_what_load_attached_and_infos_are_not_shared():
    zoo = load_zoo([_random(0), _random(1)])
    by_hand = Zoo(list(zoo), zoo.names)
    assert by_hand.specs == zoo.specs and by_hand.reports == zoo.reports
    assert by_hand.preprocessing == zoo.preprocessing
    a, b = Zoo([nn.Linear(1, 1)]), Zoo([nn.Linear(1, 1)])
    a.info["k"] = 1
    a.warnings.append("w")
    assert b.info == {} and b.warnings == []


def test_deepcopy_pickle_and_copy_models():
    zoo = load_zoo([_random(0), _random(1)], check_related=True, warn=False)
    zoo.info["members"] = {"random0": {"domain": "x"}}
    for twin in (copy.deepcopy(zoo), pickle.loads(pickle.dumps(zoo))):
        assert isinstance(twin, Zoo) and len(twin) == 2
        assert twin.names == zoo.names and twin.specs == zoo.specs and twin.info == zoo.info
        assert twin.preprocessing == zoo.preprocessing and twin.warnings == zoo.warnings
        assert twin.relatedness is not None and twin[0] is not zoo[0]
        assert torch.equal(twin[0].fc.weight, zoo[0].fc.weight)
    copied = zoo.copy_models()
    assert isinstance(copied, Zoo) and copied.names == zoo.names and copied.specs == zoo.specs
    assert copied.preprocessing is zoo.preprocessing and copied.relatedness is zoo.relatedness
    assert copied.info == zoo.info and copied.info is not zoo.info
    assert all(c is not m for c, m in zip(copied, zoo))
    with torch.no_grad():
        copied[0].fc.weight.add_(1.0)
    assert not torch.equal(copied[0].fc.weight, zoo[0].fc.weight)
    copied.names[0] = "renamed"
    copied.info["members"]["random0"]["domain"] = "y"
    assert zoo.names[0] == "random0" and zoo.info["members"]["random0"]["domain"] == "x"


def test_zoo_tune_takes_a_zoo_and_names_its_members():
    zoo = Zoo(list(load_zoo([_random(0), _random(1)])), ["left", "right"])
    zm = zootune.zoo_tune(zoo, lite=True)
    assert zm.num_sources == 2
    other = Zoo([load_zoo(_random(0))[0], load_zoo(_random(1, 7))[0]], ["ten", "seven"])
    with pytest.raises(ZooMismatchError, match=r"zoo members 'ten' and 'seven' differ at 'fc.weight'"):
        zootune.zoo_tune(other)


# ------------------------------------------------------------------------- strip_heads


def test_strip_heads_differing_strips_only_when_heads_differ():
    same = load_zoo([_random(0), _random(1)], strip_heads="differing")
    assert all(isinstance(m.fc, nn.Linear) for m in same)
    assert same.info["heads_stripped"] is False and same.info["heads"] == {"random0": "fc", "random1": "fc"}
    diff = load_zoo([_random(0, 10), _random(1, 7)], strip_heads="differing")
    assert all(isinstance(m.fc, nn.Identity) for m in diff)
    assert diff.info["heads_stripped"] is True and diff.info["heads"]["random1"] == "fc"
    x = torch.rand(2, 1, 8, 8)
    assert diff[0](x).shape == diff[1](x).shape == (2, 8)


def test_strip_heads_true_false_none_keep_their_meaning():
    with pytest.raises(ZooMismatchError, match="classification head.*strip_heads=True"):
        load_zoo([_random(0, 10), _random(1, 7)])  # None -> no preset -> False
    with pytest.raises(ZooMismatchError, match="fc.weight"):
        load_zoo([_random(0, 10), _random(1, 7)], strip_heads=False)
    kept = load_zoo([_random(0), _random(1)], strip_heads=False)
    assert all(isinstance(m.fc, nn.Linear) for m in kept) and kept.info["heads_stripped"] is False
    stripped = load_zoo([_random(0), _random(1)], strip_heads=True)
    assert all(isinstance(m.fc, nn.Identity) for m in stripped)
    with pytest.raises(ZooSpecError, match="strip_heads must be"):
        load_zoo([_random(0)], strip_heads="yes")


def test_heads_differ_in_shape_or_presence():
    a, b = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    assert not heads_differ([a, b])
    c = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 5))
    assert heads_differ([a, c])
    d = nn.Sequential(nn.Linear(4, 4), nn.Identity())  # "head" is now the first Linear (4, 4)
    assert heads_differ([a, d])
    conv = nn.Sequential(nn.Conv2d(1, 1, 1))  # no head at all
    assert heads_differ([nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(1, 2)), conv])


def test_strip_heads_differing_silences_the_random_head_warning(tmp_path):
    """A caller asking for 'differing' replaces heads, so a head missing from a checkpoint is no
    news; with strip_heads=False it is worth a warning."""
    from safetensors.torch import save_file

    from zootune.models import small_cnn

    torch.manual_seed(0)
    full = small_cnn(num_classes=3, widths=(4, 8)).state_dict()
    trunk = {k: v for k, v in full.items() if not k.startswith("fc.")}
    paths = []
    for name, sd in (("full", full), ("trunk", trunk)):
        paths.append(tmp_path / f"{name}.safetensors")
        save_file(sd, str(paths[-1]))
    specs = [{"spec": f"file:{p}", "arch": ARCH, "kwargs": {"widths": [4, 8], "num_classes": 3}}
             for p in paths]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        zoo = load_zoo(specs, strip_heads=False, check_related=False)
    assert any("randomly initialised" in str(w.message) for w in rec)
    assert any("randomly initialised" in t for t in zoo.warnings)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        zoo = load_zoo(specs, strip_heads="differing", check_related=False)
    assert not rec and not zoo.warnings and zoo.info["heads_stripped"] is False


# ------------------------------------------------------------------------- boundaries


def test_import_zootune_pulls_in_neither_torchvision_nor_timm_and_zoo_never_imports_convert():
    code = ("import sys, zootune, zootune.zoo; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torchvision', 'timm')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    import ast
    from pathlib import Path

    import zootune.zoo as zoo_pkg

    for path in Path(zoo_pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                names = [a.name for a in node.names]
                assert "convert" not in mod and not (mod in ("zootune", "..") and
                                                     {"convert", "zoo_tune", "ZooModel"} & set(names)), path
            elif isinstance(node, ast.Import):
                assert not any("convert" in a.name for a in node.names), path
