"""``zootune export RUN_DIR -o model.safetensors``: a deployable model file + a model card.

Lite Zoo-Tuning exports exactly: the temporal-ensemble gates merge the zoo into one ordinary
model of the source architecture (Eq. 5) with the cost of one source model. A per-sample
Zoo-Tuning run has no single set of weights; it is exported as a ZooModel file (loadable with
``zootune.load(path, template=...)``) unless ``--average-gates`` asks for the approximation
that merges with the mean observed gates.
"""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  zootune export runs/digits_tiny -o digits.safetensors     # + digits.md (model card)
  zootune export runs/zt --average-gates -o approx.safetensors
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained run as one model file (lite -> plain model) with a model card",
        description="Write a run's trained model for deployment, plus a Markdown model card.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="run folder (or checkpoint inside it)")
    p.add_argument("-o", "--output", default=None,
                   help="output .safetensors file (default: RUN_DIR/export/model.safetensors)")
    p.add_argument("--weights", default="final", choices=("final", "best", "latest"),
                   help="which weights of the run: final (default), best on val, latest checkpoint")
    p.add_argument("--average-gates", action="store_true",
                   help="per-sample Zoo-Tuning: merge with the mean observed gates (approximate)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zootune.export import export_run

    out, kind, diff = export_run(args.path, args.output, weights=args.weights,
                                 average_gates=args.average_gates)
    print(f"exported {kind} -> {out} (model card {out.with_suffix('.md')})"
          + (f"; max |output difference| vs the trained model: {diff:.2e}" if diff is not None else ""))
    return 0
