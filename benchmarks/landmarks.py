"""The landmark benchmark (issue 12, item 4): the demo zoo on procedural faces, every baseline.

    python benchmarks/landmarks.py                    # seeds 0 1 2, every method (resumable)
    python benchmarks/landmarks.py --seeds 0          # one seed first
    python benchmarks/landmarks.py --only scratch zoo_tuning   # some entries now
    python benchmarks/landmarks.py --tables           # rewrite the results from finished cells

A thin wrapper around ``zootune compare`` with the shipped config
``src/zootune/configs/compare/landmarks.yaml`` (scratch, fine-tuning of each source with the
best chosen on validation, ensemble, Knowledge Flow, Zoo-Tuning and lite; 500 steps of 32 on
48x48 faces): the runner's resume (finished cells are skipped, an interrupted run continues from
its checkpoint) and its sharing (each fine-tuned source is trained once per seed and reused by
the ensemble) apply. Cells run seed by seed (every method of seed 0 first). Runs live in
``benchmarks/cache/landmarks/``; after every seed the results are written to
``results/landmarks.json`` and ``results/landmarks.md`` (test NME, failure rate, AUC mean ± std,
measured FLOPs and parameters, wall time, machine, versions, seeds, what is finished and what is
still to run) and the mean gate heat map of Zoo-Tuning to ``results/landmarks_gates.png`` (the
paper's Fig. 6). Hand-written notes below the marker of the Markdown file are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / "cache" / "landmarks"
CONFIG = "landmarks"  # the shipped compare config
sys.path.insert(0, str(HERE))

from common import atomic_write, environment, keep_notes


def plot_gates(summary: dict[str, Any], path: Path) -> list[str]:
    """One heat map panel per Zoo-Tuning row (mean gate over the finished seeds)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in summary["rows"] if r.get("gates")]
    if not rows:
        return []
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 2.4 * len(rows) + 0.4), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        g = r["gates"]
        mat = np.asarray(g["values"])
        im = ax.imshow(mat, aspect="auto", cmap="Blues", vmin=0.0, vmax=max(float(mat.max()), 1e-6))
        ax.set_yticks(range(mat.shape[0]), r.get("source_names") or [f"source {i}" for i in range(mat.shape[0])])
        ax.set_xticks(range(mat.shape[1]), g["layers"], rotation=30, ha="right", fontsize=7)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] > 0.6 * mat.max() else "black")
        ax.set_title(f"{r['label']}: mean gate over {g['seeds']} seed(s)", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [r["label"] for r in rows]


def write_results(spec: Any, cells: dict[str, Any], seeds: list[int], wall: float, command: str) -> None:
    """The results files from the finished cells (``spec``: the comparison over all ``seeds``)."""

    from zootune.compare.spec import plan_cells
    from zootune.compare.table import format_markdown, summarize

    full = spec
    plan = plan_cells(full)
    summary = summarize(full, plan, cells)
    zoo_names = list(dict.fromkeys(c.source for c in plan if c.source))  # the zoo, in order
    for r in summary["rows"]:
        if r.get("gates") and zoo_names and len(zoo_names) == len(r["gates"]["values"]):
            r["source_names"] = zoo_names
    done = [c.id for c in plan if c.id in cells]
    todo = [c.id for c in plan if c.id not in cells]
    env = environment()
    doc = {"name": "landmarks", "command": command, "seeds": seeds, "environment": env,
           "wall_time_s_this_invocation": wall,
           "wall_time_s_cells": sum(c.get("wall_time_s", 0.0) + sum(s.get("wall_time_s", 0.0)
                                    for s in (c.get("stages") or {}).values()) for c in cells.values()
                                    if c.get("entry") != "finetune"),
           "finished_cells": done, "cells_to_run": todo, "summary": summary,
           "cells": {k: v for k, v in cells.items() if k in set(done)},
           "compare": spec.options.model_dump(mode="json"), "base_config": spec.base}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / "landmarks.json", json.dumps(doc, indent=2, default=str))
    panels = plot_gates(summary, RESULTS / "landmarks_gates.png")
    md = format_markdown(full, summary)
    status = ["", "## Status", "",
              f"{len(done)} of {len(plan)} cells finished (seeds {seeds}); "
              + ("all done." if not todo else f"still to run: {', '.join(todo)}."),
              "", "Seeds finished per row (a row's ± is over these; one seed shows ± 0.00): "
              + "; ".join(f"{r['label']} {r['seeds']}" for r in summary["rows"]) + ".",
              "", ("Continue (resumable, finished cells are skipped): "
                   f"`nice -n 10 python benchmarks/landmarks.py --seeds {' '.join(map(str, seeds))}`"), "",
              f"Environment: {json.dumps(env)}", ""]
    if panels:
        status += ["## Gates (paper Fig. 6)", "", "![gate heat map](landmarks_gates.png)", "",
                   ("Mean gate per source (rows) and aggregated layer (columns, input -> output), "
                    f"averaged over the finished seeds: {', '.join(panels)}. Lite: the temporal "
                    "ensemble of the gates; per-sample: the running mean of the per-sample gates."), ""]
    atomic_write(RESULTS / "landmarks.md", keep_notes(RESULTS / "landmarks.md", md + "\n".join(status)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", default=None, help="entry labels to run now")
    ap.add_argument("--out", type=Path, default=CACHE)
    ap.add_argument("--tables", action="store_true", help="only rewrite the results")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (change the benchmark!)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from zootune.compare import load_compare, run_compare

    command = "python benchmarks/landmarks.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    seeds_key = f"compare.seeds=[{','.join(map(str, a.seeds))}]"
    spec = load_compare(CONFIG, overrides=list(a.overrides) + [seeds_key])
    interrupted = False
    if not a.tables:
        from zootune.compare.spec import plan_cells

        for s in a.seeds:
            one = load_compare(CONFIG, overrides=list(a.overrides) + [f"compare.seeds=[{s}]"])
            entries = list(dict.fromkeys(c.entry for c in plan_cells(one)))
            for entry in entries:  # one entry at a time: the results are rewritten after each
                if a.only and entry not in a.only:
                    continue
                res = run_compare(one, a.out, only=[entry])
                cells_file = a.out / "cells.json"
                cells = json.loads(cells_file.read_text()) if cells_file.is_file() else {}
                write_results(spec, cells, a.seeds, time.time() - t0, command)
                if res["interrupted"]:
                    interrupted = True
                    break
            if interrupted:
                break
    cells_file = a.out / "cells.json"
    cells = json.loads(cells_file.read_text()) if cells_file.is_file() else {}
    write_results(spec, cells, a.seeds, time.time() - t0, command)
    print(f"results: {RESULTS / 'landmarks.md'}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
