"""Speed, memory and FLOPs of Zoo-Tuning against a plain single model, side by side.

    python benchmarks/speed.py                       # quick + paper shapes, resumable
    python benchmarks/speed.py --shapes quick        # only batch 16 @ 112x112
    python benchmarks/speed.py --profile-layers --shapes paper --phases none
    python benchmarks/speed.py --shapes paper --phases train --m-sweep-shapes none --allocator tcmalloc

Models (torchvision ResNet-50, random weights, m sources, zootune defaults):

* ``plain``           — one ResNet-50: the floor every ratio is against;
* ``zoo``             — per-sample Zoo-Tuning;
* ``lite``            — lite Zoo-Tuning (training: one merged kernel per layer);
* ``exported``        — the plain model exported from lite (inference only);
* ``straightforward`` — the same maths written directly on the same ZooModel: einsum per-sample
  weights, one grouped convolution with the batch folded into the groups, alignment recomputed on
  every call, autograd keeping everything (the reference point for our kernels).

``--no-align-shapes`` also times the training step of ``plain``, ``zoo`` and ``lite`` built with
``align=False`` (Zoo-Tuning "w/o T", the paper's Table 3), in cells of their own with their own
plain baseline (keys ``.../m5/align-none``): the channel alignment ``T_i W_i`` costs
``m * C_out^2 * K`` multiply-adds per aligned layer whatever the batch (§3.4), so this prices the
speed side of a trade-off whose accuracy side ``benchmarks/paper_tables.py`` measures.

Train = forward + backward + SGD step; inference = forward in eval mode under
``torch.inference_mode``.

Timing runs every method of one (shape, phase, m) cell in ONE process, interleaved: a warm-up
round, then ``--reps`` rounds in which each method runs one step in turn; the reported time is
the best of the rounds. On a shared machine, load from other processes then hits all methods
alike, and the minimum is the estimate least disturbed by it. Peak memory (resident set size) and
FLOPs (``torch.utils.flop_counter.FlopCounterMode``, with a groups-aware formula for convolution
backward) come from a separate fresh process per method, which also times that method alone
(median of ``--reps`` steps after its first: the number a user running only that method sees,
reported beside the interleaved one; a cell missing it is completed by a plain re-run). With
``--own-processes N`` every method gets N fresh processes, run in alternating order (methods
forward, then backward, ...), and its own time is the median of their medians: one process
carries an offset of its own, and a VM's speed drifts over the minutes a cell takes. Results go to
``benchmarks/results/speed.json`` after each cell (finished cells are skipped on a re-run;
``--force`` re-measures) and ``speed.md`` is rebuilt from them, followed by
``speed_notes.md`` (analysis written by hand).

``--allocator jemalloc|tcmalloc`` runs every worker process with that malloc preloaded
(``LD_PRELOAD``, the library found as ``zootune --allocator`` finds it); those cells are stored
and reported apart from the default allocator's (``.../m5/tcmalloc``), each with its own plain
baseline, so the table shows the allocator's effect on plain and Zoo-Tuning steps side by side.
With ``--profile-layers`` the script re-executes itself once under the allocator (the profile runs
in this process) and stores that profile apart too (``paper/tcmalloc``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import aggregated_conv_inputs, cpu_name  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHAPES = {"paper": (48, 224), "quick": (16, 112)}
METHODS = {
    "train": ["plain", "zoo", "lite", "straightforward"],
    "infer": ["plain", "zoo", "lite", "exported", "straightforward"],
}
TARGETS = {  # ratio to plain at the paper shape (the speed issue, item 2)
    ("train", "zoo"): 1.35,
    ("train", "lite"): 1.2,
    ("infer", "zoo"): 1.1,
    ("infer", "exported"): 1.0,
}
MEM_TARGET = ("train", "zoo", 1.6)
FLOPS_COUNTER = 2  # version of the FLOP counting; older records are recounted


# ----------------------------------------------------------------------------------------------
# Models and steps (run inside worker processes)
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
    # FlopCounterMode looks formulas up by overload packet (not by the .default overload)
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        if phase == "train":
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops()


def build_models(methods: list[str], m: int, exported_file: str | None = None, align=None) -> dict:
    """One model per method; ``straightforward`` shares the per-sample ZooModel (its layers switch
    to :func:`straightforward_forward` only during that method's steps). With ``exported_file``
    the exported model is a fresh ResNet-50 loaded from that file (what a deployment holds).
    ``align``: zootune's ``align`` option for the Zoo-Tuning models (None: its default)."""
    import torch
    import torchvision

    import zootune

    torch.manual_seed(0)
    models = {}
    opts = {} if align is None else {"align": align}
    if exported_file is not None and "exported" in methods:
        from safetensors.torch import load_file

        models["exported"] = torchvision.models.resnet50()
        models["exported"].load_state_dict(load_file(exported_file))
        methods = [meth for meth in methods if meth != "exported"]
    if "plain" in methods:
        models["plain"] = torchvision.models.resnet50()
    if {"zoo", "straightforward"} & set(methods):
        models["zoo"] = zootune.zoo_tune([torchvision.models.resnet50() for _ in range(m)], **opts)
    if {"lite", "exported"} & set(methods):
        lite = zootune.zoo_tune([torchvision.models.resnet50() for _ in range(m)], lite=True, **opts)
        if "lite" in methods:
            models["lite"] = lite
        if "exported" in methods:
            lite.eval()
            models["exported"] = lite.export()
    return models


@contextlib.contextmanager
def straightforward_mode(zm):
    """Inside: the ZooModel's AdaAgg layers run :func:`straightforward_forward`."""
    layers = list(zm.adaagg_layers().values())
    for layer in layers:
        layer.forward = types.MethodType(straightforward_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def model_of(method: str, models: dict):
    return models["zoo" if method == "straightforward" else method]


def mode_of(method: str, models: dict):
    if method == "straightforward":
        return straightforward_mode(models["zoo"])
    return contextlib.nullcontext()


def make_step(method: str, models: dict, phase: str, x, target):
    """A closure running one training step (or one inference forward) of ``method``."""
    import torch

    model = model_of(method, models)
    if phase == "train":
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        for p in model.parameters():  # create the momentum buffers now (a zero-gradient step)
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            model.train()
            with mode_of(method, models):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), target).backward()
                opt.step()

    else:
        # Random weights averaged over a zoo, with BatchNorm's default running statistics, shrink
        # activations layer by layer in eval mode until they are denormal floats, which x86 CPUs
        # process many times slower — an artefact of random weights. Estimating the statistics
        # on the input batch (as training would) keeps every model's activations normal.
        import zootune

        with mode_of(method, models):
            zootune.recalibrate_batchnorm(model, [x])

        def step():
            model.eval()
            with mode_of(method, models), torch.inference_mode():
                model(x)

    return step


