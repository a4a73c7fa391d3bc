"""The comparison's tables: test score mean ± std over seeds, seed-paired differences against the
best single source chosen on validation, measured costs and wall time (like the paper's Table 1).

Choices made on validation only: the *best single source* of each seed is the ``reference``
entry's cell (``finetune[<member>]``) with the best validation score of that seed; an entry with
a ``grid`` reports the variant with the best mean validation score over the seeds. Test scores
are only read for reporting.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from zootune.atomic import atomic_write_text
from zootune.compare.spec import Cell, CompareSpec

__all__ = ["summarize", "write_tables"]


def _task_info(plan: list[Cell]) -> tuple[str, bool, bool]:
    from zootune.tasks import build_task

    task = build_task(plan[0].cfg.task)
    return task.primary_metric, task.higher_is_better, task.primary_metric in task.percent_metrics


def _percent_metrics(plan: list[Cell]) -> frozenset[str]:
    from zootune.tasks import build_task

    return frozenset(build_task(plan[0].cfg.task).percent_metrics)


def _gates_summary(recs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The mean over seeds of the recorded gate matrices (:func:`~zootune.compare.runner.gate_record`)."""
    reps = [r["gates"] for r in recs if r.get("gates")]
    if not reps or any(g["layers"] != reps[0]["layers"] for g in reps):
        return None
    m, L = len(reps[0]["values"]), len(reps[0]["layers"])
    mean = [[statistics.fmean(g["values"][i][j] for g in reps) for j in range(L)] for i in range(m)]
    return {"layers": reps[0]["layers"], "values": mean, "seeds": len(reps)}


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _score(rec: dict[str, Any], split: str, metric: str) -> float | None:
    v = (rec.get("metrics") or {}).get(split, {}).get(metric)
    return float(v) if v is not None else None


def _total_costs(rec: dict[str, Any]) -> dict[str, float]:
    """Costs of a cell with its earlier stages (fine-tuned sources) counted in training."""
    c = rec.get("costs") or {}
    stages = rec.get("stages") or {}
    # a final stage of 0 steps (the ensemble) trains nothing
    main_steps_flops = c.get("train_flops", 0.0) if rec.get("steps", 1) else 0.0
    return {
        "train_flops": main_steps_flops + sum((s.get("costs") or {}).get("train_flops", 0.0)
                                              for s in stages.values()),
        "train_params": c.get("train_params", 0),
        "inference_flops": c.get("inference_flops", 0.0),
        "inference_params": c.get("inference_params", 0),
        "wall_time_s": rec.get("wall_time_s", 0.0) + sum(s.get("wall_time_s", 0.0)
                                                         for s in stages.values()),
    }


_ROUTING_KEYS = ("spread", "relative_spread", "mi_argmax", "mi_argmax_chance", "mi_binned",
                 "mi_binned_chance", "domain_gap")


