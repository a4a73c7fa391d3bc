"""End to end through the CLI: tune -> report/pictures/logs -> eval -> export; methods."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from trainer_utils import final_weights, tiny_raw
from zootune.cli import build_parser, main


def _write(tmp_path, raw, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def test_help_lists_commands_and_options(capsys):
    text = build_parser().format_help()
    for cmd in ("tune", "eval", "export"):
        assert cmd in text
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    out = capsys.readouterr().out
    assert "--resume" in out and "key=value" in out and "torchrun" in out


def test_tune_eval_export_end_to_end(tmp_path, capsys):
    raw = tiny_raw(train__tensorboard=True)
    cfg = _write(tmp_path, raw)
    out = tmp_path / "run"
    assert main(["tune", str(cfg), "--out", str(out), "optim.head_lr=0.02"]) == 0
    tune_out = capsys.readouterr().out
    for f in ("config.yaml", "metrics.jsonl", "model.safetensors", "result.json", "report.md",
              "gates.png", "curves.png"):
        assert (out / f).is_file(), f
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["head_lr"] == 0.02
    result = json.loads((out / "result.json").read_text())
    acc = result["metrics"]["test"]["accuracy"]
    report = (out / "report.md").read_text()
    assert f"{100 * acc:.2f}%" in report and "FLOPs" in report and "gates.png" in report
    # tune prints the task's summary line of every split
    loss = result["metrics"]["test"]["loss"]
    assert f"test accuracy {100 * acc:.2f}%, loss {loss:.4g}" in tune_out
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "val", "test"} <= {e["split"] for e in events}
    assert all("samples_per_s" in e for e in events if e["split"] == "train")
    # the same run again refuses to overwrite silently
    capsys.readouterr()
    assert main(["tune", str(cfg), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err

    assert main(["eval", str(out), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["accuracy"] == pytest.approx(acc) and ev["split"] == "test"
    assert main(["eval", str(out)]) == 0
    assert f"test ({ev['n']} samples): accuracy {100 * acc:.2f}%, loss" in capsys.readouterr().out
    assert main(["eval", str(out / "checkpoints" / "step_00000008"), "--split", "val"]) == 0
    assert "val (" in capsys.readouterr().out
    ck = out / "checkpoints" / "step_00000008"
    assert {f.name for f in ck.iterdir()} >= {"model.safetensors", "state.pt"}

    exp = tmp_path / "exp" / "digits.safetensors"
    assert main(["export", str(out), "-o", str(exp)]) == 0
    assert "0.00e+00" in capsys.readouterr().out
    card = exp.with_suffix(".md").read_text()
    assert "lite Zoo-Tuning" in card and "load_state_dict" in card
    # the exported file is a plain state dict of the source architecture
    from safetensors.torch import load_file

    from zootune.models import small_cnn
    import zootune
    from zootune.train.restore import load_run

    plain = small_cnn(**raw["zoo"]["builder_kwargs"])
    plain.load_state_dict(load_file(str(exp)))
    run, _ = load_run(out, with_data=True)
    x = torch.stack([run.data.test[i]["image"] for i in range(16)])
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), run.model(x), atol=1e-5)
        # run folder and exported file load without a template (the record is in the metadata)
        assert torch.allclose(zootune.load(out)(x), run.model(x), atol=1e-6)
        assert torch.allclose(zootune.load(exp)(x), run.model(x), atol=1e-5)


def test_average_aggregation_keeps_equal_gates_and_finetune_is_plain(tmp_path, capsys):
    out = tmp_path / "avg"
    cfg = _write(tmp_path, tiny_raw(method="average_aggregation",
                                    zoo__random_sources=3, train__checkpoint_every=0))
    assert main(["tune", str(cfg), "--out", str(out)]) == 0
    w = final_weights(out)
    assert not [k for k in w if "align" in k]  # no alignment
    from zootune.train.restore import load_run

    run, _ = load_run(out)
    assert run.method.name == "average_aggregation"
    for g in run.model.gate_values().values():
        assert torch.allclose(g, torch.full((3,), 1 / 3), atol=1e-6)

    out2 = tmp_path / "ft"
    cfg2 = _write(tmp_path, tiny_raw(method={"name": "finetune", "source": 1}, train__checkpoint_every=0),
                  "ft.yaml")
    assert main(["tune", str(cfg2), "--out", str(out2)]) == 0
    w2 = final_weights(out2)
    assert "fc.weight" in w2 and not [k for k in w2 if "gate" in k]
    capsys.readouterr()
    assert main(["export", str(out2), "-o", str(tmp_path / "ft.safetensors")]) == 0
    assert "plain (single model)" in capsys.readouterr().out


def test_per_sample_export_needs_average_gates(tmp_path, capsys):
    out = tmp_path / "zt"
    cfg = _write(tmp_path, tiny_raw(method="zoo_tuning", train__steps=4, train__checkpoint_every=0,
                                    train__eval_every=0))
    assert main(["tune", str(cfg), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", str(out), "-o", str(tmp_path / "zm.safetensors")]) == 0
    assert "ZooModel" in capsys.readouterr().out
    assert main(["export", str(out), "--average-gates", "-o", str(tmp_path / "avg.safetensors")]) == 0
    assert "approximation" in capsys.readouterr().out


def test_missing_zoo_checkpoint_and_missing_data_are_one_line_errors(tmp_path, capsys):
    raw = tiny_raw()
    raw["zoo"] = {"builder": "zootune.models:small_cnn", "checkpoints": [str(tmp_path / "gone.safetensors")]}
    assert main(["tune", str(_write(tmp_path, raw))]) == 2
    err = capsys.readouterr().err.strip()
    # the zoo's loader (zootune.zoo.load_zoo) names the spec and the missing file
    assert "gone.safetensors" in err and "checkpoint file not found" in err and len(err.splitlines()) == 1
    raw = tiny_raw(data={"name": "image_folder", "root": str(tmp_path / "no_images")})
    assert main(["tune", str(_write(tmp_path, raw, "d.yaml"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "no_images" in err and "does not exist" in err and len(err.splitlines()) == 1
    # a checkpoint that does not fit the architecture
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "wrong.safetensors"))
    raw = tiny_raw()
    raw["zoo"] = {"builder": "zootune.models:small_cnn",
                  "checkpoints": [str(tmp_path / "wrong.safetensors")] * 2}
    assert main(["tune", str(_write(tmp_path, raw, "w.yaml"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit" in err and len(err.splitlines()) == 1


def test_image_folder_run_and_eval_on_another_folder(tmp_path, capsys):
    from test_data_sources import _make_folder

    _make_folder(tmp_path / "imgs", classes=("a", "b", "c"), n=6)
    _make_folder(tmp_path / "new", classes=("a", "b", "c"), n=2)
    raw = tiny_raw(data={"name": "image_folder", "root": str(tmp_path / "imgs"), "image_size": 8,
                         "val_fraction": 0.2, "test_fraction": 0.2},
                   train__steps=4, train__checkpoint_every=0, train__eval_every=0)
    raw["zoo"]["builder_kwargs"]["in_channels"] = 3
    out = tmp_path / "run"
    assert main(["tune", str(_write(tmp_path, raw)), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(tmp_path / "new"), "--split", "all", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["n"] == 6 and 0.0 <= ev["accuracy"] <= 1.0
    _make_folder(tmp_path / "two", classes=("a", "b"), n=2)
    assert main(["eval", str(out), "--data", str(tmp_path / "two"), "--split", "all"]) == 2
    assert "differ from the classes" in capsys.readouterr().err
    _make_folder(tmp_path / "other", classes=("a", "b", "z"), n=2)
    assert main(["eval", str(out), "--data", str(tmp_path / "other"), "--split", "all"]) == 2
    assert "differ from the classes" in capsys.readouterr().err


def test_shipped_examples_run_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the example ships in the package
    assert main(["tune", "--examples"]) == 0
    listed = capsys.readouterr().out
    assert "digits_tiny" in listed and "paper_classification" in listed
    assert main(["tune", "digits_tiny", "train.steps=2", "train.eval_every=0",
                 "train.checkpoint_every=0", "train.progress=false", "train.tensorboard=false"]) == 0
    out = capsys.readouterr().out
    assert "zoo_tuning (lite" in out and "test accuracy" in out
    assert (tmp_path / "runs" / "digits_tiny" / "model.safetensors").is_file()
    cfg = yaml.safe_load((tmp_path / "runs" / "digits_tiny" / "config.yaml").read_text())
    assert cfg["method"]["name"] == "zoo_tuning" and cfg["method"]["lite"] is True