def setup(spec: dict):
    """Threads and one fixed input batch for a worker process."""
    import torch

    torch.set_num_threads(spec["threads"])
    batch, size = SHAPES[spec["shape"]]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    target = torch.randint(0, 1000, (batch,), generator=g)
    return batch, size, x, target


def kernel_choices_made() -> dict[str, str]:
    """What ``auto`` settled on in this process, per layer shape (timed at its first step)."""
    from zootune.layers.kernels import kernel_choices

    return {str(k): v for k, v in sorted(kernel_choices().items(), key=str)}


def time_worker(spec: dict) -> dict:
    """Seconds per step of every method in ``spec['methods']``, interleaved (module docstring)."""
    _, _, x, target = setup(spec)
    models = build_models(spec["methods"], spec["m"], align=spec.get("align"))
    steps = {meth: make_step(meth, models, spec["phase"], x, target) for meth in spec["methods"]}
    for step in steps.values():  # warm-up: allocator, backend kernels, auto kernel choice
        step()
    times: dict[str, list[float]] = {meth: [] for meth in steps}
    for _ in range(spec["reps"]):
        for meth, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[meth].append(time.perf_counter() - t0)
    return {**times, "kernel_choices": kernel_choices_made()}


def export_worker(spec: dict) -> dict:
    """Build the lite ZooModel, export it and save the plain model to ``spec['path']``."""
    import zootune

    setup(spec)
    models = build_models(["exported"], spec["m"], align=spec.get("align"))
    zootune.save(models["exported"], spec["path"])
    return {"path": spec["path"]}


