"""``zootune eval RUN_DIR|CHECKPOINT``: evaluate a trained run on its test split or other data."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  zootune eval runs/digits_tiny                       # test split of the run's own data
  zootune eval runs/digits_tiny --split val --weights best
  zootune eval runs/x/checkpoints/step_00001000 --data /data/new_images   # an image folder
  zootune eval runs/x --data digits data.labels_per_class=null
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a trained run (or one of its checkpoints) on a data split",
        description="Rebuild a run's model from its folder and report loss/accuracy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="run folder, checkpoint folder, or weights file inside a run")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for the evaluation data (e.g. data.seed=1)")
    p.add_argument("--data", default=None,
                   help="'digits' or an image folder (default: the run's own data)")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="which split to evaluate (default: test)")
    p.add_argument("--weights", default="final", choices=("final", "best", "latest"),
                   help="which weights of a run folder (default: final)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)
    from zootune.commands._overrides import make_intermixed

    make_intermixed(p)


def run(args: argparse.Namespace) -> int:
    from zootune.data import DataError
    from zootune.train import evaluate
    from zootune.train.restore import load_run

    overrides = list(args.overrides)
    if args.data is not None:
        if args.data == "digits":
            overrides.append("data.name=digits")
        else:
            overrides += ["data.name=image_folder", f"data.root={args.data}"]
    run_, wfile = load_run(args.path, weights=args.weights, data_overrides=overrides, with_data=True)
    data = run_.data
    if args.split == "all":
        if args.data is None:
            raise DataError("--split all needs --data (a whole folder used as one evaluation set)")
        import torch.utils.data as tud

        parts = [d for d in (data.train, data.val, data.test) if d is not None]
        ds = tud.ConcatDataset(parts)
    else:
        ds = getattr(data, args.split)
    if ds is None or len(ds) == 0:
        raise DataError(f"the {args.split} split is empty")
    m = evaluate(run_.model, run_.task, ds, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"weights": str(wfile), "split": args.split, "n": len(ds), **m}))
    else:
        print(f"{wfile}: {args.split} ({len(ds)} samples): {run_.task.summary_line(m)}")
    return 0
