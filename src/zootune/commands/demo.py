"""``zootune demo``: the main job on the embedded default, offline, in a few minutes on a CPU.

Loads the shipped mini zoo (five glyph-pretrained CNNs: a broad base model and four specialists
fine-tuned from it), then on real handwritten digits mixed with held-apart Greek letters (few
labels per class) trains, with one recipe, budget and seed: each source fine-tuned alone, average
aggregation, Zoo-Tuning and lite Zoo-Tuning; exports the lite model to one plain CNN and prints a
comparison table. ``--out DIR`` also writes ``results.json``, ``report.md``, gate heatmaps and the
exported model.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the embedded end-to-end demo (mini zoo -> Zoo-Tuning -> report/export)",
        description=__doc__.split("\n\n", 1)[1].strip() if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=None, metavar="DIR",
                   help="directory for results.json, report.md, gates.png and exported_lite.safetensors")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, heads and training (default 0)")
    p.add_argument("--steps", type=int, default=None, help="training steps per method (default: the recipe's)")
    p.add_argument("--labels-per-class", type=int, default=None,
                   help="training labels per class of the target (default: the recipe's)")
    p.add_argument("--no-greek", action="store_true",
                   help="digits only (no held-apart Greek letters in the target)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny budget (smoke test: checks the pipeline, not the methods)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from zootune.errors import ZootuneError

    import importlib.util

    missing = [m for m, pkg in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"))
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ZootuneError(f"the demo needs {', '.join(missing)} (the digits and the fonts ship with "
                           "them): pip install 'zootune[all]'")
    from zootune.demo.run import RECIPE, format_table, run_demo, write_outputs

    recipe = dict(RECIPE)
    if args.quick:
        recipe.update(steps=10, warmup_steps=2)
    if args.steps is not None:
        if args.steps < 1:
            raise ZootuneError("--steps must be >= 1")
        recipe["steps"] = args.steps
    if args.labels_per_class is not None:
        if args.labels_per_class < 1:
            raise ZootuneError("--labels-per-class must be >= 1")
        recipe["labels_per_class"] = args.labels_per_class
    if args.no_greek:
        recipe["greek"] = False
    t0 = time.time()
    print(f"zootune demo: mini zoo -> {'digits + held-apart Greek' if recipe['greek'] else 'digits'}"
          f", {recipe['labels_per_class']} labels/class, {recipe['steps']} steps/method, seed {args.seed}",
          flush=True)
    results = run_demo(args.seed, recipe, keep_models=args.out is not None,
                       log=lambda s: print(s, flush=True))
    print()
    print(format_table(results))
    ms = results["methods"]
    if "finetune_best" in ms and "zoo_tuning" in ms:
        d = ms["zoo_tuning"]["accuracy"] - ms["finetune_best"]["accuracy"]
        print(f"\nZoo-Tuning vs the best single source ({ms['finetune_best']['source']}, chosen on "
              f"validation): {100 * d:+.1f} points on test (one seed; see benchmarks/results/demo.md "
              "for the spread over seeds).")
    if args.out:
        paths = write_outputs(results, args.out)
        print(f"wrote {', '.join(p.name for p in paths.values())} to {args.out}")
    print(f"done in {time.time() - t0:.0f}s")
    return 0