def flops_worker(spec: dict) -> dict:
    """FLOPs of one method's step (see :func:`count_flops`)."""
    batch, size, _, _ = setup(spec)
    meth = spec["method"]
    models = build_models([meth], spec["m"], align=spec.get("align"))
    model = model_of(meth, models)
    with mode_of(meth, models):
        f1, f2 = (count_flops(model, spec["phase"], size, b) for b in (1, 2))
    return {"flops": f1 + (batch - 1) * (f2 - f1), "flops_counter": FLOPS_COUNTER}


def memory_worker(spec: dict) -> dict:
    """Peak RSS of one method's steps in a fresh process, then its own step time there (median
    of ``spec['reps']`` steps after the first: what a user running only this method sees), its
    FLOPs and parameter count."""
    import statistics

    batch, size, x, target = setup(spec)
    meth = spec["method"]
    models = build_models([meth], spec["m"], spec.get("exported_file"), align=spec.get("align"))
    step = make_step(meth, models, spec["phase"], x, target)
    step()  # one step: optimizer state already exists, so its peak is the steady state's
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    fresh, faults = [], []
    for _ in range(max(1, int(spec.get("reps", 3)))):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step()
        fresh.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    model = model_of(meth, models)
    with mode_of(meth, models):
        f1, f2 = (count_flops(model, spec["phase"], size, b) for b in (1, 2))
    return {
        "kernel_choices": kernel_choices_made(),
        "peak_rss_gb": peak,
        "fresh_seconds": fresh,
        "fresh_median": statistics.median(fresh),
        # minor page faults per step: memory the allocator handed back to the kernel and touches
        # again (glibc's large blocks; a caching allocator keeps them) - load-independent
        "page_faults_per_step": statistics.median(faults),
        "flops": f1 + (batch - 1) * (f2 - f1),
        "flops_counter": FLOPS_COUNTER,
        "params": sum(p.numel() for p in model.parameters()),
    }


def own_processes_record(runs: list[dict]) -> dict:
    """One cell's own-process record from the memory workers of its fresh processes: the
    median of their step medians (and of their peaks); a single process's record unchanged."""
    import statistics

    rec = dict(runs[-1])
    rec["process_medians"] = [r["fresh_median"] for r in runs]
    choices = [r.get("kernel_choices") for r in runs]
    rec["kernel_choices_differ"] = sorted({k for c in choices for k in (c or {})
                                           if len({str((c2 or {}).get(k)) for c2 in choices}) > 1})
    if len(runs) > 1:
        rec["fresh_median"] = statistics.median(rec["process_medians"])
        rec["fresh_seconds"] = [t for r in runs for t in r["fresh_seconds"]]
        rec["peak_rss_gb"] = statistics.median(r["peak_rss_gb"] for r in runs)
    rec["own_processes"] = len(runs)
    return rec


# ----------------------------------------------------------------------------------------------
# Per-layer profile
# ----------------------------------------------------------------------------------------------


