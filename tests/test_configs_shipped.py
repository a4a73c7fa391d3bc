"""The example configs ship inside the package, validate, and run by name from any folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

from zootune.config import example_configs, load_config, resolve_config_path
from trainer_utils import REPO, run_cli


def test_examples_are_package_data_and_validate():
    found = example_configs()
    assert {"digits_tiny", "paper_classification"} <= set(found)
    pkg = Path(__import__("zootune").__file__).resolve().parent
    for name, path in found.items():
        assert path.parent == pkg / "configs"
        cfg = load_config(name)
        assert cfg.name == name
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "configs/*.yaml" in data["tool"]["setuptools"]["package-data"]["zootune"]
    assert not (REPO / "configs").exists()  # one place for the examples


def test_a_file_wins_over_an_example_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("digits_tiny") == example_configs()["digits_tiny"]
    (tmp_path / "digits_tiny").write_text("name: mine\n")
    assert resolve_config_path("digits_tiny") == Path("digits_tiny")


def test_tune_runs_an_example_by_name_from_another_folder(tmp_path):
    r = run_cli("tune", "digits_tiny", "train.steps=4", "train.eval_every=2", "train.progress=false",
                "train.tensorboard=false", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and (tmp_path / "run" / "model.safetensors").is_file()
    r = run_cli("tune", "--examples", cwd=tmp_path)
    assert "digits_tiny" in r.stdout
