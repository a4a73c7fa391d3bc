"""``zootune compare`` on the landmark task: NME is lower-is-better (the best single source is
the lowest validation NME, a win is a lower test NME), the task's further metrics are reported
beside it, and Zoo-Tuning's gates are recorded for the heat map (paper Fig. 6)."""

from __future__ import annotations

import json

import pytest

from zootune.compare import load_compare, plan_cells, run_compare, summarize
from zootune.compare.table import format_markdown


def _raw(methods, seeds=(0, 1), steps=2, metrics=("failure_rate", "auc")):
    return {
        "name": "lm_tiny", "recipe": "adam", "zoo": {"spec": "demo"},
        "task": {"name": "landmarks", "deconv_channels": 8, "report_images": 2},
        "data": {"name": "procedural_faces", "image_size": 32,
                 "options": {"train": 16, "val": 8, "test": 8}},
        "optim": {"lr": 0.002},
        "train": {"steps": steps, "batch_size": 4, "eval_every": 0, "log_every": 1, "checkpoint_every": 0,
                  "threads": 1, "progress": False, "tensorboard": False},
        "compare": {"methods": list(methods), "seeds": list(seeds), "reports": False, "metrics": list(metrics)},
    }


def _fake(val, test, fr=0.5):
    return {"metrics": {"val": {"nme": val, "failure_rate": fr}, "test": {"nme": test, "failure_rate": fr}},
            "costs": {}, "wall_time_s": 1.0, "steps": 1, "stages": {}}


def test_lower_is_better_metric_chooses_the_lowest_validation_nme_and_counts_lower_as_wins():
    spec = load_compare(raw=_raw(["finetune", "scratch"]))
    plan = plan_cells(spec)
    members = sorted({c.source for c in plan if c.source})
    assert len(members) == 5
    a, b = members[0], members[1]
    cells = {}
    for s in (0, 1):
        # member a: best (lowest) validation NME, but a worse test NME than b: a must be chosen
        cells[f"finetune[{a}]@seed{s}"] = _fake(0.10, 0.20, fr=0.2)
        cells[f"finetune[{b}]@seed{s}"] = _fake(0.30, 0.05)
        for m in members[2:]:
            cells[f"finetune[{m}]@seed{s}"] = _fake(0.50, 0.50)
    cells["scratch@seed0"] = _fake(0.4, 0.15, fr=0.0)   # better than the reference's 0.20: a win
    cells["scratch@seed1"] = _fake(0.4, 0.25, fr=1.0)   # worse: no win
    summ = summarize(spec, plan, cells)
    assert summ["metric"] == "nme" and summ["higher_is_better"] is False
    assert all(r["entry"] == f"finetune[{a}]" for r in summ["reference"].values())
    rows = {r["label"]: r for r in summ["rows"]}
    best = rows["finetune (best on validation)"]
    assert best["test_mean"] == pytest.approx(0.20)
    sc = rows["scratch"]
    assert sc["diff_mean"] == pytest.approx(0.0) and sc["wins"] == 1 and sc["paired"] == 2
    assert sc["extra"]["failure_rate"]["mean"] == pytest.approx(0.5)
    assert sc["extra"]["failure_rate"]["std"] == pytest.approx(2 ** 0.5 / 2)
    md = format_markdown(spec, summ)
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "test nme (%)" in header and "test failure_rate (%)" in header and "test auc (%)" in header
    row = next(line for line in md.splitlines() if line.startswith("| scratch "))
    assert header.count("|") == row.count("|")
    assert "| 20.00 ± 0.00 | 20.00 ± 0.00 |" in md  # best single: nme and failure rate in percent


@pytest.mark.slow
def test_compare_runs_landmark_methods_and_records_gates(tmp_path):
    spec = load_compare(raw=_raw(["scratch", {"name": "zoo_tuning", "lite": True, "label": "lite"}], seeds=[0]))
    res = run_compare(spec, tmp_path / "cmp", log=lambda s: None)
    cells = res["cells"]
    assert set(cells) == {"scratch@seed0", "lite@seed0"}
    assert cells["scratch@seed0"]["gates"] is None
    g = cells["lite@seed0"]["gates"]
    assert len(g["values"]) == 5 and len(g["values"][0]) == len(g["layers"]) > 0
    doc = json.loads((tmp_path / "cmp" / "results.json").read_text())
    rows = {r["label"]: r for r in doc["summary"]["rows"]}
    assert rows["lite"]["gates"]["values"] == g["values"] and rows["scratch"]["gates"] is None
    assert "failure_rate" in rows["scratch"]["extra"] and doc["summary"]["metric"] == "nme"
    # resumable: a second run trains nothing
    again = run_compare(spec, tmp_path / "cmp", log=lambda s: None)
    assert again["cells"] == cells


def test_cells_written_by_another_process_are_kept(tmp_path, monkeypatch):
    """Two compare processes with ``--only`` on one folder: a cell the other one recorded
    meanwhile stays in cells.json (the file is merged, not overwritten with a stale view)."""
    from zootune.compare import runner

    spec = load_compare(raw=_raw(["scratch", "finetune"], seeds=[0]))
    out = tmp_path / "cmp"
    out.mkdir()
    other = {"finetune[base]@seed0": {"entry": "finetune[base]", "variant": "", "seed": 0, "run": "x",
                                      "metrics": {"val": {"nme": 0.3}, "test": {"nme": 0.3}}, "costs": {},
                                      "wall_time_s": 1.0, "steps": 1, "stages": {}}}

    def fake_train_run(cfg, run_dir, **kw):
        # meanwhile, the other process records its cell
        (out / "cells.json").write_text(json.dumps(other))
        return {"steps": 1, "metrics": {"val": {"nme": 0.5}, "test": {"nme": 0.5}}, "costs": {},
                "wall_time_s": 1.0}

    monkeypatch.setattr(runner, "train_run", fake_train_run)
    res = run_compare(spec, out, log=lambda s: None, only=["scratch"])
    on_disk = json.loads((out / "cells.json").read_text())
    assert set(on_disk) == {"scratch@seed0", "finetune[base]@seed0"}
    assert set(res["cells"]) == set(on_disk)
