"""The floor of per-sample convolutions built on BLAS products, per ResNet-50 layer (issue 15, item 2).

Per-sample Zoo-Tuning applies a different weight ``W_b`` to every sample. Its kernels
(``zootune/layers/kernels.py``) do this with batched matrix products (``unfold``/``bmm``),
oneDNN grouped convolutions or per-sample loops, after forming the ``W_b``. Where a per-sample
layer stays slower than the plain convolution, the question is whether the remaining cost is
the library's (forming and moving the ``B x |W|`` per-sample weights) or the product's own
shape: one matrix product per sample with ``N = L`` columns (``L`` output positions, 49 in
ResNet-50's last stage) instead of one product over all ``B * L`` columns.

For every distinct aggregated convolution of a Zoo-Tuned ResNet-50 at the paper shape this script
times, interleaved (every variant once per round, median of the rounds):

* ``plain``: the ordinary convolution (``F.conv2d``, oneDNN), forward, or forward + backward;
* ``library``: ``zootune.layers.kernels.per_sample`` with the kernel ``auto`` picks for the shape
  (forming ``W_b``, the product, and in training the input, gate and source gradients);
* ``floor``: only the batched matrix products an exact per-sample kernel must run, with ONE weight
  shared by all samples instead of ``B`` formed ones: no forming of ``W_b``, no ``B x |W|``
  numbers written or read, the per-sample weight gradient written into one small reused buffer
  and never contracted. Each product is timed in both orders (``(C_out, K)(K, L)`` and
  ``(L, K)(K, C_out)``) and the faster counts, plus ``unfold`` (and ``fold``) where the
  convolution needs them. Forming ``W_b`` needs at least ``B * m * |W|`` multiply-adds more, so
  this is a lower bound for any exact per-sample kernel made of BLAS products: if the sum of the
  floors over the network is above a target, no such kernel can meet it on this CPU.

Rows are kept in ``results/per_sample_floor.json`` as they finish (a re-run skips finished shapes
unless ``--force``).

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/per_sample_floor.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from zootune.layers import kernels

sys.path.insert(0, str(Path(__file__).parent))
from common import (aggregated_conv_inputs, atomic_write, keep_notes, provenance, reusable_rows,  # noqa: E402
                    run_setup)

RESULTS = Path(__file__).parent / "results"
JSON = RESULTS / "per_sample_floor.json"
#: the weight-gradient product of the floor is taken this many K-columns at a time into a
#: reused buffer, so its B x |W| output never leaves the cache
GRAD_COLUMNS = 256


def conv_shapes(m: int, size: int) -> list[dict]:
    """The distinct aggregated convolutions of a Zoo-Tuned ResNet-50 (m random-weight sources)
    at ``size`` x ``size`` input, with how often each occurs."""
    import torchvision

    import zootune

    zm = zootune.zoo_tune([torchvision.models.resnet50() for _ in range(m)])
    rows: dict[tuple, dict] = {}
    for i, (name, (layer, shape)) in enumerate(aggregated_conv_inputs(zm, size).items()):
        if not hasattr(layer, "kernel_size"):
            continue
        key = (tuple(shape[1:]), layer.out_channels, layer.kernel_size, layer.stride,
               tuple(layer.spec.padding), layer.groups)
        if key in rows:
            rows[key]["count"] += 1
            continue
        rows[key] = {"layer": name, "count": 1, "input": list(shape[1:]),
                     "out_channels": layer.out_channels, "kernel_size": list(layer.kernel_size),
                     "stride": list(layer.stride), "padding": list(layer.spec.padding),
                     "groups": layer.groups, "first": i == 0}
    return list(rows.values())


def row_key(row: dict) -> str:
    return "/".join(str(row[k]) for k in ("input", "out_channels", "kernel_size", "stride", "padding"))


def _columns(x: torch.Tensor, spec: kernels.ConvSpec, ks: tuple[int, int]) -> torch.Tensor:
    """The (B, K, L) columns a per-sample product reads: a view for a 1x1 stride-1 conv, the
    strided subsample for a strided 1x1, ``unfold`` otherwise."""
    if ks == (1, 1) and spec.padding == (0, 0):
        xs = x[:, :, :: spec.stride[0], :: spec.stride[1]]
        return xs.reshape(x.shape[0], x.shape[1], -1)
    return F.unfold(x, ks, dilation=spec.dilation, padding=spec.padding, stride=spec.stride)


def floor_steps(x: torch.Tensor, w: torch.Tensor, spec: kernels.ConvSpec, need_x: bool,
                gy: torch.Tensor | None = None) -> dict[str, Callable[[], object]]:
    """The products of the floor (module docstring), each a separate step to time, for input
    ``x``, one weight ``w`` (C_out, C_in, kH, kW) and output gradient ``gy`` (B, C_out, L)
    (random when None). ``grad_w/*`` leave the last K-chunk's per-sample weight gradients in
    their buffer and return it."""
    b, cout = x.shape[0], w.shape[0]
    ks = tuple(w.shape[-2:])
    w2 = w.reshape(cout, -1)
    k = w2.shape[1]
    cols = _columns(x, spec, ks).contiguous()
    l = cols.shape[2]
    gy = torch.randn(b, cout, l) if gy is None else gy
    shared_n, shared_t = w2.expand(b, cout, k), w2.t().expand(b, k, cout)
    chunk = min(GRAD_COLUMNS, k)
    gbuf = torch.empty(b, cout, chunk)
    gbuf_t = torch.empty(b, chunk, cout)
    steps: dict[str, Callable[[], object]] = {
        "columns": lambda: _columns(x, spec, ks).contiguous(),
        "forward/N": lambda: torch.bmm(shared_n, cols),  # (C_out, K)(K, L) per sample
        "forward/T": lambda: torch.bmm(cols.transpose(1, 2), shared_t),  # (L, K)(K, C_out)
    }

    def grad_w_n():  # (C_out, L)(L, kc) per sample and K-chunk, into one reused buffer
        for c in range(0, k, chunk):
            e = min(c + chunk, k)
            torch.bmm(gy, cols[:, c:e].transpose(1, 2), out=gbuf[:, :, : e - c])
        return gbuf[:, :, : e - c]

    def grad_w_t():  # (kc, L)(L, C_out)
        for c in range(0, k, chunk):
            e = min(c + chunk, k)
            torch.bmm(cols[:, c:e], gy.transpose(1, 2), out=gbuf_t[:, : e - c])
        return gbuf_t[:, : e - c]

    steps["grad_w/N"], steps["grad_w/T"] = grad_w_n, grad_w_t
    if need_x:
        steps["grad_x/N"] = lambda: torch.bmm(shared_t, gy)  # (K, C_out)(C_out, L)
        steps["grad_x/T"] = lambda: torch.bmm(gy.transpose(1, 2), shared_n)  # (L, C_out)(C_out, K)
        if not (ks == (1, 1) and spec.padding == (0, 0)):
            h, wd = x.shape[-2:]
            gcols = torch.randn_like(cols)
            steps["fold"] = lambda: F.fold(gcols, (h, wd), ks, dilation=spec.dilation,
                                           padding=spec.padding, stride=spec.stride)
    return steps


def measure(row: dict, batch: int, m: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    cin, cout = row["input"][0], row["out_channels"]
    ks = tuple(row["kernel_size"])
    spec = kernels.ConvSpec(tuple(row["stride"]), tuple(row["padding"]), (1, 1), row["groups"])
    need_x = not row["first"]  # the image needs no gradient
    x = torch.randn(batch, *row["input"], generator=g)
    w = torch.randn(m, cout, cin // row["groups"], *ks, generator=g) * 0.02
    a = torch.softmax(torch.randn(batch, m, generator=g), 1)
    xg, wg, ag = (t.clone().requires_grad_(r) for t, r in ((x, need_x), (w, True), (a, True)))
    wp = w[0].clone().requires_grad_(True)
    xp = x.clone().requires_grad_(need_x)
    conv = lambda inp, wt: F.conv2d(inp, wt, None, spec.stride, spec.padding, spec.dilation, spec.groups)
    y0 = conv(x, w[0])
    gy = torch.randn_like(y0)
    wshape = (batch, cout, cin // row["groups"], *ks)
    with torch.no_grad():
        k_inf = kernels.conv_kernel("auto", spec, x, wshape, num_sources=m)
    with torch.enable_grad():
        k_train = kernels.conv_kernel("auto", spec, xg, wshape, num_sources=m)

    def plain_train():
        conv(xp, wp).backward(gy)
        xp.grad = wp.grad = None

    def library_train():
        kernels.per_sample(xg, ag, wg, k_train).backward(gy)
        xg.grad = wg.grad = ag.grad = None

    def library_infer():
        with torch.no_grad():
            kernels.per_sample(x, a, w, k_inf)

    steps: dict[str, Callable[[], object]] = {
        "plain/infer": lambda: conv(x, w[0]), "plain/train": plain_train,
        "library/infer": library_infer, "library/train": library_train,
    }
    if row["groups"] == 1:
        steps.update({f"floor:{n}": f for n, f in floor_steps(x, w[0], spec, need_x).items()})
    times: dict[str, list[float]] = {n: [] for n in steps}
    for r in range(rounds + 1):  # the first round warms up
        for name, step in steps.items():
            with torch.enable_grad() if name.endswith("/train") else torch.no_grad():
                t0 = time.perf_counter()
                step()
                dt = time.perf_counter() - t0
            if r:
                times[name].append(dt)
    ms = {n: statistics.median(v) * 1e3 for n, v in times.items()}
    out = dict(row, kernels={"infer": k_inf.name, "train": k_train.name}, ms=ms)
    if row["groups"] == 1:
        best = lambda op: min(ms[f"floor:{op}/N"], ms[f"floor:{op}/T"])
        fwd = ms["floor:columns"] + best("forward")
        train = fwd + best("grad_w") + (best("grad_x") + ms.get("floor:fold", 0.0) if need_x else 0.0)
        out["floor_ms"] = {"infer": fwd, "train": train}
    return out


def totals(rows: list[dict]) -> dict:
    """Sums over the network (each shape times its count) for every phase: ``plain``,
    ``library``, and ``bound``, every layer at the better of the library's time and its BLAS
    floor (a layer whose kernel is not made of BLAS products, e.g. oneDNN's grouped convolution,
    or one without a floor, counts at the library's time): what the network would cost if every
    BLAS-product layer ran at its floor while the others stayed as they are."""
    out = {}
    for phase in ("infer", "train"):
        plain = sum(r["count"] * r["ms"][f"plain/{phase}"] for r in rows)
        lib = sum(r["count"] * r["ms"][f"library/{phase}"] for r in rows)
        bound = sum(r["count"] * min(r["ms"][f"library/{phase}"],
                                     r.get("floor_ms", {}).get(phase, float("inf"))) for r in rows)
        out[phase] = {"plain_ms": plain, "library_ms": lib, "bound_ms": bound,
                      "library_ratio": lib / plain, "bound_ratio": bound / plain}
    return out


def write(data: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    atomic_write(JSON, json.dumps(data, indent=1))
    env, setup, rows = data["environment"], data["setup"], data["rows"]
    cell = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
    lines = [
        "# Per-sample convolutions: library vs the floor of BLAS products (ResNet-50, paper shape)",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {env['cpu']}, {env['cpus']} CPUs; torch {env['torch']}, {env['threads']} threads; "
        f"written {env['written']}; B = {setup['batch']}, m = {setup['m']}, {setup['size']}x{setup['size']} "
        f"input; median of {setup['rounds']} interleaved rounds, ms. `floor`: the per-sample products "
        "with one shared weight, better order of each (module docstring of "
        "`benchmarks/per_sample_floor.py`).",
        "",
        "| layer (first of its shape) | count | input | C_out | k | stride | kernel (infer/train) | "
        "plain infer | library infer | floor infer | plain train | library train | floor train |",
        "|---|---:|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms, fl = r["ms"], r.get("floor_ms", {})
        lines.append(
            f"| {r['layer']} | {r['count']} | {'x'.join(map(str, r['input']))} | {r['out_channels']} | "
            f"{r['kernel_size'][0]}x{r['kernel_size'][1]} | {r['stride'][0]} | "
            f"{r['kernels']['infer']}/{r['kernels']['train']} | {ms['plain/infer']:.1f} | "
            f"{ms['library/infer']:.1f} | {cell(fl.get('infer'))} | {ms['plain/train']:.1f} | "
            f"{ms['library/train']:.1f} | {cell(fl.get('train'))} |")
    lines += ["", "Summed over the network (each shape times its count):", "",
              "| phase | plain ms | library ms | bound ms | library / plain | bound / plain |",
              "|---|---:|---:|---:|---:|---:|"]
    for phase, t in data["totals"].items():
        lines.append(f"| {phase} | {t['plain_ms']:.0f} | {t['library_ms']:.0f} | {t['bound_ms']:.0f} | "
                     f"{t['library_ratio']:.2f}x | {t['bound_ratio']:.2f}x |")
    lines += ["", "`bound`: every layer at the better of the library's time and its floor "
              "(`totals` in the script).", ""]
    path = RESULTS / "per_sample_floor.md"
    atomic_write(path, keep_notes(path, "\n".join(lines)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--m", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--force", action="store_true", help="re-measure finished shapes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    setup = run_setup(batch=args.batch, size=args.size, m=args.m, rounds=args.rounds)
    old, done = reusable_rows(JSON, setup, row_key, args.force)
    data = {**provenance(args.threads, old if done else None), "setup": setup, "rows": []}
    for row in conv_shapes(args.m, args.size):
        rec = done.get(row_key(row))
        if rec is None:
            rec = measure(row, args.batch, args.m, args.rounds)
            data.update(provenance(args.threads))  # this run measured: it is the one to repeat
            print(json.dumps({k: rec[k] for k in ("layer", "kernels", "floor_ms") if k in rec}
                             | {"ms": {k: round(v, 1) for k, v in rec["ms"].items()}}), flush=True)
        data["rows"].append(rec)
        data["totals"] = totals(data["rows"])
        write(data)  # after every shape: an interrupted run keeps what it measured


if __name__ == "__main__":
    main()
