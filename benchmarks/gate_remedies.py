"""Gate remedies on the paper-like zoo (issue 10, item 5): ``python benchmarks/gate_remedies.py``.

Runs ``benchmarks/configs/gate_remedies.yaml`` with ``zootune compare`` (resumable; finished cells
are skipped) into ``benchmarks/cache/paper_tables/mixture`` — the folder of the paper tables'
``mixture`` target, whose base config and labels it shares, so per-sample Zoo-Tuning, lite,
average aggregation and the fine-tuned sources are trained once for both — and writes
``results/gate_remedies.{md,json}``: test accuracy, seed-paired differences against the best single
source chosen on validation, the grid variant chosen on validation, measured costs, and the
routing statistics of every per-sample run. ``--tables`` only rewrites the results.

``--config``, ``--cache`` and ``--name`` run another compare config the same way (e.g. the
budget check ``benchmarks/configs/budget.yaml`` into ``results/budget.{md,json}``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import atomic_write, environment, keep_notes  # noqa: E402

CONFIG = HERE / "configs" / "gate_remedies.yaml"
CACHE = HERE / "cache" / "paper_tables" / "mixture"
RESULTS = HERE / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", action="store_true", help="only rewrite the results")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--cache", type=Path, default=CACHE, help="the comparison's run folder")
    ap.add_argument("--name", default="gate_remedies", help="results/<name>.{md,json}")
    ap.add_argument("--only", nargs="+", default=None, help="entry labels to run now")
    ap.add_argument("--recount-costs", action="store_true",
                    help="measure the finished cells' costs again (zootune compare --recount-costs)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from zootune.compare import load_compare, run_compare
    from zootune.compare.spec import plan_cells
    from zootune.compare.table import format_markdown, summarize

    t0 = time.time()
    spec = load_compare(a.config)
    interrupted = False
    if a.recount_costs:
        from zootune.compare.runner import recount_costs

        print(f"costs of {recount_costs(spec, a.cache)} cells measured again")
    elif not a.tables:
        interrupted = bool(run_compare(spec, a.cache, only=a.only)["interrupted"])
    cells_file = a.cache / "cells.json"
    cells = json.loads(cells_file.read_text()) if cells_file.is_file() else {}
    plan = plan_cells(spec)
    summary = summarize(spec, plan, cells)
    todo = [c.id for c in plan if c.id not in cells]
    env = environment()
    command = "python benchmarks/gate_remedies.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = format_markdown(spec, summary) + "\n".join([
        "", "## Status", "",
        f"`{command}` (config `{a.config}`); "
        + (f"{len(todo)} cells still to run: {', '.join(todo)}." if todo else
           f"all {len(plan)} cells finished."),
        f"Wall time of this invocation {time.time() - t0:.0f} s. Environment: {json.dumps(env)}", ""])
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / f"{a.name}.json", json.dumps(
        {"command": command, "environment": env, "summary": summary, "cells_to_run": todo,
         "cells": {c.id: cells[c.id] for c in plan if c.id in cells}}, indent=2, default=str))
    path = RESULTS / f"{a.name}.md"
    atomic_write(path, keep_notes(path, md))
    print(f"results: {path}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
