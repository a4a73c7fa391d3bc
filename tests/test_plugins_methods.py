"""Methods as registered plug-ins: registry, options validation, own losses, extra modules, stages."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import zootune
from zootune.config import ConfigError, build_config
from zootune.methods import FineTune, Method, MethodOptions, Stage, register
from zootune.train import build_run, run_config
from trainer_utils import tiny_raw
import plugin_examples  # noqa: F401 - registers test_scaled_finetune


def test_builtin_methods_are_registered():
    names = zootune.methods.available()
    for n in ("scratch", "finetune", "average_aggregation", "zoo_tuning", "zoo_tuning_lite"):
        assert n in names
    assert "classification" in zootune.tasks.available()


def test_method_options_are_validated_per_method():
    with pytest.raises(ConfigError, match=r"'method\.lite'.*valid keys in method \(finetune\): name, source"):
        build_config(tiny_raw(method={"name": "finetune", "lite": True}))
    with pytest.raises(ConfigError, match="unknown method 'zoo_tunning'.*did you mean 'zoo_tuning'"):
        build_config(tiny_raw(method="zoo_tunning"))
    cfg = build_config(tiny_raw(method={"name": "zoo_tuning", "lite": True, "align": False}))
    assert cfg.method.lite is True and cfg.method.align is False
    # the lite alias is zoo_tuning with lite on by default, and round-trips through YAML
    cfg2 = build_config(tiny_raw(method="zoo_tuning_lite"))
    assert cfg2.method.lite is True
    again = build_config(json.loads(json.dumps(cfg2.to_dict())))
    assert again.method == cfg2.method


def test_old_keys_say_where_they_moved():
    raw = tiny_raw()
    raw["zoo_tune"] = {"lite": True}
    with pytest.raises(ConfigError, match="method section"):
        build_config(raw)
    raw = tiny_raw()
    raw["preset"] = raw.pop("recipe")
    with pytest.raises(ConfigError, match="recipe"):
        build_config(raw)


def test_finetune_source_by_name_and_index():
    cfg = build_config(tiny_raw(method={"name": "finetune", "source": "random1"}))
    run = build_run(cfg)
    run1 = build_run(build_config(tiny_raw(method={"name": "finetune", "source": 1})))
    for (k, a), (_, b) in zip(run.model.state_dict().items(), run1.model.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(zootune.methods.MethodError, match="not a zoo member"):
        build_run(build_config(tiny_raw(method={"name": "finetune", "source": "nope"})))


def test_scratch_reinitialises_the_architecture():
    raw = tiny_raw(method="finetune")
    raw["zoo"]["seed"] = 5  # random sources 5, 6: not the seed scratch re-initialises with
    ft = build_run(build_config(raw)).model
    raw["method"] = "scratch"
    sc = build_run(build_config(raw)).model
    convs = [n for n, p in ft.named_parameters() if p.dim() == 4]
    assert convs
    sd_ft, sd_sc = ft.state_dict(), sc.state_dict()
    assert all(not torch.equal(sd_ft[n], sd_sc[n]) for n in convs)
    assert type(ft) is type(sc)


# ---- a method of one's own: its loss, an extra trainable module, from a config ---------------


def test_user_method_runs_from_a_config(tmp_path):
    cfg = build_config(tiny_raw(method={"name": "test_scaled_finetune", "penalty": 3.0}))
    res = run_config(cfg, tmp_path / "run")
    t = res.extra_modules["temperature"].weight
    assert float(t.detach()) != 1.0  # trained by the same optimizer
    # the extra module is checkpointed next to the model, and the run folder is complete
    latest = zootune.train.TrainState.latest(tmp_path / "run" / "checkpoints")
    assert (latest / "extras.safetensors").is_file()
    from safetensors.torch import load_file
    assert torch.equal(load_file(str(latest / "extras.safetensors"))["temperature.weight"], t.detach())
    assert (tmp_path / "run" / "report.md").is_file()


# ---- stages ------------------------------------------------------------------------------------


@register("test_two_stage")
class TwoStage(Method):
    """Stage 1 fine-tunes source 0; stage 2 starts from stage 1's weights and fine-tunes again."""

    class Options(MethodOptions):
        pass

    built: list = []

    def stages(self, cfg):
        first = cfg.model_copy(update={"method": FineTune.Options(name="finetune", source=0)})
        return [Stage("warmup", first), Stage("main", cfg)]

    def build(self, ctx):
        TwoStage.built.append(ctx.stage)
        model = ctx.target_models()[0]
        model.load_state_dict(ctx.previous["warmup"].model.state_dict())
        return model


def test_stages_hand_results_on_and_finished_stages_are_skipped(tmp_path):
    cfg = build_config(tiny_raw(method="test_two_stage"))
    out = tmp_path / "run"
    TwoStage.built.clear()
    res = run_config(cfg, out)
    assert (out / "stages" / "warmup" / "model.safetensors").is_file()
    assert (out / "model.safetensors").is_file() and res.steps == cfg.train.steps
    warm = zootune.load(out / "stages" / "warmup" / "model.safetensors")
    assert isinstance(warm, nn.Module)
    # rerunning: the finished warm-up stage is loaded, not retrained
    mtime = (out / "stages" / "warmup" / "model.safetensors").stat().st_mtime_ns
    res2 = run_config(cfg, tmp_path / "run2")  # a fresh folder trains both
    (out / "model.safetensors").unlink()
    res3 = run_config(cfg, out)
    assert (out / "stages" / "warmup" / "model.safetensors").stat().st_mtime_ns == mtime
    for (k, a), (_, b) in zip(res2.model.state_dict().items(), res3.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_switching_method_from_overrides():
    cfg = build_config(tiny_raw(method={"name": "zoo_tuning", "lite": True}),
                       ["method=finetune", "method.source=1"])
    assert cfg.method.name == "finetune" and cfg.method.source == 1


def test_a_users_method_runs_from_the_cli_through_plugins(tmp_path):
    """`plugins:` imports the user's module, whose registered method then runs via `zootune tune`."""
    import yaml

    from trainer_utils import REPO, run_cli

    (tmp_path / "my_methods.py").write_text(
        "from zootune.methods import FineTune, MethodOptions, register\n\n"
        "@register('my_finetune')\n"
        "class MyFineTune(FineTune):\n"
        "    class Options(MethodOptions):\n"
        "        source: int = 1\n")
    raw = tiny_raw(method={"name": "my_finetune"})
    raw["plugins"] = ["my_methods"]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    import os
    import subprocess
    import sys

    from trainer_utils import subprocess_env

    env = subprocess_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    r = subprocess.run([sys.executable, "-m", "zootune", "tune", str(tmp_path / "cfg.yaml"), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "my_finetune (source=1)" in r.stdout
    raw["plugins"] = ["no_such_module_xyz"]
    with pytest.raises(ConfigError, match="plugins: cannot import 'no_such_module_xyz'"):
        build_config(raw)
