"""``zootune demo`` end to end on a reduced budget (pipeline, outputs, exact lite export)."""

import json

import pytest

from zootune.cli import main


@pytest.mark.slow
def test_demo_quick_writes_results(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--quick", "--labels-per-class", "2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "zoo_tuning_lite" in printed and "finetune_best" in printed
    res = json.loads((out / "results.json").read_text())
    methods = res["methods"]
    for k in ("finetune_best", "average_aggregation", "zoo_tuning", "zoo_tuning_lite", "exported_lite"):
        assert 0.0 <= methods[k]["accuracy"] <= 1.0, k
    for name in res["zoo"]:
        assert f"finetune_{name}" in methods and name in res["sources"]
    best = max(res["zoo"], key=lambda n: methods[f"finetune_{n}"]["val_accuracy"])
    assert methods["finetune_best"]["source"] == best
    # the exported single model computes what the lite model computes
    assert methods["exported_lite"]["max_abs_logit_diff_vs_lite"] < 1e-4
    assert methods["exported_lite"]["params"] == methods[f"finetune_{best}"]["params"]
    for f in ("report.md", "gates.png", "exported_lite.safetensors"):
        assert (out / f).stat().st_size > 0, f
    # the exported model is a plain state dict in the one model format (zootune.save)
    from zootune.export import read_metadata

    meta = read_metadata(out / "exported_lite.safetensors")
    assert meta["kind"] == "plain" and meta["extra"]["architecture"] == "zootune.demo.model:MiniCNN"
    assert meta["extra"]["num_classes"] >= 2


def test_demo_rejects_bad_budget(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --steps")
