"""The shared supervised training loop (``fit``) and evaluation (``evaluate``).

One loop for every supervised task (the task object supplies forward, loss and metrics) and
every model (a plain ``nn.Module`` or a :class:`zootune.ZooModel`). What it guarantees:

* **Reproducible on CPU**: seeded, deterministic algorithms, and the batch of step ``s`` is a
  pure function of ``(seed, s)`` (:mod:`zootune.train.sampler`), random augmentation included.
* **Resumable exactly**: a checkpoint holds weights + buffers (BatchNorm statistics, the lite
  temporal ensemble), optimizer, scheduler, AMP scaler, RNG states and the step; resuming
  from it continues the very same trajectory, so a run killed with SIGKILL and resumed ends with
  the weights of an uninterrupted run.
* **Safe to interrupt**: Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a
  checkpoint and returns ``FitResult(interrupted=True)``.
* **DDP** when launched by torchrun: each rank gets its slice of the global batch, gradients are
  averaged, BatchNorm becomes SyncBatchNorm on CUDA, rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zootune.errors import ZootuneError
from zootune.train.checkpoint import (
    WEIGHTS,
    atomic_write_text,
    load_state,
    load_weights,
    read_latest,
    save_checkpoint,
    save_weights,
)
from zootune.train.distributed import DistInfo, all_reduce_sum, barrier, setup_distributed, teardown_distributed
from zootune.train.logger import RunLogger
from zootune.train.optim import build_optimizer, build_scheduler, param_groups
from zootune.train.sampler import StepBatchSampler


class TrainingError(ZootuneError, RuntimeError):
    """Training cannot go on (e.g. the loss diverged to NaN/inf)."""


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``model`` is the trained model (unwrapped from DDP, in eval mode; the best-on-validation
    weights when ``train.select: best``). ``metrics`` maps split -> metrics of that model
    (``{"val": {"loss", "accuracy"}, "test": {...}}``; test only when the run finished).
    """

    model: nn.Module
    metrics: dict[str, dict[str, float]]
    steps: int
    wall_time_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None
    best_val: dict[str, float] | None = None
    interrupted: bool = False
    out_dir: Path | None = None
    checkpoint: Path | None = None


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def amp_dtype(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = full precision).

    ``auto``: bf16 (or fp16 where bf16 is unsupported) on CUDA, full precision elsewhere.
    ``bf16`` also runs on CPU (CPU autocast); ``fp16`` needs CUDA.
    """
    if spec == "off":
        return None
    if device.type != "cuda":
        return torch.bfloat16 if spec == "bf16" else None
    if spec == "fp16":
        return torch.float16
    if spec == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _has_plain_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
               for m in model.modules())


def _rng_state(device: torch.device) -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    if "python" in st:
        v = st["python"]
        random.setstate((v[0], tuple(v[1]), v[2]))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


class _StopFlag:
    """Set by SIGINT/SIGTERM while training; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop right away
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _deterministic(enabled: bool):
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, task: Any, dataset: Dataset, *, batch_size: int = 256,
             device: torch.device | str | None = None, num_workers: int = 0,
             amp: torch.dtype | None = None, dist_info: DistInfo | None = None) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset`` (eval mode; the model's mode is restored after).

    Under DDP each rank evaluates every ``world_size``-th sample and the metric sums are
    all-reduced, so every rank returns the metrics of the whole set.
    """
    model = unwrap(model)
    info = dist_info or DistInfo()
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    indices = list(range(info.rank, len(dataset), info.world_size))
    subset = torch.utils.data.Subset(dataset, indices) if info.enabled else dataset
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    try:
        for batch in loader:
            batch = task.to_device(batch, device)
            with (torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()):
                out = task.forward(model, batch)
            for k, v in task.batch_metrics(out, batch).items():
                v = v.detach().double().to(device)
                sums[k] = sums[k] + v if k in sums else v
    finally:
        model.train(was_training)
    keys = sorted(sums)
    if info.enabled:
        vec = torch.stack([sums[k] for k in keys]) if keys else torch.zeros(0, dtype=torch.float64,
                                                                             device=device)
        all_reduce_sum(vec, info)
        sums = {k: vec[i] for i, k in enumerate(keys)}
    return task.summarize({k: float(v) for k, v in sums.items()})


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def fit(model: nn.Module, task: Any, data: Any, cfg: Any, out_dir: str | Path | None = None, *,
        resume: bool = False, run_info: dict[str, Any] | None = None, report: bool = True,
        on_log: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train ``model`` on ``data`` for ``cfg.train.steps`` steps; see the module docstring.

    Args:
        model: a plain ``nn.Module`` or a :class:`zootune.ZooModel` (already carrying the task
            head, see :meth:`zootune.tasks.Task.prepare_zoo`).
        task: a :class:`zootune.tasks.Task` (forward, loss, metrics, ``head_name``).
        data: a :class:`zootune.data.DataSplits` (``train``, optional ``val`` and ``test``).
        cfg: a :class:`zootune.config.Config` (``optim``, ``schedule``, ``train`` are used).
        out_dir: run folder for ``config.yaml``, ``metrics.jsonl``, TensorBoard, checkpoints,
            ``model.safetensors``, ``result.json`` and ``report.md``. ``None``: nothing is
            written (no checkpoints either) — handy for many short runs in a script.
        resume: continue from ``out_dir/checkpoints/latest.json`` if it exists.
        run_info: extra facts for the report (zoo names, method...).
        report: write ``report.md`` + pictures at the end (rank 0, ``out_dir`` set).
        on_log: called with every logged event (train/val/test dicts).
    """
    tc = cfg.train
    t_start = time.time()
    device = resolve_device(tc.device, 0)
    info = setup_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = resolve_device(tc.device, info.local_rank)
        torch.cuda.set_device(device)
    out = Path(out_dir) if out_dir is not None else None
    main = info.is_main
    if tc.threads:
        torch.set_num_threads(tc.threads)

    try:
        with _deterministic(tc.deterministic):
            return _fit(model, task, data, cfg, out, resume, run_info, report, on_log,
                        device, info, main, t_start)
    finally:
        teardown_distributed(info)


def _fit(model, task, data, cfg, out, resume, run_info, report, on_log, device, info, main,
         t_start) -> FitResult:
    tc = cfg.train
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(tc.seed)

    model = model.to(device)
    if info.enabled and tc.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    groups = param_groups(model, cfg.optim, task.head_name)
    optimizer = build_optimizer(groups, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, tc.steps, cfg.optim.lr)
    dtype = amp_dtype(tc.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    ckpt_root = out / "checkpoints" if out is not None else None
    start_step = 0
    best_step: int | None = None
    best_val: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    if resume and ckpt_root is not None:
        latest = read_latest(ckpt_root)
        if latest is not None:
            load_weights(model, latest / WEIGHTS)
            st = load_state(latest)
            optimizer.load_state_dict(st["optimizer"])
            scheduler.load_state_dict(st["scheduler"])
            if scaler is not None and st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
            _set_rng_state(st["rng"], device)
            start_step = int(st["step"])
            best_step = st.get("best_step")
            best_val = json.loads(st["best_val"]) if st.get("best_val") else None
            if main:
                print(f"resuming from {latest} (step {start_step})", flush=True)
        elif main:
            print(f"nothing to resume in {ckpt_root}: starting a new run", flush=True)

    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
        from zootune.config import save_config

        save_config(cfg, out / "config.yaml")
    logger = RunLogger(out if main else None, tensorboard=tc.tensorboard,
                       resume_step=start_step if start_step > 0 else None)
    if best_step is not None and tc.select == "best" and out is not None:
        best_file = out / "best.safetensors"
        if best_file.is_file():
            from safetensors.torch import load_file

            best_state = load_file(str(best_file))

    train_model: nn.Module = model
    if info.enabled:
        broadcast = _has_plain_batchnorm(model)  # SyncBN / no BN: buffers already agree
        import inspect
        import warnings

        kw = {}
        if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
            kw["forward_sync_buffers"] = broadcast
        else:
            kw["broadcast_buffers"] = broadcast
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, **kw)

    sampler = StepBatchSampler(len(data.train), tc.batch_size, seed=tc.seed, start_step=start_step,
                               num_steps=tc.steps, rank=info.rank, world_size=info.world_size)
    loader = DataLoader(data.train, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda")
    eval_bs = tc.eval_batch_size or max(tc.batch_size, 128)

    def run_eval(split: str, step: int) -> dict[str, float] | None:
        ds = getattr(data, split, None)
        if ds is None or len(ds) == 0:
            return None
        m = evaluate(model, task, ds, batch_size=eval_bs, device=device, amp=dtype,
                     num_workers=cfg.data.num_workers, dist_info=info)
        if main:
            logger.log(step, split, m)
            if on_log:
                on_log({"step": step, "split": split, **m})
        return m

    def better(m: dict[str, float]) -> bool:
        if best_val is None:
            return True
        k = task.primary_metric
        return m[k] > best_val[k] if task.higher_is_better else m[k] < best_val[k]

    def checkpoint(step: int) -> Path | None:
        if ckpt_root is None or not main:
            barrier(info)
            return None
        st = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(device),
            "best_step": best_step,
            "best_val": json.dumps(best_val) if best_val is not None else None,
            "world_size": info.world_size,
        }
        p = save_checkpoint(ckpt_root, step, model, st, keep=tc.keep_checkpoints)
        barrier(info)
        return p

    from tqdm.auto import tqdm

    bar = tqdm(total=tc.steps, initial=start_step, disable=not (main and tc.progress),
               dynamic_ncols=True, desc=getattr(cfg, "name", None) or "train", leave=True)
    window: dict[str, torch.Tensor] = {}
    win_samples = 0
    win_t0 = time.time()
    step = start_step
    interrupted = False
    last_ckpt: Path | None = None
    train_model.train()
    with _StopFlag() as stop:
        for batch in loader:
            batch = task.to_device(batch, device)
            with (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()):
                outputs = task.forward(train_model, batch)
                loss = task.loss(outputs, batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at step {step + 1} (diverged): "
                                    "lower optim.lr, set optim.grad_clip, or train.amp=off")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.optim.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            step += 1
            with torch.no_grad():
                for k, v in task.batch_metrics(outputs.detach() if torch.is_tensor(outputs) else outputs,
                                               batch).items():
                    v = v.detach().double()
                    window[k] = window[k] + v if k in window else v
            win_samples += task.batch_size(batch) * info.world_size
            bar.update(1)

            if step % tc.log_every == 0 or step == tc.steps:
                keys = sorted(window)
                vec = torch.stack([window[k] for k in keys])
                all_reduce_sum(vec, info)
                m = task.summarize({k: float(vec[i]) for i, k in enumerate(keys)})
                dt = max(time.time() - win_t0, 1e-9)
                m["samples_per_s"] = win_samples / dt
                m["lr"] = optimizer.param_groups[0]["lr"]
                if main:
                    logger.log(step, "train", m)
                    if on_log:
                        on_log({"step": step, "split": "train", **m})
                    post = {"loss": f"{m['loss']:.4f}"}
                    if "accuracy" in m:
                        post["acc"] = f"{m['accuracy']:.3f}"
                    post["samples/s"] = f"{m['samples_per_s']:.0f}"
                    bar.set_postfix(post, refresh=False)
                window, win_samples, win_t0 = {}, 0, time.time()

            if tc.eval_every and step % tc.eval_every == 0 and step != tc.steps:
                m = run_eval("val", step)
                if m is not None and better(m):
                    best_step, best_val = step, m
                    if tc.select == "best":
                        best_state = _remember_best(model, out if main else None)
                train_model.train()

            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step != tc.steps:
                last_ckpt = checkpoint(step)

            flag = torch.tensor([1.0 if stop.signal is not None else 0.0], device=device)
            if info.enabled:
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() > 0 and step < tc.steps:
                interrupted = True
                if main:
                    bar.write(f"interrupted at step {step}: writing a checkpoint")
                last_ckpt = checkpoint(step)
                break
    bar.close()

    metrics: dict[str, dict[str, float]] = {}
    if not interrupted:
        m = run_eval("val", step)
        if m is not None:
            metrics["val"] = m
            if better(m):
                best_step, best_val = step, m
                best_state = None  # the final weights are the best: nothing to restore
        last_ckpt = checkpoint(step)
        if tc.select == "best" and best_state is not None and best_step != step:
            unwrap(model).load_state_dict({k: v.to(device) for k, v in best_state.items()})
            metrics["val"] = best_val or {}
        t = run_eval("test", step)
        if t is not None:
            metrics["test"] = t
    costs = None
    if out is not None and report and not interrupted:
        # every rank runs the counting forward passes: in training mode a lite model all-reduces
        # its gate means, so rank 0 alone would wait for the others forever
        try:
            from zootune.report import example_batch, model_costs

            ex = example_batch(data)
            costs = model_costs(unwrap(model), ex) if ex is not None else None
        except Exception as exc:  # noqa: BLE001 - informative only
            costs = None
            if main:
                print(f"warning: cost counting failed: {exc.__class__.__name__}: {exc}", flush=True)
    model.eval()
    wall = time.time() - t_start
    result = FitResult(model=unwrap(model), metrics=metrics, steps=step, wall_time_s=wall,
                       history=logger.history, best_step=best_step, best_val=best_val,
                       interrupted=interrupted, out_dir=out, checkpoint=last_ckpt)
    logger.close()
    if out is not None and main and not interrupted:
        save_weights(unwrap(model), out / "model.safetensors",
                     metadata={"step": str(step), "select": tc.select})
        summary = {"steps": step, "wall_time_s": wall, "metrics": metrics, "best_step": best_step,
                   "best_val": best_val, "world_size": info.world_size}
        if run_info:
            summary["run"] = run_info
        atomic_write_text(out / "result.json", json.dumps(summary, indent=2, default=str))
        if report:
            try:
                from zootune.report import write_report

                write_report(out, result, cfg, task=task, data=data, run_info=run_info, costs=costs)
            except Exception as exc:  # noqa: BLE001 - a failed picture must not lose the run
                print(f"warning: report not written: {exc.__class__.__name__}: {exc}", flush=True)
    return result


def _remember_best(model: nn.Module, out: Path | None) -> dict[str, torch.Tensor]:
    """Keep a CPU copy of the current weights (and write ``best.safetensors`` when logging)."""
    m = unwrap(model)
    state = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
    if out is not None:
        save_weights(m, out / "best.safetensors")
    return state
