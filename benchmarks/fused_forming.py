"""Can forming ``W_b`` in cache bring per-sample products to their floor? (issue 15, item 2)

``benchmarks/per_sample_floor.py`` showed that the excess of per-sample Zoo-Tuning over plain
convolutions sits in ResNet-50's last stages, and that it is not the per-sample products but the
forming of the ``B x |W|`` per-sample weights ``W_b = sum_i a_bi W~_i`` (Eq. 2) and their trip
through memory. This script measures how much of that a kernel that never writes ``W_b`` to
memory recovers: it forms ``W_b`` one row tile at a time, in cache, and multiplies the tile at
once. Forward (inference) only, on the products' own operands: sources ``V`` (m, C_out, K),
gates ``a`` (B, m) and columns ``X`` (B, K, L) (a 1x1 convolution's subsampled input, or a 3x3
convolution's ``unfold`` columns; the unfold itself is left out of every variant alike).

Variants, timed interleaved (median of the rounds), each checked against ``library`` first:

* ``one_gemm``: ``(C_out, K)(K, B*L)``, one shared weight over the whole batch: the product a
  plain convolution runs;
* ``floor``: ``(C_out, K)(B, K, L)``, one shared weight, a product per sample (what
  ``per_sample_floor.py`` calls the floor: no forming at all);
* ``library``: what ``zootune.layers.kernels`` does (``aggregate`` into the scratch buffer, then
  ``bmm``);
* ``tiled_torch``: row tiles of ``W_b`` for a block of samples formed and multiplied in turn
  with torch calls (best over a small grid of tile rows and sample blocks, listed in the table);
* ``tiled_cpp``: the same with one sample at a time in a C++ loop (``at::parallel_for`` over the
  samples, the tile formed by a vectorised loop, ``at::mm_out`` per tile), JIT-compiled with
  ``torch.utils.cpp_extension`` (needs a C++ compiler; skipped without one). A measurement
  prototype, not a library kernel: it has no backward.

Shapes: ResNet-50's layer3/layer4 aggregated convolutions at the paper shape (B = 48, m = 5),
read from ``results/per_sample_floor.json`` (run that first). Rows are kept in
``results/fused_forming.json`` as they finish; a re-run skips them unless ``--force``.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/fused_forming.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from zootune.layers import kernels

sys.path.insert(0, str(Path(__file__).parent))
from common import atomic_write, keep_notes, provenance, reusable_rows, run_setup  # noqa: E402

RESULTS = Path(__file__).parent / "results"
JSON = RESULTS / "fused_forming.json"
FLOOR_JSON = RESULTS / "per_sample_floor.json"
#: (tile rows, samples per block) tried by ``tiled_torch``; tile rows tried by ``tiled_cpp``, and
#: ``tiled_cpp/l2``: as many rows as fit :data:`L2_TILE_FLOATS` numbers (a 256 KB tile, at least 16 rows)
TORCH_GRID = [(256, 4), (512, 4), (256, 8)]
CPP_ROWS = [128, 256]
L2_TILE_FLOATS = 65536

CPP_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

// Y[b] = (sum_i a[b, i] V[i]) X[b] for V (m, C, K), a (B, m), X (B, K, L): per row tile of
// W_b, the tile is formed in a buffer that stays in cache and multiplied at once.
torch::Tensor tiled_forward(torch::Tensor V, torch::Tensor a, torch::Tensor X, int64_t tile) {
  TORCH_CHECK(V.scalar_type() == torch::kFloat && V.is_contiguous() && a.is_contiguous()
              && X.is_contiguous(), "float32, contiguous operands");
  const int64_t m = V.size(0), C = V.size(1), K = V.size(2), B = X.size(0), L = X.size(2);
  auto Y = torch::empty({B, C, L}, X.options());
  const float* v = V.data_ptr<float>();
  const float* ap = a.data_ptr<float>();
  for (int64_t r0 = 0; r0 < C; r0 += tile) {
    const int64_t rows = std::min(tile, C - r0), n = rows * K;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> w(n);
      float* __restrict__ wp = w.data();
      for (int64_t b = b0; b < b1; ++b) {
        const float* ab = ap + b * m;
        for (int64_t j0 = 0; j0 < n; j0 += 512) {  // a 2 KB block of the tile in L1 per source pass
          const int64_t j1 = std::min(n, j0 + 512);
          const float* s = v + r0 * K;
          for (int64_t j = j0; j < j1; ++j) wp[j] = ab[0] * s[j];
          for (int64_t i = 1; i < m; ++i) {
            const float* si = v + (i * C + r0) * K;
            const float c = ab[i];
            for (int64_t j = j0; j < j1; ++j) wp[j] += c * si[j];
          }
        }
        auto out = Y.select(0, b).narrow(0, r0, rows);
        at::mm_out(out, torch::from_blob(wp, {rows, K}, X.options()), X.select(0, b));
      }
    });
  }
  return Y;
}
"""