def profile_layers(shape: str, m: int, threads: int, reps: int) -> list[dict]:
    """Time each distinct aggregated-conv shape alone (forward + backward) against the plain conv:
    the per-sample layer, the lite layer, and lite's parts on their own (issue 15, item 2):

    * ``align+merge``: ``sum_i abar_i T_i W_i`` (Eq. 5) as lite computes it in training — the
      alignment folded into the merge (``ChannelAlign.merge``, one matrix product) — and its
      backward;
    * for reference, the same two steps unfolded: ``align`` (``T_i W_i`` for the m sources and
      its backward) and ``merge`` (``sum_i abar_i (T_i W_i)``, one matrix-vector product, and its
      backward);
    * ``gates``: pooling the layer input, the gate network and the batch mean, and their backward
      (the pooling's backward is a broadcast into the input gradient).

    The convolution with the merged kernel is the plain conv's cost (``plain_ms``). Each part is
    timed with the layers, interleaved (every function once per round, best of ``reps`` rounds
    after one warm-up round), so ``align+merge + gates + plain`` can be compared with the
    whole lite layer."""
    import torch
    import torchvision

    import zootune
    from zootune.layers.gate import pool_conv_input

    torch.set_num_threads(threads)
    batch, size = SHAPES[shape]
    torch.manual_seed(0)
    zoo = [torchvision.models.resnet50() for _ in range(m)]
    zm = zootune.zoo_tune(zoo)
    zl = zootune.zoo_tune(zoo, lite=True)
    inputs = {n: shape for n, (_, shape) in aggregated_conv_inputs(zm, size).items()}
    seen: dict[tuple, dict] = {}
    layers, lite_layers = zm.adaagg_layers(), zl.adaagg_layers()

    def best_of(*fns) -> list[float]:
        """Best time of each function over ``reps`` rounds, interleaved (every function once
        per round, after one warm-up round of all): the first function timed on a fresh input
        otherwise pays for its first touch (a 3x artefact on the plain conv in an earlier run)."""
        for fn in fns:
            fn()
        best = [float("inf")] * len(fns)
        for _ in range(reps):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t0)
        return best

    def fwd_bwd(fn):
        def run():
            y = fn()
            y.backward(torch.ones_like(y))
        return run

    for name, shp in inputs.items():
        layer, lite = layers[name], lite_layers[name]
        if not hasattr(layer, "kernel_size"):
            continue
        key = (tuple(shp[1:]), layer.out_channels, layer.kernel_size, layer.stride)
        if key in seen:
            seen[key]["count"] += 1
            continue
        x = torch.randn(batch, *shp[1:], requires_grad=True)
        plain = zoo[0].get_submodule(name)
        for mod in (plain, layer, lite):
            mod.train()
        aligned = tuple(t.detach().requires_grad_(True) if t is not None else None
                        for t in lite.aligned())
        gate = lite.gate_value().detach().requires_grad_(True)
        tp, tz, tl, t_folded, t_align, t_merge, t_gates = best_of(
            *(fwd_bwd(lambda mod=mod: mod(x)) for mod in (plain, layer, lite)),
            fwd_bwd(lambda: lite.merged(gate)[0]),
            fwd_bwd(lambda: lite.aligned()[0]),
            fwd_bwd(lambda: lite.merged(gate, aligned)[0]),
            fwd_bwd(lambda: lite._gates(pool_conv_input(x)).mean(0)))
        # the kernel the layer actually ran in its timed training forwards ("auto" resolved)
        kernel_name = layer.train_kernel or layer.kernel
        seen[key] = {
            "layer": name, "count": 1, "input": list(shp[1:]), "out_channels": layer.out_channels,
            "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
            "aligned": layer.align is not None, "kernel": kernel_name,
            "plain_ms": 1e3 * tp, "zoo_ms": 1e3 * tz, "ratio": tz / tp,
            "lite_ms": 1e3 * tl, "lite_align_merge_ms": 1e3 * t_folded,
            "lite_align_ms": 1e3 * t_align, "lite_merge_ms": 1e3 * t_merge,
            "lite_gates_ms": 1e3 * t_gates,
        }
    return list(seen.values())


def environment() -> dict:
    import torch

    import zootune

    return {
        "machine": f"{platform.machine()} {cpu_name()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zootune": zootune.__version__,
    }


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def cell_key(shape: str, phase: str, method: str, m: int, allocator: str = "system", align=None) -> str:
    return (f"{shape}/{phase}/{method}/m{m}" + ("" if allocator == "system" else f"/{allocator}")
            + ("" if align is None else f"/align-{'none' if align is False else align}"))


