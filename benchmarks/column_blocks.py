"""Column blocks for the products over all per-sample weights (issue 15, item 2).

Per-sample Zoo-Tuning makes three products over ``B x n`` numbers per aggregated layer and
step (n = the numbers of one weight; ``zootune/layers/kernels.py``):

* ``aggregate``: ``W = A W~``, (B, m)(m, n) -> (B, n), once in forward and once again when
  backward recomputes it;
* ``contract``: from the per-sample weight gradients ``G`` (B, n), ``A^T G`` (m, n) and
  ``W~ G^T`` (m, B), the source and gate gradients.

On this machine's MKL one product over millions of columns ran far below the memory's speed;
the same product taken ``COLUMN_BLOCK`` columns at a time ran near it. ``kernels.py`` blocks
from fixed sizes on (``AGGREGATE_BLOCKED_FROM``, ``CONTRACT_BLOCKED_FROM``), a rule chosen
from this script's sweep. It times, for weight sizes of ResNet-50's aggregated convolutions,
each block width (and no blocks) through the library's own functions, interleaved: every
variant once per round, median of the rounds; ``copy`` (read and write ``B x n`` numbers) is
the reference for what the memory allows. Re-run it on another CPU before trusting the rule
there; the result says which width the rule picks for each size and which was fastest.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/column_blocks.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from zootune.layers import kernels

sys.path.insert(0, str(Path(__file__).parent))
from common import atomic_write, keep_notes, provenance  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# n of ResNet-50's aggregated convolutions: 64x64x3x3, 256x64, 512x128 (sized like 128x128x3x3),
# 256x256x3x3, 2048x512, 2048x1024, 512x512x3x3
SIZES = [36864, 65536, 147456, 262144, 589824, 1048576, 2097152, 2359296]
WIDTHS = [0, 4096, 16384, 65536]  # 0: one product over all columns


def _variant(width: int):
    """(COLUMN_BLOCK, AGGREGATE_BLOCKED_FROM, CONTRACT_BLOCKED_FROM) that force ``width``."""
    if width == 0:
        return kernels.COLUMN_BLOCK, 1 << 62, 1 << 62
    return width, 1, 1


def _set(values) -> None:
    kernels.COLUMN_BLOCK, kernels.AGGREGATE_BLOCKED_FROM, kernels.CONTRACT_BLOCKED_FROM = values


def rule_width(n: int, op: str) -> int:
    """The block width the library's rule uses for ``n`` columns (0: none)."""
    start = kernels.AGGREGATE_BLOCKED_FROM if op == "aggregate" else kernels.CONTRACT_BLOCKED_FROM
    return kernels.COLUMN_BLOCK if n >= start else 0


def measure(n: int, batch: int, m: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(batch, m, generator=g), 1)
    w = torch.randn(m, n, generator=g)
    grad = torch.randn(batch, n, generator=g)
    src, dst = torch.randn(batch, n, generator=g), torch.empty(batch, n)
    library = (kernels.COLUMN_BLOCK, kernels.AGGREGATE_BLOCKED_FROM, kernels.CONTRACT_BLOCKED_FROM)
    steps = {("copy", 0): lambda: dst.copy_(src)}
    for width in WIDTHS:
        steps[("aggregate", width)] = lambda: kernels.aggregate(a, w, "column_blocks_bench")
        steps[("contract", width)] = lambda: kernels.contract_weight_grads(grad, a, w, True, True)
    times: dict = {k: [] for k in steps}
    try:
        for r in range(rounds + 1):  # the first round warms up
            for (op, width), step in steps.items():
                _set(_variant(width))
                t0 = time.perf_counter()
                step()
                if r:
                    times[(op, width)].append(time.perf_counter() - t0)
    finally:
        _set(library)
    med = {f"{op}/{width}": statistics.median(v) * 1e3 for (op, width), v in times.items()}
    out = {"n": n, "ms": med}
    for op in ("aggregate", "contract"):
        best = min(WIDTHS, key=lambda wd: med[f"{op}/{wd}"])
        out[f"{op}_fastest"] = best
        out[f"{op}_rule"] = rule_width(n, op)
    return out


def write(data: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    atomic_write(RESULTS / "column_blocks.json", json.dumps(data, indent=1))
    env = data["environment"]
    head = " | ".join(f"{'one product' if wd == 0 else wd}" for wd in WIDTHS)
    lines = [
        "# Column blocks for the per-sample weight products",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {env['cpu']}, {env['cpus']} CPUs; torch {env['torch']}, {env['threads']} threads; "
        f"written {env['written']}; "
        f"B = {data['batch']}, m = {data['m']}, {data['rounds']} rounds (median, ms; every variant "
        "once per round).  ",
        f"Library rule: blocks of {data['rule']['COLUMN_BLOCK']} columns, aggregate from "
        f"{data['rule']['AGGREGATE_BLOCKED_FROM']}, contractions from "
        f"{data['rule']['CONTRACT_BLOCKED_FROM']} columns.",
        "",
    ]
    for op, what in (("aggregate", "aggregate: (B, m)(m, n)"),
                     ("contract", "contract: (m, n)(n, B) and (m, B)(B, n), one pass per block")):
        lines += [f"## {what}", "", f"| n | copy B x n | {head} | rule | fastest |",
                  "|---:|---:|" + "---:|" * len(WIDTHS) + "---:|---:|"]
        for row in data["rows"]:
            ms = row["ms"]
            cells = " | ".join(f"{ms[f'{op}/{wd}']:.2f}" for wd in WIDTHS)
            rule, fast = row[f"{op}_rule"], row[f"{op}_fastest"]
            lines.append(f"| {row['n']} | {ms['copy/0']:.2f} | {cells} | {rule or 'one product'} | "
                         f"{fast or 'one product'} |")
        lines.append("")
    path = RESULTS / "column_blocks.md"
    atomic_write(path, keep_notes(path, "\n".join(lines)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--m", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in map(int, args.sizes.split(",")):
        rows.append(measure(n, args.batch, args.m, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    write({
        **provenance(args.threads),
        "batch": args.batch, "m": args.m, "rounds": args.rounds,
        "rule": {"COLUMN_BLOCK": kernels.COLUMN_BLOCK,
                 "AGGREGATE_BLOCKED_FROM": kernels.AGGREGATE_BLOCKED_FROM,
                 "CONTRACT_BLOCKED_FROM": kernels.CONTRACT_BLOCKED_FROM},
        "rows": rows,
    })


if __name__ == "__main__":
    main()
