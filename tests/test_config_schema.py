"""Config: schema validation, recipes, method/task options, overrides, and one-line errors."""

from __future__ import annotations

import yaml
import pytest

from zootune.cli import main
from zootune.config import ConfigError, RECIPES, build_config, load_config, parse_override
from zootune.train.optim import lr_factor


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_config({"optim": {"lrr": 0.1}})
    msg = str(e.value)
    assert "optim.lrr" in msg and "did you mean 'optim.lr'" in msg
    assert "valid keys in optim:" in msg and "weight_decay" in msg and "\n" not in msg


def test_unknown_top_level_key():
    with pytest.raises(ConfigError) as e:
        build_config({"trian": {"steps": 3}})
    msg = str(e.value)
    assert "'trian'" in msg and "did you mean 'train'" in msg
    assert "valid keys in top level:" in msg and "recipe" in msg and "method" in msg
    assert "zoo_tune" not in msg and "\n" not in msg


@pytest.mark.parametrize("raw, moved", [
    ({"preset": "adam"}, "use 'recipe'"),
    ({"zoo_tune": {"lite": True}}, "method: {name: zoo_tuning, lite: true"),
    ({"source": 1}, "method: {name: finetune, source: 0}"),
])
def test_old_keys_say_where_the_setting_moved(raw, moved):
    with pytest.raises(ConfigError) as e:
        build_config(raw)
    msg = str(e.value)
    assert f"unknown config key {next(iter(raw))!r}" in msg and moved in msg and "\n" not in msg


def test_method_options_live_in_the_method_section():
    cfg = build_config({"method": {"name": "zoo_tuning", "lite": True, "align": False,
                                   "gate": "sigmoid", "layers": ["a"], "exclude": ["fc"],
                                   "kernel": "grouped"}})
    m = cfg.method
    assert (m.name, m.lite, m.align, m.gate, m.layers, m.exclude, m.kernel) == (
        "zoo_tuning", True, False, "sigmoid", ["a"], ["fc"], "grouped")
    # the registered alias is zoo_tuning with lite on by default
    lite = build_config({"method": "zoo_tuning_lite"}).method
    assert lite.name == "zoo_tuning_lite" and lite.lite is True
    assert build_config({"method": "zoo_tuning"}).method.lite is False
    assert build_config({"method": {"name": "finetune", "source": 2}}).method.source == 2
    assert build_config({"method": {"name": "finetune", "source": "b"}}).method.source == "b"
    assert build_config({"method": "average_aggregation"}).method.name == "average_aggregation"
    assert build_config({"method": "scratch"}).method.name == "scratch"
    assert build_config({}).task.name == "classification"
    assert build_config({"task": {"name": "classification", "num_classes": 7}}).task.num_classes == 7


def test_wrong_method_option_lists_that_methods_options():
    with pytest.raises(ConfigError) as e:
        build_config({"method": {"name": "finetune", "lite": True}})
    msg = str(e.value)
    assert "unknown config key 'method.lite'" in msg and "valid keys in method (finetune): name, source" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError) as e:
        build_config({"method": {"name": "zoo_tuning", "gat": "sigmoid"}})
    msg = str(e.value)
    assert "did you mean 'method.gate'" in msg and "valid keys in method (zoo_tuning):" in msg
    assert "lite" in msg and "align" in msg and "source" not in msg
    with pytest.raises(ConfigError, match="method.gate"):
        build_config({"method": {"name": "zoo_tuning", "gate": "bad"}})


def test_methods_and_tasks_are_registries():
    from zootune import methods, tasks

    assert set(methods.available()) >= {"zoo_tuning", "zoo_tuning_lite", "finetune", "scratch",
                                        "average_aggregation"}
    assert "classification" in tasks.available()


def test_wrong_type_is_one_message_with_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_config({"train": {"steps": "many"}})
    msg = str(e.value)
    assert "train.steps" in msg and "integer" in msg and "batch_size" in msg


def test_bad_choice_and_unknown_preset():
    with pytest.raises(ConfigError, match="unknown method 'magic'.*valid methods: .*zoo_tuning"):
        build_config({"method": "magic"})
    with pytest.raises(ConfigError, match="valid recipes: adam, paper_classification"):
        build_config({"recipe": "nope"})


def test_paper_recipe_is_the_papers_recipe_and_yaml_wins():
    cfg = build_config({"recipe": "paper_classification"})
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.01, 0.9)
    assert (cfg.train.steps, cfg.train.batch_size) == (15000, 48)
    assert (cfg.schedule.name, cfg.schedule.step_size, cfg.schedule.gamma) == ("step", 6000, 0.1)
    # decay x0.1 every 6k iterations of 15k
    assert lr_factor(5999, cfg.schedule, 15000) == pytest.approx(1.0)
    assert lr_factor(6000, cfg.schedule, 15000) == pytest.approx(0.1)
    assert lr_factor(14999, cfg.schedule, 15000) == pytest.approx(0.01)
    cfg2 = build_config({"recipe": "paper_classification", "optim": {"lr": 0.003}})
    assert cfg2.optim.lr == 0.003 and cfg2.optim.momentum == 0.9
    assert build_config({"recipe": "adam"}).optim.name == "adam"
    assert RECIPES["paper_classification"]["train"]["batch_size"] == 48


def test_overrides_are_dotted_and_typed(tmp_path):
    assert parse_override("optim.lr=1e-3") == (["optim", "lr"], 0.001)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"method": "zoo_tuning", "optim": {"lr": 0.5}}))
    # a bare method name in the file still takes dotted overrides of its options
    cfg = load_config(p, ["optim.lr=2e-3", "method.align=false", "method.layers=[a, 'b.*']",
                          "train.amp=off", "zoo.builder_kwargs.widths=[4, 8]"])
    assert cfg.optim.lr == pytest.approx(0.002)
    assert cfg.method.name == "zoo_tuning"
    assert cfg.method.align is False and cfg.method.layers == ["a", "b.*"]
    assert cfg.zoo.builder_kwargs == {"widths": [4, 8]}
    assert load_config(p, ["method.lite=true"]).method.lite is True
    assert load_config(p, ["method.name=finetune", "method.source=1"]).method.source == 1
    with pytest.raises(ConfigError, match="key=value"):
        load_config(p, ["optim.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(p, ["optim.lr.x=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'method\.x'.*valid keys in method \(zoo_tuning\)"):
        load_config(p, ["method.x=1"])


def test_resolved_config_round_trips(tmp_path):
    cfg = build_config({"recipe": "adam", "method": {"name": "zoo_tuning", "lite": True},
                        "task": {"name": "classification", "num_classes": 5},
                        "train": {"steps": 7}})
    p = tmp_path / "r.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg


def test_cli_config_errors_are_one_line_without_traceback(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 3\n  bogus: 1\n")
    assert main(["tune", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key 'train.bogus'") and "valid keys in train" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    assert main(["tune", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not valid YAML" in err and len(err.splitlines()) == 1

    assert main(["tune", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_example_configs_validate():
    from pathlib import Path

    from zootune.config import example_configs

    configs = sorted((Path(__file__).resolve().parents[1] / "src" / "zootune" / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"digits_tiny.yaml", "paper_classification.yaml"}
    assert {p.stem for p in configs} == set(example_configs())
    for p in configs:
        cfg = load_config(p)
        assert cfg.name
        assert load_config(p.stem) == cfg  # a shipped example by its name
    paper = load_config(configs[[p.name for p in configs].index("paper_classification.yaml")])
    assert paper.method.name == "zoo_tuning" and paper.train.batch_size == 48 and paper.optim.lr == 0.01