def allocator_of(rec: dict) -> str:
    """The malloc a cell ran with (records before ``allocator`` was recorded: a jemalloc flag)."""
    return rec.get("allocator") or ("jemalloc" if rec.get("jemalloc") else "system")


def run_worker(kind: str, spec: dict, env: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, json.dumps(spec)],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{kind} worker failed for {spec}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cells(shapes, phases, ms, sweep_shapes, no_align_shapes=()):
    """(shape, phase, methods, m, align) groups timed together (align None: zootune's default)."""
    out = []
    for shape in shapes:
        for phase in phases:
            out.append((shape, phase, METHODS[phase], 5, None))
        if "train" in phases and shape in sweep_shapes:
            out += [(shape, "train", ["plain", "zoo"], m, None) for m in ms if m != 5]
        if "train" in phases and shape in no_align_shapes:
            out.append((shape, "train", ["plain", "zoo", "lite"], 5, False))
    return out


UNRECORDED = "not recorded (measured before the CPU was recorded per cell)"


def cpu_labels(data: dict) -> dict[str, str]:
    """Short labels A, B, ... for the CPUs named in the results, in order of appearance."""
    names: list[str] = []
    recs = list(data["results"].values()) + [r for rows in data.get("layer_profile", {}).values()
                                             for r in rows]
    for r in recs:
        for name in (r.get("cpu", UNRECORDED), r.get("own_cpu", UNRECORDED)):
            if name not in names:
                names.append(name)
    return {name: chr(ord("A") + i) for i, name in enumerate(names)}


