"""Gate kind / initialisation / hidden size for Zoo-Tuning and lite on the demo setting (issue 3.3).

    python benchmarks/gate_defaults.py                     # every variant x seeds 0 1 2

Each cell (variant, seed) trains per-sample Zoo-Tuning and lite Zoo-Tuning on the demo target
with the demo's fixed recipe (:data:`zootune.demo.run.RECIPE`), changing only the gate settings.
Cells are stored in ``results/gate_defaults_cells.json`` after each one and skipped when re-run.
The summary (test accuracy mean/std, and the seed-paired difference to the paper's
``sigmoid``/``kaiming`` gates) goes to ``results/gate_defaults.json`` and ``.md``. The same
seeds' ``average_aggregation`` and ``finetune_best`` from ``results/demo_zoo_v1_cells.json`` (if
present) are shown for reference. The stored cells were measured with the first demo zoo ("zoo v1",
specialists fine-tuned 500 steps at lr 1e-3; see ``results/demo_zoo_v1.md``); delete the cells
file to re-measure with the shipped zoo.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

from demo_seeds import RESULTS, _atomic_write, _stats, keep_notes

#: Variant name -> gate settings (``gate``, ``gate_init``, ``gate_hidden``).
VARIANTS: dict[str, dict[str, Any]] = {
    "sigmoid/kaiming (paper + reference code)": {"gate": "sigmoid", "gate_init": "kaiming"},
    "sigmoid/uniform": {"gate": "sigmoid", "gate_init": "uniform"},
    "sigmoid/default": {"gate": "sigmoid", "gate_init": "default"},
    "normalized/kaiming": {"gate": "normalized", "gate_init": "kaiming"},
    "normalized/uniform": {"gate": "normalized", "gate_init": "uniform"},
    "normalized/default": {"gate": "normalized", "gate_init": "default"},
    "softmax/uniform": {"gate": "softmax", "gate_init": "uniform"},
    "normalized/uniform, hidden 16": {"gate": "normalized", "gate_init": "uniform", "gate_hidden": 16},
    "normalized/uniform, gate lr 1e-2": {"gate": "normalized", "gate_init": "uniform", "gate_lr": 1e-2},
    "normalized/uniform, align lr 1e-4": {"gate": "normalized", "gate_init": "uniform", "align_lr": 1e-4},
    "normalized/uniform, no alignment": {"gate": "normalized", "gate_init": "uniform", "align": False},
}
REFERENCE = "sigmoid/kaiming (paper + reference code)"
METHODS = ("zoo_tuning", "zoo_tuning_lite")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)

    import torch

    from zootune.demo.run import run_demo

    cells_path = RESULTS / "gate_defaults_cells.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    store = json.loads(cells_path.read_text()) if cells_path.is_file() else {"cells": {}}
    cells = store["cells"]
    if not args.summary_only:
        for seed in args.seeds:
            for v in args.variants:
                key = f"{v}/seed{seed}"
                if key in cells:
                    continue
                t = time.time()
                print(f"[{key}]", flush=True)
                rec = {"gate_hidden": None, **VARIANTS[v]}
                res = run_demo(seed, rec, methods=METHODS, finetune=False,
                               log=lambda s: print(s, flush=True))
                cells[key] = {"seed": seed, "variant": v, "recipe": res["recipe"],
                              "methods": {m: {k: res["methods"][m][k] for k in ("accuracy", "val_accuracy", "train_time_s")}
                                          for m in METHODS},
                              "wall_time_s": res["wall_time_s"]}
                _atomic_write(cells_path, json.dumps(store, indent=1, ensure_ascii=False))
                print(f"[{key}] done in {time.time() - t:.0f}s", flush=True)

    demo_cells = RESULTS / "demo_zoo_v1_cells.json"
    ref = json.loads(demo_cells.read_text())["cells"] if demo_cells.is_file() else {}
    summary: dict[str, Any] = {}
    for v in VARIANTS:
        runs = [c for k, c in cells.items() if c["variant"] == v and c["seed"] in args.seeds]
        if not runs:
            continue
        s: dict[str, Any] = {"seeds": sorted(r["seed"] for r in runs)}
        for m in METHODS:
            s[m] = _stats([r["methods"][m]["accuracy"] for r in runs])
            s[m + "_val"] = _stats([r["methods"][m]["val_accuracy"] for r in runs])
            base = {c["seed"]: c["methods"][m]["accuracy"] for c in cells.values() if c["variant"] == REFERENCE}
            d = [r["methods"][m]["accuracy"] - base[r["seed"]] for r in runs if r["seed"] in base]
            if d and v != REFERENCE:
                s[m + "_minus_reference"] = {**_stats(d), "wins": sum(x > 0 for x in d)}
        summary[v] = s
    refs: dict[str, Any] = {}
    for m in ("finetune_best", "average_aggregation"):
        vals = [ref[f"default/seed{sd}"]["methods"][m]["accuracy"] for sd in args.seeds if f"default/seed{sd}" in ref]
        if vals:
            refs[m] = _stats(vals)
    meta = {"command": "python benchmarks/gate_defaults.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--summary-only"),
            "machine": platform.machine(), "torch": torch.__version__,
            "threads": next((c["recipe"].get("threads") for c in cells.values()), None)}
    _atomic_write(RESULTS / "gate_defaults.json",
                  json.dumps({"meta": meta, "summary": summary, "reference_methods": refs}, indent=2))
    md = ["# Gate kind and initialisation (issue 3, point 3)", "",
          "Demo setting (digits + held-apart Greek, the demo recipe) with the first demo zoo (zoo v1: "
          "specialists fine-tuned 500 steps at lr 1e-3, see `demo_zoo_v1.md`), seeds "
          f"{args.seeds}. Test accuracy % (mean ± std); Δ = seed-paired difference to "
          f"`{REFERENCE}` in points (wins / seeds).", "",
          f"Command: `{meta['command']}`; torch {meta['torch']}, {meta['threads']} threads.", "",
          "| gate / init | Zoo-Tuning | Δ | lite | Δ | val ZT | val lite |", "|---|---:|---:|---:|---:|---:|---:|"]
    for v, s in summary.items():
        row = [v]
        for m in METHODS:
            row.append(f"{100 * s[m]['mean']:.1f} ± {100 * s[m]['std']:.1f}")
            d = s.get(m + "_minus_reference")
            row.append(f"{100 * d['mean']:+.1f} ({d['wins']}/{d['n']})" if d else "—")
        row += [f"{100 * s['zoo_tuning_val']['mean']:.1f}", f"{100 * s['zoo_tuning_lite_val']['mean']:.1f}"]
        md.append("| " + " | ".join(row) + " |")
    if refs:
        md += ["", "Same seeds, same recipe, same zoo (from `demo_zoo_v1_cells.json`): " + ", ".join(
            f"{m} {100 * st['mean']:.1f} ± {100 * st['std']:.1f}" for m, st in refs.items()) + "."]
    md_path = RESULTS / "gate_defaults.md"
    _atomic_write(md_path, keep_notes(md_path, "\n".join(md) + "\n"))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
