"""``zootune demo``: the main job on the embedded default (placeholder until the demo lands)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the embedded end-to-end demo (mini zoo -> Zoo-Tuning -> report/export)",
        description="Run the embedded demo: no downloads, a few minutes on a laptop CPU.",
    )
    p.add_argument("--out", default=None, help="directory for results.json, report.md, plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(
        "zootune demo will: load the embedded mini zoo of glyph-pretrained CNNs, fine-tune each\n"
        "source on scikit-learn's handwritten digits, train average aggregation, Zoo-Tuning and\n"
        "lite Zoo-Tuning on the same budget, export the lite model, and print a comparison.\n"
        "error: the demo is not implemented yet (tracked in the trainer/demo issue).",
        file=sys.stderr,
    )
    return 1
