"""``zootune export RUN_DIR -o model.safetensors``: a deployable model file + a model card.

Lite Zoo-Tuning exports exactly: the temporal-ensemble gates merge the zoo into one ordinary
model of the source architecture (Eq. 5) with the cost of one source model. A per-sample
Zoo-Tuning run has no single set of weights; it is exported as a ZooModel file (loadable with
``zootune.load(path, template=...)``) unless ``--average-gates`` asks for the approximation
that merges with the mean observed gates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    import torch

    import zootune
    from zootune.train.restore import load_run

    run_, wfile = load_run(args.path, weights=args.weights)
    run_dir = wfile.parent if wfile.parent.name != "checkpoints" else wfile.parent.parent
    while not (run_dir / "config.yaml").is_file() and run_dir != run_dir.parent:
        run_dir = run_dir.parent
    out = Path(args.output) if args.output else run_dir / "export" / "model.safetensors"
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    model = run_.model
    kind: str
    if hasattr(model, "export"):
        if model.lite or args.average_gates:
            plain = model.export(average_gates=args.average_gates and not model.lite)
            kind = "plain (lite Zoo-Tuning, merged exactly)" if model.lite else \
                "plain (per-sample Zoo-Tuning merged with mean gates: an approximation)"
        else:
            plain = None
            kind = "ZooModel (per-sample Zoo-Tuning: every source is kept)"
    else:
        plain, kind = model, "plain (single-source fine-tuning)"
    target = plain if plain is not None else model
    meta = {"method": run_.cfg.method, "classes": run_.data.classes, "builder": run_.cfg.zoo.builder,
            "builder_kwargs": run_.cfg.zoo.builder_kwargs, "zoo": run_.zoo.names}
    zootune.save(target, out, metadata=meta)

    # check: the exported file computes what the trained model computes
    diff = None
    ds = run_.data.val or run_.data.test
    if ds is not None and len(ds):
        x = torch.stack([torch.as_tensor(ds[i][0]) for i in range(min(32, len(ds)))])
        with torch.no_grad():
            diff = float((target.eval()(x) - model.eval()(x)).abs().max())
    result = {}
    rfile = run_dir / "result.json"
    if rfile.is_file():
        result = json.loads(rfile.read_text())
    card = _model_card(run_, out, kind, diff, result, wfile)
    card_path = out.with_suffix(".md")
    from zootune.atomic import atomic_write_text

    atomic_write_text(card_path, card)
    print(f"exported {kind} -> {out} (model card {card_path})"
          + (f"; max |output difference| vs the trained model: {diff:.2e}" if diff is not None else ""))
    return 0


def _model_card(run_, out: Path, kind: str, diff: float | None, result: dict, wfile: Path) -> str:
    from zootune.report import count_params

    cfg = run_.cfg
    m = result.get("metrics", {})
    lines = [f"# Model card: {out.name}\n",
             f"- **Kind**: {kind}",
             f"- **Method**: `{cfg.method}` trained with zootune (Zoo-Tuning, ICML 2021)",
             f"- **Zoo**: {', '.join(run_.zoo.names)}",
             f"- **Architecture**: `{cfg.zoo.builder or cfg.zoo.spec}` {cfg.zoo.builder_kwargs or ''}",
             f"- **Task**: {cfg.task.name}, {run_.data.num_classes} classes: "
             f"{', '.join(run_.data.classes[:20])}{' ...' if run_.data.num_classes > 20 else ''}",
             f"- **Data**: {cfg.data.name}" + (f" ({cfg.data.root})" if cfg.data.root else ""),
             f"- **Source weights**: {wfile}",
             f"- **Parameters**: {count_params(run_.model):,} (trained model)"]
    for split, v in m.items():
        lines.append(f"- **{split}**: " + ", ".join(f"{k} {x:.4f}" for k, x in v.items()))
    if diff is not None:
        lines.append(f"- **Export check**: max |output difference| vs the trained model on 32 "
                     f"validation inputs = {diff:.2e}")
    pre = run_.data.info.get("preprocessing")
    if pre:
        lines.append(f"- **Input**: {pre}")
    lines.append("\n## Loading\n")
    if kind.startswith("plain"):
        lines.append("```python\nfrom safetensors.torch import load_file\n"
                     "model = <build the architecture above with the number of classes>\n"
                     f"model.load_state_dict(load_file({out.name!r}))\nmodel.eval()\n```")
    else:
        lines.append("```python\nimport zootune\n"
                     f"zm = zootune.load({out.name!r}, template=<a module of the architecture>)\n```")
    return "\n".join(lines) + "\n"
