"""align_zoo inside zoo_tune, the methods' ``align_zoo`` option, ``zootune zoo align``."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import zootune
from zootune.demo.model import MiniCNN
from trainer_utils import run_cli, tiny_config

torch.set_num_threads(1)


def _zoo(n: int = 2) -> list[torch.nn.Module]:
    out = []
    for s in range(n):
        torch.manual_seed(10 + s)
        out.append(MiniCNN(5, width=8).eval())
    return out


def test_align_zoo_is_lazy_export():
    assert "align_zoo" in zootune.__all__
    from zootune.align import align_zoo

    assert zootune.align_zoo is align_zoo


def test_zoo_tune_align_zoo_starts_from_the_aligned_average():
    zoo = _zoo()
    x = torch.rand(4, 1, 16, 16)
    aligned = zootune.align_zoo(zoo)
    zm = zootune.zoo_tune(zoo, align_zoo=True, lite=True, align=False).eval()
    zm_plain = zootune.zoo_tune(list(aligned), lite=True, align=False).eval()
    with torch.no_grad():
        assert torch.allclose(zm(x), zm_plain(x), atol=1e-5)
    # and its merged weights are not the unaligned average's
    w_al = zm.export().features[0].weight
    w_raw = zootune.zoo_tune(zoo, lite=True, align=False).export().features[0].weight
    assert not torch.allclose(w_al, w_raw, atol=1e-4)
    assert zm.settings["align_zoo"]["method"] == "weights"


def test_zoo_tune_align_zoo_with_repair_recalibrates_batchnorm():
    zoo = _zoo()
    data = [torch.rand(16, 1, 16, 16) for _ in range(2)]
    zm = zootune.zoo_tune(zoo, align_zoo={"data": data, "repair": "reset"}, lite=True, align=False)
    bn = zm.model.features[1]
    assert int(bn.num_batches_tracked) == 2  # re-estimated on the two batches
    with pytest.raises(zootune.ZootuneError):
        zootune.zoo_tune(zoo, align_zoo="yes")


@pytest.mark.parametrize("method", ["average_aggregation", "zoo_tuning"])
def test_method_option_align_zoo(method):
    from zootune.train import build_run

    cfg = tiny_config(method={"name": method, "align_zoo": True},
                      zoo__builder_kwargs={"widths": [4, 8], "norm": "batch"})
    run = build_run(cfg)
    assert "align_zoo" in run.model.settings
    assert "align_zoo" in run.method.describe() or method == "average_aggregation"
    out = run.model(torch.rand(2, 1, 8, 8))
    assert out.shape[0] == 2


@pytest.mark.parametrize("method", ["average_aggregation", "zoo_tuning"])
def test_method_option_align_zoo_activations_and_repair_use_target_training_batches(method):
    from zootune.align import align_zoo, repair_batchnorm
    from zootune.methods.aggregation import AlignZooOptions, _target_batches
    from zootune.methods.base import BuildContext
    from zootune.train import build_run

    opts = {"method": "activations", "repair": "repair", "batches": 2, "batch_size": 8}
    kw = dict(zoo__builder_kwargs={"widths": [4, 8], "norm": "batch"})
    run = build_run(tiny_config(method={"name": method, "align_zoo": opts}, **kw))
    assert run.model.settings["align_zoo"] == {"method": "activations", "reference": 0, "repair": "repair"}
    # the same thing by hand: align on the run's training batches, aggregate, repair
    plain = build_run(tiny_config(method={"name": method}, **kw))
    ctx = BuildContext(plain.zoo, plain.task, plain.cfg, "main", {}, data=plain.data)
    batches = _target_batches(ctx, AlignZooOptions(**opts))
    assert len(batches) == 2 and batches[0]["image"].shape[0] == 8
    x = [b["image"] for b in batches]
    aligned = align_zoo(list(plain.zoo), method="activations", data=x, example_input=x[0][:2],
                        permute_outputs=True, seed=plain.cfg.train.seed, max_batches=2)
    members = plain.task.prepare_zoo(list(aligned), keep_source_heads=False)
    sd = run.model.state_dict()
    bn_keys = [k for k in sd if k.endswith("running_mean")]
    assert bn_keys
    ref = zootune.zoo_tune(members, lite=True, align=False, gate="normalized", gate_init="uniform")
    repair_batchnorm(ref, members, x, mode="repair")
    for k in bn_keys:
        assert torch.allclose(sd[k], ref.state_dict()[k], atol=1e-5), k
    # without repair the statistics are the members' average, not these
    unrepaired = build_run(tiny_config(method={"name": method, "align_zoo": {"method": "activations"}}, **kw))
    assert any(not torch.allclose(unrepaired.model.state_dict()[k], sd[k]) for k in bn_keys)
    out = run.model(torch.rand(2, 1, 8, 8))
    assert torch.isfinite(out).all()


def test_method_option_align_zoo_mapping_is_validated():
    from zootune.config import ConfigError

    with pytest.raises(ConfigError, match="align_zoo"):
        tiny_config(method={"name": "zoo_tuning", "align_zoo": {"method": "magic"}})


def test_unrelated_warning_suggests_alignment():
    from zootune.zoo.relatedness import relatedness

    text = relatedness(_zoo()).warning_text()
    assert text and "zoo align" in text and "align_zoo" in text


def test_cli_zoo_align_writes_function_preserving_checkpoints(tmp_path):
    specs = [f"random:zootune.models:small_cnn seed={s} name=m{s}" for s in range(2)]
    r = run_cli("zoo", "align", *specs, "-o", str(tmp_path / "al"), "--input-size", "1,8,8")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "permutation groups" in r.stdout
    report = json.loads((tmp_path / "al" / "align.json").read_text())
    assert len(report["files"]) == 2
    from zootune.zoo import load

    orig = load(specs[1])
    al = load(f"file:{report['files'][1]} arch=zootune.models:small_cnn")
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert (orig.eval()(x) - al.eval()(x)).abs().max() <= 1e-4
    assert any(not torch.equal(a, b) for a, b in zip(orig.state_dict().values(), al.state_dict().values()))