def _routing_summary(recs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Gate-routing statistics (:mod:`zootune.compare.routing`) over the seeds of one row:
    each overall statistic's mean and std over seeds, and per layer the mean over seeds."""
    reps = [r["routing"] for r in recs if r.get("routing")]
    if not reps:
        return None
    out: dict[str, Any] = {"seeds": len(reps), "samples": reps[0].get("samples"),
                           "domains": reps[0].get("domains"),
                           "domain_entropy": reps[0].get("domain_entropy")}
    for k in _ROUTING_KEYS:
        vals = [r["overall"][k] for r in reps if k in (r.get("overall") or {})]
        if vals:
            out[k], out[f"{k}_std"] = _mean_std(vals)
    layers: dict[str, dict[str, float]] = {}
    for name in reps[0].get("layers", {}):
        per = [r["layers"][name] for r in reps if name in r.get("layers", {})]
        layers[name] = {k: statistics.fmean(p[k] for p in per) for k in _ROUTING_KEYS
                        if all(k in p for p in per)}
        layers[name]["mean"] = [statistics.fmean(v) for v in zip(*(p["mean"] for p in per))]
    out["layers"] = layers
    return out


def summarize(spec: CompareSpec, plan: list[Cell], cells: dict[str, Any]) -> dict[str, Any]:
    """Rows of the table (JSON-able); see the module docstring for what is chosen how."""
    metric, higher, percent = _task_info(plan)
    better = max if higher else min
    by_entry: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    method_of: dict[str, str] = {}
    for c in plan:
        rec = cells.get(c.id)
        method_of[c.entry] = c.cfg.method.name
        by_entry.setdefault(c.entry, {}).setdefault(c.variant, {})
        if rec is not None:
            by_entry[c.entry][c.variant][c.seed] = rec
    seeds = list(spec.options.seeds)

    # the best single source of each seed, on validation
    ref_entries = [e for e, m in method_of.items() if m == spec.options.reference]
    reference: dict[int, dict[str, Any]] = {}
    for s in seeds:
        cands = []
        for e in ref_entries:
            for variant, per_seed in by_entry[e].items():
                rec = per_seed.get(s)
                v = _score(rec, "val", metric) if rec else None
                if v is not None:
                    cands.append((v, e, variant, rec))
        if cands:
            v, e, variant, rec = better(cands, key=lambda t: t[0])
            reference[s] = {"entry": e, "variant": variant, "val": v,
                            "test": _score(rec, "test", metric), "record": rec}

    rows = []

    def row(label: str, per_seed: dict[int, dict[str, Any]], variant: str = "",
            variants: dict[str, Any] | None = None) -> dict[str, Any]:
        test = {s: _score(r, "test", metric) for s, r in per_seed.items()}
        val = {s: _score(r, "val", metric) for s, r in per_seed.items()}
        diffs = [test[s] - reference[s]["test"] for s in seeds
                 if s in reference and test.get(s) is not None and reference[s]["test"] is not None]
        costs = [_total_costs(r) for r in per_seed.values()]
        tm, ts = _mean_std([v for v in test.values() if v is not None])
        vm, _ = _mean_std([v for v in val.values() if v is not None])
        dm, dsd = _mean_std(diffs)
        return {
            "label": label, "variant": variant, "seeds": sorted(per_seed),
            "test_mean": tm, "test_std": ts, "val_mean": vm,
            "test": {str(s): v for s, v in test.items()},
            "diff_mean": dm, "diff_std": dsd,
            "wins": sum(d > 0 if higher else d < 0 for d in diffs), "paired": len(diffs),
            **{k: (statistics.fmean(c[k] for c in costs) if costs else None)
               for k in ("train_flops", "train_params", "inference_flops", "inference_params",
                         "wall_time_s")},
            "variants": variants or {},
            "routing": _routing_summary(list(per_seed.values())),
            "gates": _gates_summary(list(per_seed.values())),
            "extra": {m: dict(zip(("mean", "std"), _mean_std(
                [v for v in (_score(r, "test", m) for r in per_seed.values()) if v is not None])))
                for m in spec.options.metrics},
        }

    for entry, variants in by_entry.items():
        scored = {v: _mean_std([x for x in (_score(r, "val", metric) for r in ps.values())
                                if x is not None])[0] for v, ps in variants.items()}
        valid = {v: x for v, x in scored.items() if x is not None}
        chosen = better(valid, key=valid.get) if valid else next(iter(variants))
        rows.append(row(entry, variants[chosen], chosen,
                        {v: x for v, x in scored.items()} if len(variants) > 1 else None))
    if reference:
        ref_ps = {s: r["record"] for s, r in reference.items()}
        best = row(f"{spec.options.reference} (best on validation)", ref_ps)
        best["chosen"] = {str(s): r["entry"] for s, r in reference.items()}
        ref_index = max((i for i, r in enumerate(rows) if method_of.get(r["label"]) ==
                         spec.options.reference), default=-1)
        rows.insert(ref_index + 1, best)
    pct_metrics = _percent_metrics(plan) if spec.options.metrics else frozenset()
    return {"metric": metric, "higher_is_better": higher, "percent": percent, "seeds": seeds,
            "extra_metrics": {m: {"percent": m in pct_metrics} for m in spec.options.metrics},
            "rows": rows,
            "reference": {str(s): {k: v for k, v in r.items() if k != "record"}
                          for s, r in reference.items()}}


def _fmt(v: float | None, pct: bool, signed: bool = False) -> str:
    if v is None:
        return "—"
    v = 100 * v if pct else v
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _unit(values: list[float | None]) -> tuple[str, float]:
    """The FLOP unit that reads best for the largest value (G for a ResNet, M or k when tiny)."""
    top = max((v for v in values if v), default=0.0)
    for name, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if top >= k:
            return name, k
    return "", 1.0


def _g(flops: float | None, k: float = 1e9) -> str:
    return "—" if flops is None else f"{flops / k:.4g}"


def _m(params: float | None) -> str:
    return "—" if params is None else f"{params / 1e6:.3g}M"


def format_markdown(spec: CompareSpec, summary: dict[str, Any]) -> str:
    """The Markdown table (and how to read it)."""
    metric, pct, rows = summary["metric"], bool(summary.get("percent")), summary["rows"]
    unit = " (%)" if pct else ""
    n = len(summary["seeds"])
    u, k = _unit([r[c] for r in rows for c in ("train_flops", "inference_flops")])
    extra = summary.get("extra_metrics") or {}
    lines = [f"# Comparison: {spec.name}", "",
             (f"Test {metric}{unit}, mean ± std over {n} seed(s) ({', '.join(map(str, summary['seeds']))}); "
             f"Δ: seed-paired difference against the best single source of each seed, chosen on "
             f"validation (wins = seeds where the method is better). Training {u}FLOPs: one training "
             f"step's forward per sample, summed over the method's stages (its fine-tuned "
             f"sources included); inference {u}FLOPs: the deployed model, per sample. FLOPs are "
             f"counted by torch's FlopCounterMode, 2 per multiply-add (the paper's GFLOPs are "
             f"multiply-adds: half these). Wall: seconds, stages included (shared fine-tuned "
             f"sources counted for every method that uses them)."), "",
             (f"| method | test {metric}{unit} | "
              + "".join(f"test {m}{' (%)' if e['percent'] else ''} | " for m, e in extra.items())
              + f"Δ vs best single | wins | val{unit} | train {u}FLOPs | "
             f"train params | inference {u}FLOPs | inference params | wall (s) |"),
             "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra)]
    for r in rows:
        label = r["label"] + (f" {{{r['variant']}}}" if r["variant"] else "")
        test = (f"{_fmt(r['test_mean'], pct)} ± {_fmt(r['test_std'], pct)}"
                if r["test_mean"] is not None else "—")
        diff = (f"{_fmt(r['diff_mean'], pct, True)} ± {_fmt(r['diff_std'], pct)}"
                if r["diff_mean"] is not None else "—")
        wins = f"{r['wins']}/{r['paired']}" if r["paired"] else "—"
        wall = "—" if r["wall_time_s"] is None else f"{r['wall_time_s']:.1f}"
        for m, e in extra.items():
            x = (r.get("extra") or {}).get(m) or {}
            test += " | " + (f"{_fmt(x['mean'], e['percent'])} ± {_fmt(x['std'], e['percent'])}"
                             if x.get("mean") is not None else "—")
        lines.append(f"| {label} | {test} | {diff} | {wins} | {_fmt(r['val_mean'], pct)} | "
                     f"{_g(r['train_flops'], k)} | {_m(r['train_params'])} | {_g(r['inference_flops'], k)} | "
                     f"{_m(r['inference_params'])} | {wall} |")
    grids = [r for r in rows if r["variants"]]
    if grids:
        lines += ["", "Variants (mean validation score; the best is reported above):", ""]
        for r in grids:
            lines.append(f"- {r['label']}: " + "; ".join(
                f"{{{v}}} {_fmt(x, pct)}" for v, x in r["variants"].items()))
    lines += _routing_markdown(rows)
    ref = summary.get("reference") or {}
    if ref:
        lines += ["", "Best single source per seed (on validation): " + ", ".join(
            f"seed {s}: {r['entry']}" for s, r in ref.items())]
    return "\n".join(lines) + "\n"


def _routing_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The "do the gates route?" table: rows with per-sample gates only."""
    routed = [r for r in rows if r.get("routing")]
    if not routed:
        return []

    def ms(rt: dict[str, Any], k: str, digits: int = 3) -> str:
        if rt.get(k) is None:
            return "—"
        return f"{rt[k]:.{digits}f} ± {rt.get(f'{k}_std') or 0:.{digits}f}"

    intro = ("Do the gates route? Per-sample gates on the test split, averaged over the "
             "aggregated layers, mean ± std over seeds (`zootune.compare.routing`): spread = mean "
             "over sources of the gate's std across samples (relative: / mean gate); MI = mutual "
             "information (bits) between the sub-domain and the arg-max source, or the most "
             "informative source's gate in equal-count bins, beside its chance level (domain "
             "labels shuffled) and H(domain), the most it can be; gap = largest total-variation "
             "distance between two sub-domains' mean gates. Per-layer values are in results.json.")
    header = ("| method | spread | relative spread | MI arg-max (chance) | MI binned (chance) | "
              "H(domain) | gap | sub-domains |")
    out = ["", intro, "", header, "|---|---|---|---|---|---|---|---|"]
    for r in routed:
        rt = r["routing"]
        label = r["label"] + (f" {{{r['variant']}}}" if r["variant"] else "")
        doms = ", ".join(f"{k} {v}" for k, v in (rt.get("domains") or {}).items()) or "none given"
        h = "—" if rt.get("domain_entropy") is None else f"{rt['domain_entropy']:.3f}"
        mi_a = "—" if rt.get("mi_argmax") is None else \
            f"{ms(rt, 'mi_argmax')} ({rt['mi_argmax_chance']:.3f})"
        mi_b = "—" if rt.get("mi_binned") is None else \
            f"{ms(rt, 'mi_binned')} ({rt['mi_binned_chance']:.3f})"
        out.append(f"| {label} | {ms(rt, 'spread', 4)} | {ms(rt, 'relative_spread')} | {mi_a} | "
                   f"{mi_b} | {h} | {ms(rt, 'domain_gap')} | {doms} |")
    return out


def write_tables(spec: CompareSpec, summary: dict[str, Any], cells: dict[str, Any],
                 out: Path) -> tuple[Path, Path]:
    """``results.json`` (summary, cells, machine, versions, config) and ``results.md``."""
    import torch

    import zootune

    info = {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "zootune": zootune.__version__, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    doc = {"name": spec.name, "summary": summary, "cells": cells, "environment": info,
           "compare": spec.options.model_dump(mode="json"), "base_config": spec.base}
    j = out / "results.json"
    atomic_write_text(j, json.dumps(doc, indent=2, default=str))
    md = out / "results.md"
    atomic_write_text(md, format_markdown(spec, summary) + f"\nEnvironment: {json.dumps(info)}\n")
    return j, md