def write_markdown(data: dict) -> None:
    env, results = data["environment"], data["results"]
    labels = cpu_labels(data)
    lines = [
        "# Speed and memory: Zoo-Tuning vs one plain ResNet-50",
        "",
        "Commands (in order; each skips the cells already measured): "
        + "; ".join(f"`{c}`" for c in data.get("commands", [data.get("command", "")])) + "  ",
        f"Last run on: {env['machine']}; Python {env['python']}; torch {env['torch']}; "
        f"zootune {env['zootune']}; {env['threads']} threads.",
        "",
        "CPUs (the cells come from several sessions, each on the machine it was given; the `CPU` "
        "column names the machine of the interleaved timing / of the own-process run, and an own "
        "ratio is only formed between runs on the same CPU): "
        + "; ".join(f"**{label}** = {name}" for name, label in labels.items()) + ".",
        "",
        "Every ratio is against the plain model timed in the same process, interleaved step by "
        "step with the others (best of the rounds; see the script's docstring); \"own process\": "
        "each method alone in a fresh process, median of --reps steps after the first (with "
        "--own-processes N: the median over N such processes, run in alternating order), against "
        "plain's own-process median (what a user running one method sees). Memory = peak "
        "resident set size of a fresh process running that method (model, optimizer state, "
        "step). FLOPs from torch's FlopCounterMode (groups-aware convolution backward).",
        "",
    ]
    allocators = ["system"] + sorted({allocator_of(r) for r in results.values()} - {"system"})
    for alloc_name, align in [(a, al) for al in (None, False) for a in allocators]:
        for shape, (b, s) in SHAPES.items():
            rows = [r for r in results.values() if r["shape"] == shape and allocator_of(r) == alloc_name
                    and r.get("align") == align]
            if not rows:
                continue
            alloc = ("default allocator (glibc)" if alloc_name == "system"
                     else f"with {alloc_name} (LD_PRELOAD)")
            if align is False:
                alloc += ", Zoo-Tuning without channel alignment (align=False, \"w/o T\")"
            lines += [f"## {shape} shape: batch {b}, {s}x{s} — {alloc}", "",
                      "| phase | method | m | CPU | s/step | time ratio | own process s/step | "
                      "own ratio | FLOP ratio | peak RSS GB | mem ratio | target (paper shape) | met |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in sorted(rows, key=lambda r: (r["phase"] != "train", r["m"],
                                                 METHODS[r["phase"]].index(r["method"]))):
                base = results.get(cell_key(shape, r["phase"], "plain", r["m"], alloc_name, align))
                tr = r["seconds"] / base["seconds"]
                fr = r["flops"] / base["flops"] if r.get("flops") else float("nan")
                mr = r["peak_rss_gb"] / base["peak_rss_gb"] if r.get("peak_rss_gb") else float("nan")
                own = r.get("fresh_median")
                own_cpu = r.get("own_cpu", UNRECORDED)
                same_cpu = own_cpu == base.get("own_cpu", UNRECORDED) != UNRECORDED
                own_r = own / base["fresh_median"] if own and base.get("fresh_median") and same_cpu else None
                cpu = labels[r.get("cpu", UNRECORDED)] + ("" if own is None else f" / {labels[own_cpu]}")
                tgt, met = "", ""
                if shape == "paper" and r["m"] == 5 and align is None and (r["phase"], r["method"]) in TARGETS:
                    t = TARGETS[(r["phase"], r["method"])]
                    # "1.0x" means no overhead: allow 5% measurement noise there; met when both
                    # the interleaved and the own-process ratio are within the target
                    ok = tr <= max(t, 1.05) and (own_r is None or own_r <= max(t, 1.05))
                    tgt, met = f"time <= {t:.2f}x", "yes" if ok else "no"
                    if (r["phase"], r["method"]) == MEM_TARGET[:2]:
                        tgt += f", mem <= {MEM_TARGET[2]}x"
                        met += "/" + ("yes" if mr <= MEM_TARGET[2] else "no")
                peak = f"{r['peak_rss_gb']:.2f}" if r.get("peak_rss_gb") else "-"
                lines.append(
                    f"| {r['phase']} | {r['method']} | {r['m']} | {cpu} | {r['seconds']:.3f} | {tr:.2f}x | "
                    f"{'-' if own is None else f'{own:.3f}'} | "
                    f"{'-' if own_r is None else f'{own_r:.2f}x'} | "
                    f"{fr:.2f}x | {peak} | {mr:.2f}x | {tgt} | {met} |"
                )
            lines.append("")
    for key, rows in data.get("layer_profile", {}).items():
        shape, _, alloc = key.partition("/")
        lines += [f"## Per-layer profile ({shape} shape{', with ' + alloc if alloc else ''}): "
                  "forward+backward of one aggregated conv vs the plain conv, same input", "",
                  f"CPU: {', '.join(sorted({labels[r.get('cpu', UNRECORDED)] for r in rows}))}.", "",
                  "| first layer | count | input CxHxW | out | k | stride | aligned | kernel | "
                  "plain ms | zoo ms | ratio | lite ms | lite ratio | lite parts: align+merge "
                  "(folded) [unfolded: align / merge] / gates ms |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        totals = {k: 0.0 for k in ("plain_ms", "zoo_ms", "lite_ms", "lite_align_merge_ms",
                                   "lite_align_ms", "lite_merge_ms", "lite_gates_ms")}
        for r in rows:
            lite = "| - | - | - |"
            if "lite_ms" in r:  # profiles from before lite was profiled lack these columns
                # profiles from before the folded merge: lite ran the unfolded pair
                folded = f"{r['lite_align_merge_ms']:.1f} " if "lite_align_merge_ms" in r else "- "
                lite = (f"| {r['lite_ms']:.1f} | {r['lite_ms'] / r['plain_ms']:.2f}x | "
                        f"{folded}[{r['lite_align_ms']:.1f} / {r['lite_merge_ms']:.1f}] / "
                        f"{r['lite_gates_ms']:.1f} |")
            lines.append(
                f"| {r['layer']} | {r['count']} | {'x'.join(map(str, r['input']))} | "
                f"{r['out_channels']} | {r['kernel_size'][0]} | {r['stride'][0]} | {r['aligned']} | "
                f"{r['kernel']} | {r['plain_ms']:.1f} | {r['zoo_ms']:.1f} | {r['ratio']:.2f}x " + lite
            )
            for k in totals:
                totals[k] += r.get(k, float("nan")) * r["count"]
        t = totals
        summary = (f"Summed over all aggregated convs (each shape times its count): plain "
                   f"{t['plain_ms']:.0f} ms, per-sample {t['zoo_ms']:.0f} ms "
                   f"({t['zoo_ms'] / t['plain_ms']:.2f}x)")
        if all("lite_ms" in r for r in rows):
            summary += f", lite {t['lite_ms']:.0f} ms ({t['lite_ms'] / t['plain_ms']:.2f}x); lite's parts: "
            if all("lite_align_merge_ms" in r for r in rows):
                summary += (f"alignment + merge folded {t['lite_align_merge_ms']:.0f} ms (unfolded: "
                            f"alignment {t['lite_align_ms']:.0f} + merge {t['lite_merge_ms']:.0f} ms), ")
            else:
                summary += (f"alignment {t['lite_align_ms']:.0f} ms, merge "
                            f"{t['lite_merge_ms']:.0f} ms, ")
            summary += f"gates {t['lite_gates_ms']:.0f} ms"
        lines += ["", summary + ".", ""]
    notes = RESULTS / "speed_notes.md"
    if notes.exists():
        lines.append(notes.read_text())
    (RESULTS / "speed.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="quick,paper", help="comma list of: " + ",".join(SHAPES))
    ap.add_argument("--phases", default="train,infer", help="comma list of: train,infer (or none)")
    ap.add_argument("--ms", default="2,3,5,8", help="numbers of sources for the train step")
    ap.add_argument("--m-sweep-shapes", default="quick,paper",
                    help="shapes at which the train step is also timed for every m in --ms")
    ap.add_argument("--no-align-shapes", default="quick,paper",
                    help="shapes at which plain, zoo and lite are also trained with align=False")
    ap.add_argument("--reps", type=int, default=3, help="timed rounds after one warm-up round")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--allocator", default="system",
                    help="malloc of the worker processes: system (glibc), jemalloc or tcmalloc "
                         "(LD_PRELOAD, found as `zootune --allocator` finds it; Debian packages "
                         "libjemalloc2, libtcmalloc-minimal4); its cells are kept apart")
    ap.add_argument("--jemalloc", action="store_true", help=argparse.SUPPRESS)  # = --allocator jemalloc
    ap.add_argument("--force", action="store_true", help="re-measure finished cells")
    ap.add_argument("--retime", action="store_true",
                    help="re-time finished cells (keep their memory and FLOP records)")
    ap.add_argument("--reown", action="store_true",
                    help="re-measure the own-process runs of finished cells (keep the interleaved times)")
    ap.add_argument("--own-processes", type=int, default=1,
                    help="fresh processes per method for the own-process time (median of them)")
    ap.add_argument("--profile-layers", action="store_true", help="also the per-layer profile")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        fn = {"time": time_worker, "memory": memory_worker, "export": export_worker,
              "flops": flops_worker}[kind]
        print(json.dumps(fn(spec)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "speed.json"
    if args.own_processes < 1:
        raise SystemExit("--own-processes must be >= 1")
    data = json.loads(out.read_text()) if out.exists() else {"results": {}, "layer_profile": {}}
    data["command"] = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
    data.setdefault("commands", [])
    if data["command"] not in data["commands"]:
        data["commands"].append(data["command"])
    data["environment"] = {**environment(), "threads": args.threads}
    env = dict(os.environ)
    allocator = "jemalloc" if args.jemalloc else args.allocator
    if allocator not in ("system", "jemalloc", "tcmalloc"):
        raise SystemExit(f"--allocator must be system, jemalloc or tcmalloc, got {allocator!r}")
    env.pop("LD_PRELOAD", None)  # the workers run exactly the allocator asked for, not an inherited one
    if allocator != "system":
        from zootune.allocator import KNOWN, AllocatorError, ensure, find_library

        lib = find_library(allocator)
        if lib is None:
            raise SystemExit(f"{allocator} not found: apt-get install {KNOWN[allocator][1]}")
        env["LD_PRELOAD"] = str(lib)
        if args.profile_layers:  # the profile runs in this process: re-execute it under the allocator
            try:
                ensure(allocator)
            except AllocatorError as exc:
                raise SystemExit(str(exc)) from exc

    def save():
        out.write_text(json.dumps(data, indent=1))
        write_markdown(data)

    shapes = [s for s in args.shapes.split(",") if s]
    phases = [p for p in args.phases.split(",") if p in METHODS]
    ms = [int(v) for v in args.ms.split(",") if v]
    for shape, phase, methods, m, align in cells(shapes, phases, ms, args.m_sweep_shapes.split(","),
                                                 args.no_align_shapes.split(",")):
        keys = {meth: cell_key(shape, phase, meth, m, allocator, align) for meth in methods}
        done = all(k in data["results"] for k in keys.values())
        own_done = done and all("fresh_median" in data["results"][k] for k in keys.values())
        label = f"{shape}/{phase}/m{m}" + ("" if align is None else f" align={align}")
        if own_done and not (args.force or args.retime or args.reown):
            print(f"skip {label} (done)")
            continue
        spec = dict(shape=shape, phase=phase, m=m, threads=args.threads)
        if align is not None:
            spec["align"] = align
        if not done or args.force or (args.retime and not args.reown):
            print(f"time {label}: {', '.join(methods)} ...", flush=True)
            times = run_worker("time", {**spec, "methods": methods, "reps": args.reps}, env)
            for meth in methods:
                rec = {**spec, "method": meth, "allocator": allocator, "cpu": cpu_name(),
                       "seconds": min(times[meth]), "all_seconds": times[meth]}
                if meth == "zoo":  # the per-sample layers' choices in the interleaved process
                    rec["interleaved_kernel_choices"] = times["kernel_choices"]
                print(f"     {meth}: {rec['seconds']:.3f} s/step", flush=True)
                data["results"].setdefault(keys[meth], {}).update(rec)
            save()
        if own_done and args.retime and not (args.force or args.reown):
            continue
        runs: dict[str, list[dict]] = {meth: [] for meth in methods}
        for proc in range(args.own_processes):  # peak memory, then the method's own step time
            for meth in (methods if proc % 2 == 0 else methods[::-1]):
                print(f"memory + own process {keys[meth]} ({proc + 1}/{args.own_processes}) ...",
                      flush=True)
                mspec = {**spec, "method": meth, "reps": args.reps}
                if meth == "exported":  # measured on the exported file alone, as deployed
                    mspec["exported_file"] = str(RESULTS / ".speed_exported.safetensors")
                    if not runs[meth]:
                        run_worker("export", {**spec, "path": mspec["exported_file"]}, env)
                runs[meth].append(run_worker("memory", mspec, env))
                data["results"][keys[meth]].update(own_processes_record(runs[meth]), own_cpu=cpu_name())
                save()
        (RESULTS / ".speed_exported.safetensors").unlink(missing_ok=True)
    for k, rec in data["results"].items():  # FLOPs counted by an older version of the counter
        if rec.get("flops_counter") != FLOPS_COUNTER:
            print(f"recount FLOPs {k} ...", flush=True)
            spec = {f: rec[f] for f in ("shape", "phase", "m", "threads", "method", "align") if f in rec}
            rec.update(run_worker("flops", spec, env))
            save()
    if args.profile_layers:
        from zootune.allocator import in_use

        for shape in shapes:  # keyed like the cells: "paper" (glibc), "paper/tcmalloc", ...
            key = shape if in_use() == "system" else f"{shape}/{in_use()}"
            if key in data["layer_profile"] and not args.force:
                continue
            print(f"profile layers at {key} ...", flush=True)
            data["layer_profile"][key] = [{**r, "cpu": cpu_name()} for r in
                                          profile_layers(shape, 5, args.threads, args.reps)]
            save()
    save()
    print((RESULTS / "speed.md").read_text())


if __name__ == "__main__":
    main()
