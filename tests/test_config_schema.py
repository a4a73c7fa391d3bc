"""Config: schema validation, presets, overrides, and one-line errors."""

from __future__ import annotations

import yaml
import pytest

from zootune.cli import main
from zootune.config import ConfigError, PRESETS, build_config, load_config, parse_override
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
    assert "'trian'" in msg and "train" in msg and "zoo_tune" in msg


def test_wrong_type_is_one_message_with_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_config({"train": {"steps": "many"}})
    msg = str(e.value)
    assert "train.steps" in msg and "integer" in msg and "batch_size" in msg


def test_bad_choice_and_unknown_preset():
    with pytest.raises(ConfigError, match="method"):
        build_config({"method": "magic"})
    with pytest.raises(ConfigError, match="valid presets: adam, paper_classification"):
        build_config({"preset": "nope"})


def test_paper_preset_is_the_papers_recipe_and_yaml_wins():
    cfg = build_config({"preset": "paper_classification"})
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.01, 0.9)
    assert (cfg.train.steps, cfg.train.batch_size) == (15000, 48)
    assert (cfg.schedule.name, cfg.schedule.step_size, cfg.schedule.gamma) == ("step", 6000, 0.1)
    # decay x0.1 every 6k iterations of 15k
    assert lr_factor(5999, cfg.schedule, 15000) == pytest.approx(1.0)
    assert lr_factor(6000, cfg.schedule, 15000) == pytest.approx(0.1)
    assert lr_factor(14999, cfg.schedule, 15000) == pytest.approx(0.01)
    cfg2 = build_config({"preset": "paper_classification", "optim": {"lr": 0.003}})
    assert cfg2.optim.lr == 0.003 and cfg2.optim.momentum == 0.9
    assert build_config({"preset": "adam"}).optim.name == "adam"
    assert PRESETS["paper_classification"]["train"]["batch_size"] == 48


def test_overrides_are_dotted_and_typed(tmp_path):
    assert parse_override("optim.lr=1e-3") == (["optim", "lr"], 0.001)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"method": "zoo_tuning", "optim": {"lr": 0.5}}))
    cfg = load_config(p, ["optim.lr=2e-3", "zoo_tune.align=false", "zoo_tune.layers=[a, 'b.*']",
                          "train.amp=off", "zoo.builder_kwargs.widths=[4, 8]"])
    assert cfg.optim.lr == pytest.approx(0.002)
    assert cfg.zoo_tune.align is False and cfg.zoo_tune.layers == ["a", "b.*"]
    assert cfg.zoo.builder_kwargs == {"widths": [4, 8]}
    with pytest.raises(ConfigError, match="key=value"):
        load_config(p, ["optim.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(p, ["method.x=1"])


def test_resolved_config_round_trips(tmp_path):
    cfg = build_config({"preset": "adam", "train": {"steps": 7}})
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

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"digits_tiny.yaml", "paper_classification.yaml"}
    for p in configs:
        cfg = load_config(p)
        assert cfg.name
    paper = load_config(configs[[p.name for p in configs].index("paper_classification.yaml")])
    assert paper.method == "zoo_tuning" and paper.train.batch_size == 48 and paper.optim.lr == 0.01
