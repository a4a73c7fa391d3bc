"""Does aligning a zoo before aggregating it help? (issue 14, point 4)

    nice -n 10 python benchmarks/align.py                 # everything (resumes; hours on 1 thread)
    nice -n 10 python benchmarks/align.py --seeds 0 1     # fewer seeds
    nice -n 10 python benchmarks/align.py --only timing --results benchmarks/results/align_timing.json

Target task, recipe and data: the demo's (:data:`zootune.demo.run.RECIPE`: handwritten digits +
ten held-apart Greek letters, 10 labels per class, Adam, cosine schedule, 300 steps; fixed
before any number here was seen; the seed sets the data split, the head and the batches).

Zoos (MiniCNN, 16x16 grey glyphs, five members each):

* ``independent`` - five members trained from independent random starts, one per glyph domain
  (``benchmarks/selection.py``'s :func:`build_independent_zoo`, cached under
  ``benchmarks/cache/selection/independent``);
* ``demo`` - the shipped shared-base zoo (a base and four specialists fine-tuned from it), where
  alignment should change little.

Per (zoo, seed): each member fine-tuned alone (``finetune_best`` = best on *validation*,
reported on test), then ``average_aggregation``, ``zoo_tuning`` and ``zoo_tuning_lite``, each
without and with ``align_zoo: true`` (weight matching to member 0, before the new head is put
on). Reported: mean test accuracy, paired differences (per seed) against ``finetune_best`` and
aligned minus unaligned, and the fraction of the gap to the best single source that alignment
recovers. Also, once: the time ``align_zoo`` takes for five torchvision ResNet-50s with random
weights (``timing`` cell; no downloads).

Resumable: each cell is written to ``benchmarks/results/align.json`` when it finishes (atomic
writes) and skipped on a re-run; ``align.md`` is rewritten after each cell.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
AGG = ("average_aggregation", "zoo_tuning", "zoo_tuning_lite")
ZOOS = ("independent", "demo")


def load_zoo(name: str):
    from zootune.zoo import load_zoo as _load

    if name == "demo":
        from zootune.demo.zoo import load_demo_zoo

        return load_demo_zoo(strip_heads="differing")
    from selection import CACHE, build_independent_zoo

    paths = build_independent_zoo(CACHE / "independent")
    specs = [f"file:{p} arch=zootune.demo.model:MiniCNN name={p.stem}" for p in paths]
    return _load(specs, strip_heads="differing", check_related=False, warn=False)


def train_cell(zoo, data, method: str, seed: int, align: bool, source: int = 0) -> dict[str, Any]:
    from zootune.config import build_config
    from zootune.demo.run import RECIPE, demo_config
    from zootune.train import build_run, fit

    raw = demo_config(method, seed, dict(RECIPE), source).to_dict()
    if align:
        raw["method"]["align_zoo"] = True
    cfg = build_config(raw)
    t0 = time.perf_counter()
    run = build_run(cfg, zoo=zoo, data=data)
    res = fit(run.model, run.task, data, cfg, out_dir=None, method=run.method, report=False)
    if res.interrupted:
        raise KeyboardInterrupt
    return {"test_accuracy": float(res.metrics["test"]["accuracy"]),
            "val_accuracy": float(res.metrics["val"]["accuracy"]),
            "seconds": round(time.perf_counter() - t0, 1)}


def relatedness_cell(zoo) -> dict[str, Any]:
    from zootune.align import align_zoo
    from zootune.zoo.relatedness import relatedness

    t0 = time.perf_counter()
    aligned = align_zoo(list(zoo), permute_outputs=True)
    secs = time.perf_counter() - t0
    before = relatedness(list(zoo), list(zoo.names)).pairwise()[0]
    after = relatedness(list(aligned), list(zoo.names)).pairwise()[0]
    return {"cos_to_member0_before": before.round(4).tolist(),
            "cos_to_member0_after": after.round(4).tolist(), "align_seconds": round(secs, 2),
            "sweeps": [m.get("sweeps") for m in aligned.info["members"]]}


def timing_cell(n: int = 5) -> dict[str, Any]:
    import torchvision

    from zootune.align import align_zoo

    models = []
    for s in range(n):
        torch.manual_seed(s)
        models.append(torchvision.models.resnet50().eval())
    t0 = time.perf_counter()
    aligned = align_zoo(models, example_input=torch.randn(2, 3, 224, 224))
    return {"models": n, "seconds": round(time.perf_counter() - t0, 1),
            "groups": aligned.info["groups"], "threads": torch.get_num_threads(),
            "per_member": [{k: m.get(k) for k in ("seconds", "sweeps", "max_abs_diff")}
                           for m in aligned.info["members"]]}


def summarize(cells: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for zoo in ZOOS:
        seeds = sorted({c["seed"] for k, c in cells.items() if k.startswith(f"{zoo}/") and "seed" in c})
        per: dict[str, dict[int, float]] = {}
        for s in seeds:
            ft = [c for k, c in cells.items() if k.startswith(f"{zoo}/{s}/finetune_")]
            if len(ft) == 5:
                best = max(ft, key=lambda c: c["val_accuracy"])
                per.setdefault("finetune_best", {})[s] = best["test_accuracy"]
            for m in AGG:
                for a in (False, True):
                    c = cells.get(f"{zoo}/{s}/{m}/{'align' if a else 'plain'}")
                    if c:
                        per.setdefault(f"{m}{'+align' if a else ''}", {})[s] = c["test_accuracy"]
        rows = {}
        for name, vals in per.items():
            row = {"n": len(vals), "mean": float(np.mean(list(vals.values())))}
            best = per.get("finetune_best", {})
            common = [s for s in vals if s in best]
            if name != "finetune_best" and common:
                d = np.array([vals[s] - best[s] for s in common])
                row["vs_best"] = (float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else float("nan"), len(d))
            if name.endswith("+align"):
                base = per.get(name[:-6], {})
                common = [s for s in vals if s in base]
                if common:
                    d = np.array([vals[s] - base[s] for s in common])
                    row["align_gain"] = (float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else float("nan"), len(d))
                    gap = [best[s] - base[s] for s in common if s in best]
                    if gap and np.mean(gap) > 0:
                        row["recovered_fraction"] = float(d.mean() / np.mean(gap))
            rows[name] = row
        out[zoo] = rows
    return out


def markdown(cells: dict[str, Any], meta: dict[str, Any]) -> str:
    summ = summarize(cells)
    lines = ["# Aligning the zoo before aggregation (benchmarks/align.py)", "",
             f"Machine: {meta['machine']}; torch {meta['torch']}; threads {meta['threads']}. "
             "Test accuracy (%), mean over seeds; paired differences in points, mean ± sd (n).", ""]
    pm = lambda t: f"{100 * t[0]:+.1f} ± {100 * t[1]:.1f} ({t[2]})"  # noqa: E731
    for zoo, rows in summ.items():
        lines += [f"## {zoo} zoo", "", "| method | n | test acc | vs best single (paired) | "
                  "aligned − unaligned (paired) | gap recovered |", "|---|---|---|---|---|---|"]
        for name, r in rows.items():
            rec = f"{100 * r['recovered_fraction']:.0f}%" if "recovered_fraction" in r else "-"
            lines.append(f"| {name} | {r['n']} | {100 * r['mean']:.1f} | "
                         f"{pm(r['vs_best']) if 'vs_best' in r else '-'} | "
                         f"{pm(r['align_gain']) if 'align_gain' in r else '-'} | {rec} |")
        rel = cells.get(f"{zoo}/relatedness")
        if rel:
            lines += ["", f"Median layer cosine similarity to member 0, before: "
                      f"{rel['cos_to_member0_before']}, after alignment: {rel['cos_to_member0_after']} "
                      f"(align_zoo {rel['align_seconds']} s)."]
        lines.append("")
    t = cells.get("timing")
    if t:
        lines += ["## align_zoo on five torchvision ResNet-50s (random weights)", "",
                  f"{t['seconds']} s in total on {t['threads']} thread(s), {t['groups']} groups; "
                  f"per member: {t['per_member']}", ""]
    lines += ["'gap recovered' = (aligned − unaligned) / (best single − unaligned), only where "
              "the unaligned method is below the best single source on average.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--zoos", nargs="+", default=list(ZOOS), choices=ZOOS)
    ap.add_argument("--only", choices=["timing", "train"], default=None)
    ap.add_argument("--results", default=str(RESULTS / "align.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from zootune.atomic import atomic_write_text

    path = Path(args.results)
    cells: dict[str, Any] = json.loads(path.read_text())["cells"] if path.is_file() else {}
    meta = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}

    def save() -> None:
        atomic_write_text(path, json.dumps({"meta": meta, "cells": cells}, indent=1))
        atomic_write_text(path.with_suffix(".md"), markdown(cells, meta))

    def cell(key: str, fn) -> None:
        if key in cells:
            return
        print(f"[{time.strftime('%H:%M:%S')}] {key} ...", flush=True)
        cells[key] = fn()
        print(f"    {cells[key]}", flush=True)
        save()

    if args.only == "timing":  # its own results file, so it can run beside the training cells
        cell("timing", timing_cell)
        return 0
    import zootune.demo.data  # noqa: F401 - registers demo_target
    from zootune.data import build_data
    from zootune.demo.run import RECIPE, demo_config

    zoos = {z: load_zoo(z) for z in args.zoos}
    for z in args.zoos:
        cell(f"{z}/relatedness", lambda: relatedness_cell(zoos[z]))
    for seed in args.seeds:  # seed-major: partial results are whole seeds
        data = build_data(demo_config("finetune", seed, dict(RECIPE)).data)
        for z in args.zoos:
            zoo = zoos[z]
            for m in AGG:
                for a in (False, True):
                    cell(f"{z}/{seed}/{m}/{'align' if a else 'plain'}",
                         lambda: {**train_cell(zoo, data, m, seed, a), "seed": seed})
            for i, name in enumerate(zoo.names):
                cell(f"{z}/{seed}/finetune_{name}",
                     lambda: {**train_cell(zoo, data, "finetune", seed, False, i), "seed": seed})
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