def cpp_kernel():
    """The JIT-compiled prototype, or None where no C++ compiler is found."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return None
    from torch.utils.cpp_extension import load_inline

    return load_inline("zootune_fused_forming_prototype", cpp_sources=CPP_SOURCE,
                       functions=["tiled_forward"], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                       extra_ldflags=["-fopenmp"])


def library_forward(v: torch.Tensor, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What the library's ``bmm``/``unfold`` kernels do: form every ``W_b``, then one bmm."""
    wb = kernels.aggregate(a, v, "per_sample_weight")
    return torch.bmm(wb, x)


def tiled_torch(v: torch.Tensor, a: torch.Tensor, x: torch.Tensor, rows: int, block: int) -> torch.Tensor:
    """``W_b`` formed ``rows`` output channels and ``block`` samples at a time, each tile
    multiplied while it is in cache."""
    m, c, k = v.shape
    b, _, n = x.shape
    y = torch.empty(b, c, n, dtype=x.dtype)
    for r0 in range(0, c, rows):
        r1 = min(c, r0 + rows)
        vt = v[:, r0:r1].reshape(m, -1)
        for b0 in range(0, b, block):
            b1 = min(b, b0 + block)
            wt = torch.mm(a[b0:b1], vt).view(b1 - b0, r1 - r0, k)
            torch.bmm(wt, x[b0:b1], out=y[b0:b1, r0:r1])
    return y


def product_shapes(floor_rows: list[dict]) -> list[dict]:
    """(C_out, K, L) and count of the layer3/layer4 products, from per_sample_floor's rows."""
    out = []
    for r in floor_rows:
        if not r["layer"].startswith(("layer3", "layer4")):
            continue
        (cin, h, w), (kh, kw) = r["input"], r["kernel_size"]
        (sh, sw), (ph, pw) = r["stride"], r["padding"]
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        out.append({"layer": r["layer"], "count": r["count"], "C_out": r["out_channels"],
                    "K": cin * kh * kw, "L": ho * wo, "kernel": f"{kh}x{kw}/s{sh}"})
    return out


def variants(v, a, x, cpp) -> dict[str, Callable[[], torch.Tensor]]:
    c, k = v.shape[1], v.shape[2]
    b, _, n = x.shape
    w0 = v[0]
    x_wide = x.transpose(0, 1).reshape(k, b * n).contiguous()  # the plain product's layout
    steps = {
        "one_gemm": lambda: torch.mm(w0, x_wide),
        "floor": lambda: torch.matmul(w0, x),
        "library": lambda: library_forward(v, a, x),
    }
    for rows, block in TORCH_GRID:
        steps[f"tiled_torch/{rows}x{block}"] = lambda r=rows, s=block: tiled_torch(v, a, x, r, s)
    if cpp is not None:
        for rows in CPP_ROWS:
            steps[f"tiled_cpp/{rows}"] = lambda r=rows: cpp.tiled_forward(v, a, x, r)
        steps["tiled_cpp/l2"] = lambda r=max(16, L2_TILE_FLOATS // k): cpp.tiled_forward(v, a, x, r)
    return steps


def measure(shape: dict, batch: int, m: int, rounds: int, cpp) -> dict:
    torch.manual_seed(0)
    v = torch.randn(m, shape["C_out"], shape["K"])
    a = torch.softmax(torch.randn(batch, m), dim=1)
    x = torch.randn(batch, shape["K"], shape["L"])
    steps = variants(v, a, x, cpp)
    with torch.no_grad():
        ref = library_forward(v, a, x).clone()
        for name, step in steps.items():  # exact before timed (one_gemm/floor: other weights)
            if name.startswith("tiled"):
                torch.testing.assert_close(step(), ref, rtol=1e-4, atol=1e-3)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for step in steps.values():
            step()
        for _ in range(rounds):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(t) for k, t in times.items()}
    best = {fam: min((n for n in ms if n.startswith(fam)), key=ms.get, default=None)
            for fam in ("tiled_torch", "tiled_cpp")}
    return {**shape, "ms": ms, "best": best}


