"""``zootune compare CONFIG.yaml [key=value ...]``: every chosen method x seed on one zoo and
target, fine-tuned sources shared, finished cells skipped; Markdown + JSON tables."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  zootune compare digits_tiny                  # a shipped example (seconds per cell)
  zootune compare my_compare.yaml compare.seeds=[0,1,2,3,4] train.steps=300
  zootune compare my_compare.yaml --only ensemble distill   # run some entries now

A compare config is a tune config plus a 'compare:' section:
  compare:
    seeds: [0, 1, 2]
    methods: [finetune, ensemble, distill, knowledge_flow, ced,
              {name: ced, finetuned: true, label: ced+finetuned}, fe,
              {name: fe, finetuned: true, label: fe+finetuned}, average_aggregation,
              zoo_tuning, {name: zoo_tuning, align: false, label: "zoo_tuning w/o T"},
              {name: zoo_tuning, lite: true, label: lite}]
Entries may add label, overrides {dotted.key: value} and grid {dotted.key: [values]} (the
variant with the best mean validation score is reported). Run it again to resume: finished
cells are skipped. Output: OUT/results.md, OUT/results.json, OUT/cells.json, OUT/runs/.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare methods (baselines, Zoo-Tuning) over seeds on one zoo and target",
        description="Train every method of a compare config over its seeds (reusing fine-tuned "
                    "sources, skipping finished cells) and write a Table-1-like comparison.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="compare YAML config, or the name of a shipped example")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides (compare.* keys change the compare section)")
    p.add_argument("--out", default=None, help="output folder (default: compare.out_dir or "
                                                "runs/compare_<name>)")
    p.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                   help="run only these entries now (labels as in the table)")
    p.add_argument("--plan", action="store_true", help="list the cells and exit")
    p.add_argument("--recount-costs", action="store_true",
                   help="measure the costs of the finished cells again (single-stage methods) and "
                        "rewrite the tables; trains nothing")
    p.add_argument("--examples", action="store_true",
                   help="list the compare configs shipped with zootune and exit")
    p.set_defaults(func=run)
    from zootune.commands._overrides import make_intermixed

    make_intermixed(p)


def run(args: argparse.Namespace) -> int:
    from zootune.compare import compare_examples, load_compare, plan_cells, run_compare
    from zootune.config import ConfigError

    if args.examples:
        for name, path in compare_examples().items():
            print(f"{name:24s} {path}")
        return 0
    if args.config is None:
        raise ConfigError("name a compare config (or a shipped example: zootune compare --examples)")
    spec = load_compare(args.config, overrides=args.overrides)
    if args.plan:
        for c in plan_cells(spec):
            print(c.id)
        return 0
    if args.recount_costs:
        from zootune.compare.runner import recount_costs

        n = recount_costs(spec, args.out, log=lambda s: print(s, flush=True))
        print(f"costs of {n} finished cell(s) measured again")
        return 0
    res = run_compare(spec, args.out, only=args.only, log=lambda s: print(s, flush=True))
    print(res["results_md"].read_text())
    return 130 if res["interrupted"] else 0
