"""``zootune compare``: cells over seeds, shared fine-tuned sources, resume, validation-only choices."""

from __future__ import annotations

import json

import pytest
import yaml
from trainer_utils import run_cli, tiny_raw

from zootune.compare import load_compare, plan_cells, run_compare, summarize
from zootune.config import ConfigError


def _raw(methods, seeds=(0, 1), **over):
    raw = tiny_raw(train__steps=6, train__eval_every=0, train__checkpoint_every=3, **over)
    raw.pop("method")
    raw["compare"] = {"methods": list(methods), "seeds": list(seeds), "reports": False}
    return raw


def test_fine_tuned_sources_are_trained_once_and_shared(tmp_path, monkeypatch):
    spec = load_compare(raw=_raw(["finetune", "ensemble", "distill", {"name": "fe", "finetuned": True,
                                                                        "label": "fe+finetuned"}]))
    calls = []
    import zootune.train as train_pkg  # the runner imports run_config from here at call time

    orig = train_pkg.run_config

    def counting(cfg, out, **kw):
        calls.append(cfg.method.name)
        return orig(cfg, out, **kw)

    monkeypatch.setattr(train_pkg, "run_config", counting)
    res = run_compare(spec, tmp_path / "cmp", log=lambda s: None)
    # 2 members x 2 seeds fine-tuned once each; ensemble, distill, fe: one final stage per seed
    assert sorted(calls) == sorted(["finetune"] * 4 + ["ensemble", "distill", "fe"] * 2)
    runs = sorted(p.name for p in (tmp_path / "cmp" / "runs").iterdir())
    assert sum(r.startswith("finetune-") for r in runs) == 4
    ens = tmp_path / "cmp" / res["cells"]["ensemble@seed0"]["run"]
    link = ens / "stages" / "finetune_random0"
    assert link.is_symlink()
    assert link.resolve() == (tmp_path / "cmp" / res["cells"]["finetune[random0]@seed0"]["run"]).resolve()
    md = res["results_md"].read_text()
    for label in ("finetune[random0]", "finetune (best on validation)", "ensemble", "distill",
                  "fe+finetuned"):
        assert f"| {label} |" in md
    # costs were measured: the ensemble's inference is both members, distill's one member
    rows = {r["label"]: r for r in res["summary"]["rows"]}
    one = rows["finetune[random0]"]["inference_flops"]
    assert rows["ensemble"]["inference_flops"] == pytest.approx(2 * one)
    assert rows["distill"]["inference_flops"] == pytest.approx(one)
    assert rows["ensemble"]["train_flops"] == pytest.approx(2 * one)  # two fine-tunings
    assert rows["distill"]["train_flops"] == pytest.approx(5 * one)  # + student and 2 teachers
    data = json.loads(res["results_json"].read_text())
    assert data["environment"]["torch"] and data["summary"]["seeds"] == [0, 1]

    # the reference is the best single source of each seed ON VALIDATION; differences are paired
    cells = res["cells"]
    for s in (0, 1):
        cands = {m: cells[f"finetune[{m}]@seed{s}"] for m in ("random0", "random1")}
        best = max(cands, key=lambda m: cands[m]["metrics"]["val"]["accuracy"])
        assert res["summary"]["reference"][str(s)]["entry"] == f"finetune[{best}]"
    diffs = [cells[f"distill@seed{s}"]["metrics"]["test"]["accuracy"]
             - res["summary"]["reference"][str(s)]["test"] for s in (0, 1)]
    assert rows["distill"]["diff_mean"] == pytest.approx(sum(diffs) / 2)

    # run again: nothing is trained
    calls.clear()
    res2 = run_compare(load_compare(raw=spec.raw | {"compare": _raw([])["compare"] | {
        "methods": ["finetune", "ensemble", "distill",
                    {"name": "fe", "finetuned": True, "label": "fe+finetuned"}]}}),
        tmp_path / "cmp", log=lambda s: None)
    assert calls == []
    assert res2["summary"]["rows"] == res["summary"]["rows"]


