"""The demo comparison over seeds, and a labels-per-class sweep (where does each method win?).

    python benchmarks/demo_seeds.py                       # default: 5 seeds x every setting
    python benchmarks/demo_seeds.py --settings default --seeds 0 1 2 3 4 5 6 7

Every cell (setting, seed) runs :func:`zootune.demo.run.run_demo` — each source fine-tuned alone
(the best one chosen on validation), average aggregation, Zoo-Tuning, lite Zoo-Tuning and the
exported lite model — with the demo's one fixed recipe (:data:`zootune.demo.run.RECIPE`; only
the setting's own keys change). Cells are stored in ``results/demo_cells.json`` after each one
and skipped when re-run (resumable; delete the file to start over). The summary (mean, std,
seed-paired differences with their std and win counts) goes to ``results/demo.json`` and
``results/demo.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: Setting name -> recipe overrides (the rest is the demo's RECIPE).
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "labels2": {"labels_per_class": 2},
    "labels5": {"labels_per_class": 5},
    "labels30": {"labels_per_class": 30},
    "digits_only": {"greek": False},
}
METHODS = ("finetune_best", "average_aggregation", "zoo_tuning", "zoo_tuning_lite", "exported_lite")
PAIRS = (("zoo_tuning", "finetune_best"), ("zoo_tuning_lite", "finetune_best"),
         ("average_aggregation", "finetune_best"), ("zoo_tuning", "average_aggregation"),
         ("zoo_tuning_lite", "average_aggregation"), ("zoo_tuning", "zoo_tuning_lite"),
         ("exported_lite", "zoo_tuning_lite"))


from common import NOTES_MARK, keep_notes  # noqa: F401  (keep_notes also serves co_tuning, gate_defaults)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _stats(xs: list[float]) -> dict[str, float]:
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def summarize(cells: dict[str, Any]) -> dict[str, Any]:
    """Per setting: each method's mean/std test accuracy, and seed-paired differences."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for key, cell in cells.items():
        by_setting.setdefault(key.split("/")[0], []).append(cell)
    out: dict[str, Any] = {}
    for setting, runs in by_setting.items():
        ms = runs[0]["methods"]
        sources = [k for k in ms if k.startswith("finetune_") and k != "finetune_best"]
        s: dict[str, Any] = {"seeds": sorted(r["seed"] for r in runs), "methods": {}, "paired": {},
                             "best_source_counts": {}}
        for m in list(METHODS) + sources:
            vals = [r["methods"][m]["accuracy"] for r in runs if m in r["methods"]]
            if vals:
                s["methods"][m] = _stats(vals)
        for a, b in PAIRS:
            d = [r["methods"][a]["accuracy"] - r["methods"][b]["accuracy"] for r in runs
                 if a in r["methods"] and b in r["methods"]]
            if d:
                st = _stats(d)
                st["wins"] = sum(x > 0 for x in d)
                st["ties"] = sum(x == 0 for x in d)
                st["sem"] = st["std"] / math.sqrt(st["n"]) if st["n"] > 1 else 0.0
                s["paired"][f"{a} - {b}"] = st
        for r in runs:
            src = r["methods"]["finetune_best"]["source"]
            s["best_source_counts"][src] = s["best_source_counts"].get(src, 0) + 1
        # oracle: the source that is best on *test* (not a method: shows what selection loses)
        orc = [max(r["methods"][k]["accuracy"] for k in sources) for r in runs]
        s["methods"]["oracle_source (test-picked, not a method)"] = _stats(orc)
        s["recipe"] = runs[0]["recipe"]
        s["wall_time_s"] = _stats([r["wall_time_s"] for r in runs])
        out[setting] = s
    return out


def _pct(st: dict[str, float]) -> str:
    return f"{100 * st['mean']:.1f} ± {100 * st['std']:.1f}"


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = ["# Demo comparison over seeds", "",
             "Target: scikit-learn digits + 10 held-apart Greek letters (16x16), unless `digits_only`. "
             "Zoo: the shipped mini zoo (`base` + 4 specialists fine-tuned from it). One recipe for "
             "every method; `finetune_best` = the source with the best validation accuracy, reported "
             "on test. Test accuracy in %, mean ± std over seeds; paired = per-seed difference "
             "(points), mean ± std, and how many seeds the first method wins.", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}; torch {meta['torch']}; "
             f"{meta['threads']} threads.", ""]
    for setting, s in summary.items():
        r = s["recipe"]
        lines += [f"## {setting}: {r['labels_per_class']} labels/class, "
                  f"{'digits + Greek' if r['greek'] else 'digits only'}, {r['steps']} steps, "
                  f"seeds {s['seeds']}", "",
                  "| method | test acc (%) |", "|---|---:|"]
        for m, st in s["methods"].items():
            lines.append(f"| {m} | {_pct(st)} |")
        lines += ["", "| paired difference | points | wins / seeds |", "|---|---:|---:|"]
        for k, st in s["paired"].items():
            lines.append(f"| {k} | {100 * st['mean']:+.2f} ± {100 * st['std']:.2f} | "
                         f"{st['wins']} / {st['n']} |")
        lines += ["", f"Best source on validation: {s['best_source_counts']}. Wall time per cell: "
                  f"{s['wall_time_s']['mean']:.0f} s.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--cells", type=Path, default=RESULTS / "demo_cells.json")
    p.add_argument("--name", default="demo", help="output name: results/NAME.json and NAME.md")
    p.add_argument("--summary-only", action="store_true", help="rewrite the summary from stored cells")
    p.add_argument("--weights-dir", type=Path, default=None,
                   help="another build of the mini zoo (default: the shipped one)")
    args = p.parse_args(argv)

    import torch

    from zootune.demo.run import run_demo

    RESULTS.mkdir(parents=True, exist_ok=True)
    store = json.loads(args.cells.read_text()) if args.cells.is_file() else {"cells": {}}
    cells: dict[str, Any] = store["cells"]
    if not args.summary_only:
        for seed in args.seeds:  # seeds outermost: a partial run still covers every setting
            for setting in args.settings:
                key = f"{setting}/seed{seed}"
                if key in cells:
                    continue
                t = time.time()
                print(f"[{key}]", flush=True)
                res = run_demo(seed, SETTINGS[setting], log=lambda s: print(s, flush=True),
                               weights_dir=args.weights_dir)
                cells[key] = res
                store["cells"] = cells
                _atomic_write(args.cells, json.dumps(store, indent=1, ensure_ascii=False))
                print(f"[{key}] done in {time.time() - t:.0f}s", flush=True)
    meta = {"command": "python benchmarks/demo_seeds.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--summary-only"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__,
            "threads": next((c["recipe"].get("threads") for c in cells.values()), None),
            "python": platform.python_version()}
    selected = {k: v for k, v in cells.items() if k.split("/")[0] in args.settings}
    summary = summarize(selected)
    _atomic_write(RESULTS / f"{args.name}.json",
                  json.dumps({"meta": meta, "summary": summary}, indent=2, ensure_ascii=False))
    md_path = RESULTS / f"{args.name}.md"
    _atomic_write(md_path, keep_notes(md_path, markdown(summary, meta)))
    print(markdown(summary, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