def totals(rows: list[dict]) -> dict[str, float]:
    """Each variant family summed over the rows, weighted by count (tiled: best of its grid)."""
    out: dict[str, float] = {}
    for fam in ("one_gemm", "floor", "library", "tiled_torch", "tiled_cpp"):
        vals = []
        for r in rows:
            name = r["best"].get(fam) if fam.startswith("tiled") else fam
            if name is None:
                break
            vals.append(r["count"] * r["ms"][name])
        else:
            out[fam] = sum(vals)
    return out


def _best_cell(row: dict, family: str) -> str:
    """``ms (setting)`` of the family's fastest setting in ``row``, or ``-`` if not measured."""
    name = row["best"].get(family)
    return "-" if name is None else f"{row['ms'][name]:.1f} ({name.split('/', 1)[1]})"


def write_md(data: dict) -> None:
    env = data["environment"]
    lines = ["# Forming per-sample weights in cache: how close to the floor (issue 15, item 2)", "",
             f"Command: `{data['command']}`  ",
             f"Machine: {env['cpu']}, {env['cpus']} CPUs; torch {env['torch']}, {env['threads']} threads; "
             f"written {env['written']}; B = {data['setup']['batch']}, m = {data['setup']['m']}; forward only, "
             f"median of {data['setup']['rounds']} interleaved rounds, ms. Variants: module docstring of "
             "`benchmarks/fused_forming.py`.", "",
             "| layer | count | C_out | K | L | one_gemm | floor | library | tiled_torch (best) | tiled_cpp (best) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        ms = r["ms"]
        lines.append(f"| {r['layer']} ({r['kernel']}) | {r['count']} | {r['C_out']} | {r['K']} | {r['L']} | "
                     f"{ms['one_gemm']:.1f} | {ms['floor']:.1f} | {ms['library']:.1f} | "
                     f"{_best_cell(r, 'tiled_torch')} | {_best_cell(r, 'tiled_cpp')} |")
    tot = data["totals"]
    lines += ["", "Summed over these layers (each shape times its count):", "",
              "| variant | ms | / one_gemm | / library |", "|---|---:|---:|---:|"]
    for fam, val in tot.items():
        lines.append(f"| {fam} | {val:.0f} | {val / tot['one_gemm']:.2f}x | {val / tot['library']:.2f}x |")
    path = RESULTS / "fused_forming.md"
    atomic_write(path, keep_notes(path, "\n".join(lines) + "\n"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--m", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--force", action="store_true", help="re-measure finished rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not FLOOR_JSON.is_file():
        sys.exit(f"{FLOOR_JSON} is missing: run benchmarks/per_sample_floor.py first")
    shapes = product_shapes(json.loads(FLOOR_JSON.read_text())["rows"])
    setup = run_setup(batch=args.batch, m=args.m, rounds=args.rounds, threads=args.threads)
    old, done = reusable_rows(JSON, setup, lambda r: r["layer"], args.force)
    origin = provenance(args.threads, old if done else None)
    cpp = cpp_kernel()
    rows, data = [], {}
    for shape in shapes:
        row = done.get(shape["layer"])
        if row is None or (cpp is not None and row["best"].get("tiled_cpp") is None):
            row = measure(shape, args.batch, args.m, args.rounds, cpp)
            origin = provenance(args.threads)  # this run measured: it is the one to repeat
            print(shape["layer"], {k: round(v, 1) for k, v in row["ms"].items()}, flush=True)
        rows.append(row)
        data = {**origin, "setup": setup, "rows": rows}
        data["totals"] = totals(rows)
        atomic_write(JSON, json.dumps(data, indent=1) + "\n")
    write_md(data)
    print(json.dumps(data["totals"], indent=1))


if __name__ == "__main__":
    main()
