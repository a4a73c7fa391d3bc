"""Speed, memory and FLOPs of Zoo-Tuning against a plain single model, side by side.

    python benchmarks/speed.py                 # full grid (paper shape + quick shape), resumable
    python benchmarks/speed.py --shapes quick  # only batch 16 @ 112x112
    python benchmarks/speed.py --profile-layers --shapes paper   # per-layer ratios

Every measurement runs in its own subprocess (so its peak memory is its own) and the grid is
interleaved by shape; results go to ``benchmarks/results/speed.json`` after each cell (finished
cells are skipped on a re-run; ``--force`` re-measures) and ``speed.md`` is rebuilt from them.

Configurations (torchvision ResNet-50, random weights, m sources):

* ``plain``       — one ResNet-50 (the floor every ratio is against);
* ``zoo``         — per-sample Zoo-Tuning (zootune defaults);
* ``lite``        — lite Zoo-Tuning (training: one merged kernel per layer);
* ``exported``    — the plain model exported from lite (inference only);
* ``straightforward`` — the same maths written directly: einsum per-sample weights, one grouped
  convolution with the batch folded into groups, alignment recomputed on every call, autograd
  keeping everything (the reference point for our kernels).

Train = forward + backward + SGD step; inference = forward under ``torch.inference_mode`` in eval
mode. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHAPES = {"paper": (48, 224), "quick": (16, 112)}
TARGETS = {  # ratio to plain at the paper shape (issue 3)
    ("train", "zoo"): 1.35,
    ("train", "lite"): 1.2,
    ("infer", "zoo"): 1.3,
    ("infer", "exported"): 1.0,
}
MEM_TARGET = ("train", "zoo", 1.8)


# ----------------------------------------------------------------------------------------------
# Worker: one measurement in a fresh process
# ----------------------------------------------------------------------------------------------


def straightforward_forward(layer, x):
    """Eq. 2 written directly: gates, alignment every call, einsum, grouped conv (autograd)."""
    import torch
    import torch.nn.functional as F

    from zootune.layers.gate import pool_conv_input, pool_linear_input

    if x.dim() == 4:
        a = layer.gate(pool_conv_input(x))
    else:
        a = layer.gate(pool_linear_input(x))
    w, b = layer.weight, layer.bias
    if layer.align is not None:
        T = layer.align.matrices()
        w = torch.einsum("moc,mc...->mo...", T, w)
        b = torch.einsum("moc,mc->mo", T, b) if b is not None else None
    wb = torch.einsum("bm,m...->b...", a, w)
    bb = a @ b if b is not None else None
    B = x.shape[0]
    if x.dim() == 2:  # Linear
        y = torch.einsum("bi,boi->bo", x, wb)
        return y + bb if bb is not None else y
    s = layer.spec
    x = layer._pad(x)
    y = F.conv2d(
        x.reshape(1, -1, *x.shape[2:]),
        wb.reshape(-1, *wb.shape[2:]),
        bb.reshape(-1) if bb is not None else None,
        s.stride, s.padding, s.dilation, B * s.groups,
    )
    return y.view(B, -1, *y.shape[2:])


def build(method: str, m: int):
    import torch
    import torchvision

    import zootune

    torch.manual_seed(0)
    if method == "plain":
        return torchvision.models.resnet50()
    zoo = [torchvision.models.resnet50() for _ in range(m)]
    if method in ("lite", "exported"):
        zm = zootune.zoo_tune(zoo, lite=True)
    else:
        zm = zootune.zoo_tune(zoo)
    del zoo
    if method == "exported":
        zm.eval()
        return zm.export()
    if method == "straightforward":
        import types

        for layer in zm.adaagg_layers().values():
            layer.forward = types.MethodType(straightforward_forward, layer)
    return zm


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None, **_):
    """FLOPs of aten.convolution_backward, groups included.

    torch's own formula ignores ``groups`` for the weight gradient, which over-counts a grouped
    convolution with the batch folded into groups by a factor of the batch size.
    """
    assert not transposed
    macs = 1
    for d in grad_out_shape:
        macs *= d
    for d in w_shape[1:]:
        macs *= d
    return 2 * macs * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(model, phase: str, size: int, batch: int) -> int:
    """FLOPs of one forward (+ backward in training) at ``batch``.

    Every op is affine in the batch size (alignment is batch-independent, the rest linear), so
    the driver measures batch 1 and 2 and extrapolates instead of counting a full-size step.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zootune.layers import AdaAggConv2d

    for mod in model.modules():  # FLOPs do not depend on the kernel; skip auto's timing runs
        if isinstance(mod, AdaAggConv2d):
            mod.kernel = "grouped"
    x = torch.randn(batch, 3, size, size)
    mapping = {torch.ops.aten.convolution_backward.default: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        if phase == "train":
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops()


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    batch, size = SHAPES[spec["shape"]]
    model = build(spec["method"], spec["m"])
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))
    if spec["phase"] == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), target).backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)

    step()  # warm-up: allocator, backend kernels, auto kernel choice
    base_rss = rss_gb()
    times = []
    for _ in range(spec["reps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    f1, f2 = (count_flops(model, spec["phase"], size, b) for b in (1, 2))
    flops = f1 + (batch - 1) * (f2 - f1)
    params = sum(p.numel() for p in model.parameters())
    return {
        **spec,
        "seconds": sorted(times)[len(times) // 2],
        "all_seconds": times,
        "peak_rss_gb": peak,
        "rss_before_step_gb": base_rss,
        "flops": flops,
        "params": params,
    }


# ----------------------------------------------------------------------------------------------
# Per-layer profile
# ----------------------------------------------------------------------------------------------


def profile_layers(shape: str, m: int, threads: int, reps: int) -> list[dict]:
    """Time each distinct aggregated-conv shape alone (fwd+bwd) against the plain conv."""
    import torch
    import torchvision

    import zootune

    torch.set_num_threads(threads)
    batch, size = SHAPES[shape]
    torch.manual_seed(0)
    zoo = [torchvision.models.resnet50() for _ in range(m)]
    zm = zootune.zoo_tune(zoo)
    inputs: dict[str, torch.Size] = {}

    def recorder(name):
        def hook(mod, inp, out):
            inputs.setdefault(name, inp[0].shape)

        return hook

    hooks = [layer.register_forward_hook(recorder(n)) for n, layer in zm.adaagg_layers().items()]
    with torch.no_grad():
        zm.eval()
        zm(torch.randn(2, 3, size, size))
    for h in hooks:
        h.remove()
    seen: dict[tuple, dict] = {}
    layers = zm.adaagg_layers()
    for name, shp in inputs.items():
        layer = layers[name]
        if not hasattr(layer, "kernel_size"):
            continue
        key = (tuple(shp[1:]), layer.out_channels, layer.kernel_size, layer.stride)
        if key in seen:
            seen[key]["count"] += 1
            continue
        x = torch.randn(batch, *shp[1:], requires_grad=True)
        plain = zoo[0].get_submodule(name)

        def timed(mod):
            mod.train()
            y = mod(x)
            y.backward(torch.ones_like(y))
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                y = mod(x)
                y.backward(torch.ones_like(y))
                best = min(best, time.perf_counter() - t0)
            return best

        tp, tz = timed(plain), timed(layer)
        from zootune.layers.kernels import conv_kernel

        kern = conv_kernel(layer.kernel, layer.spec, x, (batch, *layer.weight.shape[1:]))
        seen[key] = {
            "layer": name, "count": 1, "input": list(shp[1:]), "out_channels": layer.out_channels,
            "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
            "aligned": layer.align is not None, "kernel": kern.name,
            "plain_ms": 1e3 * tp, "zoo_ms": 1e3 * tz, "ratio": tz / tp,
        }
    return list(seen.values())


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def grid(shapes: list[str], ms: list[int], reps: int, threads: int) -> list[dict]:
    cells = []
    for shape in shapes:
        for phase, methods in (
            ("train", ["plain", "zoo", "lite", "straightforward"]),
            ("infer", ["plain", "zoo", "lite", "exported", "straightforward"]),
        ):
            for method in methods:
                cells.append(dict(shape=shape, phase=phase, method=method, m=5))
        for m in ms:
            if m != 5:
                cells.append(dict(shape=shape, phase="train", method="zoo", m=m))
    for c in cells:
        c.update(reps=reps, threads=threads)
    return cells


def key(c: dict) -> str:
    suffix = "/jemalloc" if c.get("jemalloc") else ""
    return f"{c['shape']}/{c['phase']}/{c['method']}/m{c['m']}{suffix}"


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def environment() -> dict:
    import torch

    import zootune

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "machine": f"{platform.machine()} {cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zootune": zootune.__version__,
    }


def write_markdown(results: dict, env: dict, command: str, layer_profile: dict) -> None:
    lines = [
        "# Speed and memory: Zoo-Tuning vs one plain ResNet-50",
        "",
        f"Command: `{command}`  ",
        f"Machine: {env['machine']}; Python {env['python']}; torch {env['torch']}; "
        f"zootune {env['zootune']}",
        "",
        "Ratios are against the plain model measured in the same run (same shape, same phase). "
        "Time = median of the timed steps; memory = peak resident set size of the process "
        "(model, optimizer state and the step). FLOPs from torch's FlopCounterMode.",
        "",
    ]
    for (shape, (b, s)), jem in [(kv, j) for j in (False, True) for kv in SHAPES.items()]:
        rows = {k.replace("/jemalloc", ""): v for k, v in results.items()
                if v["shape"] == shape and bool(v.get("jemalloc")) == jem}
        if not rows:
            continue
        alloc = " — with jemalloc (LD_PRELOAD)" if jem else " — default allocator (glibc)"
        lines += [f"## {shape} shape: batch {b}, {s}x{s}, m=5 unless noted{alloc}", ""]
        lines += ["| phase | method | m | s/step | time ratio | FLOP ratio | peak RSS GB | mem ratio | target | met |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for phase in ("train", "infer"):
            base = rows.get(f"{shape}/{phase}/plain/m5")
            for k, r in sorted(rows.items(), key=lambda kv: (kv[1]["phase"] != "train", kv[1]["m"], kv[0])):
                if r["phase"] != phase:
                    continue
                tr = r["seconds"] / base["seconds"] if base else float("nan")
                fr = r["flops"] / base["flops"] if base else float("nan")
                mr = r["peak_rss_gb"] / base["peak_rss_gb"] if base else float("nan")
                tgt = TARGETS.get((phase, r["method"])) if shape == "paper" and r["m"] == 5 else None
                tgt_s, met = "", ""
                if tgt is not None:
                    tgt_s = f"<= {tgt:.2f}x"
                    met = "yes" if tr <= tgt + 0.05 * (tgt == 1.0) else "no"
                if shape == "paper" and (phase, r["method"]) == MEM_TARGET[:2] and r["m"] == 5:
                    tgt_s += f", mem <= {MEM_TARGET[2]}x"
                    met += "/" + ("yes" if mr <= MEM_TARGET[2] else "no")
                lines.append(
                    f"| {phase} | {r['method']} | {r['m']} | {r['seconds']:.3f} | {tr:.2f}x | "
                    f"{fr:.2f}x | {r['peak_rss_gb']:.2f} | {mr:.2f}x | {tgt_s} | {met} |"
                )
        lines.append("")
    for shape, rows in layer_profile.items():
        lines += [f"## Per-layer profile ({shape} shape, forward+backward of one aggregated conv vs the plain conv)", "",
                  "| first layer | count | input CxHxW | out | k | stride | aligned | kernel | plain ms | zoo ms | ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['layer']} | {r['count']} | {'x'.join(map(str, r['input']))} | {r['out_channels']} | "
                f"{r['kernel_size'][0]} | {r['stride'][0]} | {r['aligned']} | {r['kernel']} | "
                f"{r['plain_ms']:.1f} | {r['zoo_ms']:.1f} | {r['ratio']:.2f}x |"
            )
        lines.append("")
    notes = RESULTS / "speed_notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    (RESULTS / "speed.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="paper,quick", help="comma list of: " + ",".join(SHAPES))
    ap.add_argument("--ms", default="2,3,5,8", help="numbers of sources for the train step")
    ap.add_argument("--reps", type=int, default=3, help="timed steps per cell (after one warm-up)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--force", action="store_true", help="re-measure finished cells")
    ap.add_argument("--jemalloc", action="store_true",
                    help=f"run the workers with LD_PRELOAD={JEMALLOC} (Debian's libjemalloc2)")
    ap.add_argument("--phases", default="train,infer", help="comma list of: train,infer")
    ap.add_argument("--profile-layers", action="store_true", help="also write the per-layer profile")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "speed.json"
    data = json.loads(out.read_text()) if out.exists() else {"results": {}, "layer_profile": {}}
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
    env = environment()
    data["environment"] = env
    data["command"] = command
    shapes = [s for s in args.shapes.split(",") if s]
    ms = [int(v) for v in args.ms.split(",") if v]
    env_vars = dict(os.environ)
    if args.jemalloc:
        if not os.path.exists(JEMALLOC):
            raise SystemExit(f"{JEMALLOC} not found: apt-get install libjemalloc2")
        env_vars["LD_PRELOAD"] = JEMALLOC
    phases = set(args.phases.split(","))
    for cell in grid(shapes, ms, args.reps, args.threads):
        if cell["phase"] not in phases:
            continue
        cell["jemalloc"] = bool(args.jemalloc)
        k = key(cell)
        if k in data["results"] and not args.force:
            print(f"skip {k} (done)")
            continue
        print(f"run  {k} ...", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(cell)],
            capture_output=True, text=True, env=env_vars,
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"cell {k} failed")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        data["results"][k] = res
        print(f"     {res['seconds']:.3f} s/step, peak {res['peak_rss_gb']:.2f} GB", flush=True)
        out.write_text(json.dumps(data, indent=1))
        write_markdown(data["results"], env, command, data["layer_profile"])
    if args.profile_layers:
        for shape in shapes:
            if shape in data["layer_profile"] and not args.force:
                continue
            print(f"profile layers at {shape} ...", flush=True)
            data["layer_profile"][shape] = profile_layers(shape, 5, args.threads, args.reps)
            out.write_text(json.dumps(data, indent=1))
    write_markdown(data["results"], env, command, data["layer_profile"])
    print((RESULTS / "speed.md").read_text())


if __name__ == "__main__":
    main()