def test_an_unfinished_cell_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    spec = load_compare(raw=_raw(["finetune"], seeds=[0]))
    out = tmp_path / "cmp"
    res = run_compare(spec, out, log=lambda s: None)
    cell = res["cells"]["finetune[random1]@seed0"]
    run_dir = out / cell["run"]
    # forget that the cell finished: only its checkpoints (step 3 and 6) remain
    (run_dir / "compare.json").unlink()
    (run_dir / "model.safetensors").unlink()
    import zootune.train as train_pkg

    seen = []
    orig = train_pkg.run_config

    def spy(cfg, out_dir, **kw):
        seen.append((cfg.method.source, kw.get("resume")))
        return orig(cfg, out_dir, **kw)

    monkeypatch.setattr(train_pkg, "run_config", spy)
    res2 = run_compare(spec, out, log=lambda s: None)
    assert seen == [("random1", True)]  # only that cell, resumed
    assert res2["cells"]["finetune[random1]@seed0"]["metrics"] == cell["metrics"]


def test_unknown_method_is_one_error_line_listing_the_registered_names(tmp_path):
    raw = _raw(["finetune", "ensemblee"])
    with pytest.raises(ConfigError, match=r"unknown method 'ensemblee' \(did you mean 'ensemble'\?\); "
                                          r"valid methods: .*knowledge_flow"):
        load_compare(raw=raw)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(raw))
    r = run_cli("compare", str(f), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown method 'ensemblee'")
    assert "zoo_tuning" in lines[0] and "distill" in lines[0]
    assert not (tmp_path / "o").exists()


def test_compare_config_errors_name_the_key():
    raw = _raw(["finetune"])
    raw["compare"]["sedes"] = [1]
    with pytest.raises(ConfigError, match=r"unknown config key 'compare\.sedes'.*did you mean 'compare\.seeds'"):
        load_compare(raw=raw)
    raw = _raw(["finetune", {"name": "zoo_tuning", "lite": True}, {"name": "zoo_tuning", "lite": True}])
    with pytest.raises(ConfigError, match="label"):
        load_compare(raw=raw)
    with pytest.raises(ConfigError, match="valid keys in method"):
        load_compare(raw=_raw([{"name": "distill", "temprature": 3}]))


def test_grid_variant_and_reference_are_chosen_on_validation_not_test():
    spec = load_compare(raw=_raw(["finetune", {"name": "distill", "grid": {"method.temperature": [1, 4]}}]))
    plan = plan_cells(spec)
    ids = [c.id for c in plan]
    assert "distill{temperature=1}@seed0" in ids and "distill{temperature=4}@seed1" in ids
    assert {c.cfg.method.temperature for c in plan if c.entry == "distill"} == {1.0, 4.0}
    # seeds set train.seed and data.seed
    assert {(c.cfg.train.seed, c.cfg.data.seed) for c in plan} == {(0, 0), (1, 1)}

    def rec(val, test):
        return {"metrics": {"val": {"accuracy": val}, "test": {"accuracy": test}},
                "costs": {"train_flops": 1.0, "inference_flops": 1.0}, "wall_time_s": 1.0,
                "steps": 6}

    cells = {
        # random0 is better on validation, random1 on test: the reference must be random0
        "finetune[random0]@seed0": rec(0.6, 0.50), "finetune[random1]@seed0": rec(0.5, 0.70),
        "finetune[random0]@seed1": rec(0.4, 0.40), "finetune[random1]@seed1": rec(0.7, 0.60),
        # temperature 4 is better on validation, worse on test: it is reported
        "distill{temperature=1}@seed0": rec(0.5, 0.90), "distill{temperature=1}@seed1": rec(0.5, 0.90),
        "distill{temperature=4}@seed0": rec(0.8, 0.55), "distill{temperature=4}@seed1": rec(0.8, 0.65),
    }
    summary = summarize(spec, plan, cells)
    assert {s: r["entry"] for s, r in summary["reference"].items()} == {
        "0": "finetune[random0]", "1": "finetune[random1]"}
    rows = {r["label"]: r for r in summary["rows"]}
    d = rows["distill"]
    assert d["variant"] == "temperature=4"
    assert d["diff_mean"] == pytest.approx(((0.55 - 0.50) + (0.65 - 0.60)) / 2)
    assert d["diff_std"] == pytest.approx(0.0, abs=1e-12)
    assert d["wins"] == 2 and d["test_mean"] == pytest.approx(0.60)
    best = rows["finetune (best on validation)"]
    assert best["test_mean"] == pytest.approx(0.55) and best["diff_mean"] == 0.0


def test_the_shipped_example_plans_every_baseline_of_the_paper():
    from zootune.compare import compare_examples

    assert "digits_tiny" in compare_examples()
    spec = load_compare("digits_tiny")
    methods = {c.cfg.method.name for c in plan_cells(spec)}
    assert methods >= {"scratch", "finetune", "ensemble", "distill", "knowledge_flow", "ced", "fe",
                       "average_aggregation", "zoo_tuning"}
    zt = [c.cfg.method for c in plan_cells(spec) if c.cfg.method.name == "zoo_tuning"]
    assert {(m.align is not False, m.lite) for m in zt} == {(True, False), (False, False), (True, True)}


def test_recount_costs_restores_the_measured_costs(tmp_path):
    from zootune.compare.runner import recount_costs

    spec = load_compare(raw=_raw(["zoo_tuning", "ensemble"], seeds=[0]))
    run_compare(spec, tmp_path, log=lambda s: None)
    cells_file = tmp_path / "cells.json"
    cells = json.loads(cells_file.read_text())
    true = {k: dict(v["costs"]) for k, v in cells.items()}
    for v in cells.values():  # as if counted by an older rule
        v["costs"]["train_flops"] = 1.0
    cells_file.write_text(json.dumps(cells))
    n = recount_costs(spec, tmp_path, log=lambda s: None)
    assert n == 1  # zoo_tuning; the ensemble has earlier stages and is left alone
    after = json.loads(cells_file.read_text())
    zt = "zoo_tuning@seed0"
    assert after[zt]["costs"] == true[zt]
    assert after["ensemble@seed0"]["costs"]["train_flops"] == 1.0
    record = json.loads((tmp_path / after[zt]["run"] / "compare.json").read_text())
    assert record["costs"] == true[zt]
    table = json.loads((tmp_path / "results.json").read_text())
    row = next(r for r in table["summary"]["rows"] if r["label"] == "zoo_tuning")
    assert row["train_flops"] == true[zt]["train_flops"]


def test_a_run_trained_by_another_process_is_waited_for_not_trained_twice(tmp_path):
    import fcntl
    import threading

    from zootune.compare.runner import run_dir_name, train_run

    spec = load_compare(raw=_raw(["scratch"], seeds=[0]))
    cell = plan_cells(spec)[0]
    run_dir = tmp_path / "runs" / run_dir_name(cell.cfg)
    run_dir.mkdir(parents=True)
    logs: list[str] = []
    out: dict = {}
    with open(run_dir / ".lock", "w") as held:  # another process is training this run
        fcntl.flock(held, fcntl.LOCK_EX)
        t = threading.Thread(target=lambda: out.setdefault("rec", train_run(
            cell.cfg, run_dir, report=False, log=logs.append)))
        t.start()
        t.join(timeout=1.0)
        assert t.is_alive() and any("another process" in m for m in logs)
        (run_dir / "compare.json").write_text(json.dumps({"steps": 6, "metrics": {}, "marker": 1}))
        fcntl.flock(held, fcntl.LOCK_UN)
    t.join(timeout=60)
    assert out["rec"]["marker"] == 1  # found finished by the other process: nothing retrained
    assert not (run_dir / "checkpoints").exists()


def test_per_batch_work_is_shared_by_the_samples_of_a_training_batch():
    from zootune.compare import measure_costs
    from zootune.train import build_run

    cfg = load_compare(raw=_raw(["zoo_tuning"], seeds=[0])).base
    zt = build_run(plan_cells(load_compare(raw=_raw(["zoo_tuning"], seeds=[0])))[0].cfg)
    ft = build_run(plan_cells(load_compare(raw=_raw(["scratch"], seeds=[0])))[0].cfg)
    assert cfg["train"]["batch_size"] >= 4
    # plain model: per-sample cost does not depend on the batch
    assert measure_costs(ft, n=2)["train_flops"] == pytest.approx(measure_costs(ft, n=4)["train_flops"])
    # Zoo-Tuning: the alignment T_i W_i is computed once per batch, so per sample it shrinks as
    # 1/B: cost(B) = a + b / B, and the default batch is the run's train.batch_size
    c2, c4 = (measure_costs(zt, n=k)["train_flops"] for k in (2, 4))
    b = (c2 - c4) / (1 / 2 - 1 / 4)
    assert b > 0
    B = zt.cfg.train.batch_size
    assert measure_costs(zt)["train_flops"] == pytest.approx(c4 - b / 4 + b / B, rel=1e-6)
