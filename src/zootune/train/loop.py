"""The shared supervised training loop (``fit``) and evaluation (``evaluate``).

One loop for every task (the task supplies forward, loss and metrics) and every method (the
method supplies the model, optionally its own loss and extra trainable modules), built from the
public parts of :mod:`zootune.train`: :class:`~zootune.train.state.TrainState` (checkpoints),
:class:`~zootune.train.step.OptimizerStep` (AMP, clipping, divergence check),
:class:`~zootune.train.interrupt.InterruptHandler`, :class:`~zootune.train.logger.RunLogger`
and :class:`~zootune.train.metrics.MetricAccumulator`. What it guarantees:

* **Reproducible**: seeded, deterministic algorithms, and the batch of step ``s`` is a pure
  function of ``(seed, s)`` (:mod:`zootune.train.sampler`), random augmentation included.
* **Resumable exactly**: a checkpoint holds weights + buffers (BatchNorm statistics, the lite
  temporal ensemble), optimizer, scheduler, AMP scaler, RNG states and the step; resuming from
  it continues the very same trajectory.
* **Safe to interrupt**: Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a
  checkpoint and returns ``FitResult(interrupted=True)``.
* **GPU-ready**: metrics accumulate on the device; the host syncs only at log intervals,
  evaluations and checkpoints (not every step). Under DDP the stop request is agreed on at log
  intervals.
* **DDP** when launched by torchrun: each rank gets its slice of the global batch, gradients are
  averaged, BatchNorm becomes SyncBatchNorm on CUDA, rank 0 alone writes files.
* **Gate statistics** of Zoo-Tuning models are recorded by the training forwards only
  (``ZooModel.track_gates``); cost counting and other extra forwards leave them untouched.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zootune.atomic import atomic_write_text
from zootune.data.sample import collate_samples
from zootune.train.checkpoint import save_module
from zootune.train.distributed import (
    DistInfo,
    average_gradients,
    barrier,
    setup_distributed,
    teardown_distributed,
)
from zootune.train.interrupt import InterruptHandler
from zootune.train.logger import RunLogger
from zootune.train.metrics import MetricAccumulator
from zootune.train.optim import build_optimizer, build_scheduler, param_groups
from zootune.train.sampler import StepBatchSampler
from zootune.train.state import TrainState
from zootune.train.step import (
    OptimizerStep,
    TrainingError,
    amp_dtype,
    autocast,
    make_scaler,
    resolve_device,
)

__all__ = ["FitResult", "TrainingError", "evaluate", "fit", "to_device", "unwrap"]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``model`` is the trained model (unwrapped from DDP, in eval mode; the best-on-validation
    weights when ``train.select: best``). ``metrics`` maps split -> metrics of that model
    (``{"val": {...}, "test": {...}}``; test only when the run finished).
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
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device`` (non-blocking from pinned memory)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def _has_plain_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
               for m in model.modules())


def gate_tracking(model: nn.Module, mode: bool):
    """``model.track_gates(mode)`` as a context manager; a no-op for models without gates."""
    fn = getattr(unwrap(model), "track_gates", None)
    return fn(mode) if callable(fn) else contextlib.nullcontext()


@contextlib.contextmanager
def deterministic(enabled: bool):
    """Deterministic algorithms (warn-only) and no cuDNN autotuning while active."""
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


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    broadcast = _has_plain_batchnorm(model)  # SyncBN / no BN: buffers already agree
    kw = {}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
        kw["forward_sync_buffers"] = broadcast
    else:
        kw["broadcast_buffers"] = broadcast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **kw)


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, task: Any, dataset: Dataset, *, batch_size: int = 256,
             device: torch.device | str | None = None, num_workers: int = 0,
             amp: torch.dtype | None = None, dist_info: DistInfo | None = None) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset`` (eval mode; the model's mode is restored after).

    Under DDP each rank evaluates every ``world_size``-th sample and the totals are reduced,
    so every rank returns the metrics of the whole set.
    """
    model = unwrap(model)
    info = dist_info or DistInfo()
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    indices = list(range(info.rank, len(dataset), info.world_size))
    subset = torch.utils.data.Subset(dataset, indices) if info.enabled else dataset
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_samples)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(task.metric_reductions)
    try:
        for batch in loader:
            batch = to_device(batch, device)
            with autocast(device, amp):
                out = task.forward(model, batch)
            acc.add(task.batch_metrics(out, batch))
    finally:
        model.train(was_training)
    return task.summarize(acc.reduce(info))


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def fit(model: nn.Module, task: Any, data: Any, cfg: Any, out_dir: str | Path | None = None, *,
        method: Any = None, resume: bool = False, run_info: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None, report: bool = True,
        on_log: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train ``model`` on ``data`` for ``cfg.train.steps`` steps; see the module docstring.

    Args:
        model: a plain ``nn.Module`` or a :class:`zootune.ZooModel` already carrying the task
            head (what :meth:`zootune.methods.Method.build` returns).
        task: a bound :class:`zootune.tasks.Task` (forward, loss, metrics, ``head_name``).
        data: a :class:`zootune.data.DataSplits` (``train``, optional ``val`` and ``test``).
        cfg: a :class:`zootune.config.Config` (``optim``, ``schedule``, ``train``,
            ``data.num_workers`` are used).
        out_dir: run folder for ``config.yaml``, ``metrics.jsonl``, TensorBoard, checkpoints,
            ``model.safetensors``, ``result.json`` and ``report.md``. ``None``: nothing is
            written (no checkpoints either) — handy for many short runs in a script.
        method: the :class:`zootune.methods.Method` (its loss and extra modules); default the
            one ``cfg.method`` names.
        resume: continue from ``out_dir/checkpoints/latest.json`` if it exists.
        run_info: extra facts for the report (zoo names, method...).
        record: what the run's model files carry to be rebuilt by :func:`zootune.load`
            (:meth:`zootune.train.Run.record`).
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
    if method is None:
        from zootune.methods import build_method

        method = build_method(cfg.method)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    loop = _SupervisedLoop(model, task, data, cfg, Path(out_dir) if out_dir is not None else None,
                           method, info, device, run_info, record, on_log)
    try:
        with deterministic(tc.deterministic):
            return loop.run(resume, report, t_start)
    finally:
        teardown_distributed(info)


class _SupervisedLoop:
    """The pieces of one :func:`fit` call (kept together so that each step reads simply)."""

    def __init__(self, model, task, data, cfg, out, method, info, device, run_info, record, on_log):
        self.task, self.data, self.cfg, self.out, self.method = task, data, cfg, out, method
        self.info, self.device, self.on_log = info, device, on_log
        self.run_info = run_info
        self.record = dict(record or {})
        self.main = info.is_main
        tc = cfg.train
        torch.manual_seed(tc.seed)
        random.seed(tc.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(tc.seed)
        model = model.to(device)
        if info.enabled and tc.sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        # configured fine-tuning regularisers (L2-SP, DELTA, BSS): captured from the model as it
        # is now, i.e. its starting weights, and added to whatever loss the method returns
        from zootune.methods.regularizers import build_regularizers

        self.regularizers = build_regularizers(getattr(cfg, "regularizers", ()), model, task, data)
        extras = {k: m.to(device) for k, m in method.extra_modules(model).items()}
        groups = param_groups(model, cfg.optim, task.head_name)
        for name, m in extras.items():
            ps = [p for p in m.parameters() if p.requires_grad]
            if ps:
                groups.append({"name": name, "params": ps, "lr": cfg.optim.lr,
                               "weight_decay": cfg.optim.weight_decay})
        optimizer = build_optimizer(groups, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.schedule, tc.steps, cfg.optim.lr)
        self.amp = amp_dtype(tc.amp, device)
        scaler = make_scaler(self.amp, device)
        self.state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                extra_modules=extras, device=device)
        extra_params = [p for m in extras.values() for p in m.parameters() if p.requires_grad]
        sync = (lambda: average_gradients(extra_params, info)) if info.enabled and extra_params else None
        self.opt_step = OptimizerStep(optimizer, scheduler=scheduler, scaler=scaler,
                                      grad_clip=cfg.optim.grad_clip, after_backward=sync)
        self.ckpt_root = out / "checkpoints" if out is not None else None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.start_step = 0

    # ---- small pieces -----------------------------------------------------------------------

    @property
    def best_step(self) -> int | None:
        return self.state.extras.get("best_step")

    @property
    def best_val(self) -> dict[str, float] | None:
        return self.state.extras.get("best_val")

    def log(self, step: int, split: str, m: dict[str, Any]) -> None:
        if self.main:
            self.logger.log(step, split, m)
            if self.on_log:
                self.on_log({"step": step, "split": split, **m})

    def run_eval(self, split: str, step: int) -> dict[str, float] | None:
        ds = getattr(self.data, split, None)
        if ds is None or len(ds) == 0:
            return None
        tc = self.cfg.train
        m = evaluate(self.model, self.task, ds, batch_size=tc.eval_batch_size or max(tc.batch_size, 128),
                     device=self.device, amp=self.amp, num_workers=self.cfg.data.num_workers,
                     dist_info=self.info)
        self.log(step, split, m)
        return m

    def better(self, m: dict[str, float]) -> bool:
        best = self.best_val
        if best is None:
            return True
        k = self.task.primary_metric
        return m[k] > best[k] if self.task.higher_is_better else m[k] < best[k]

    def checkpoint(self) -> Path | None:
        self.opt_step.check(self.start_step)  # never save diverged weights
        if self.ckpt_root is None or not self.main:
            barrier(self.info)
            return None
        self.state.extras["world_size"] = self.info.world_size
        p = self.state.save(self.ckpt_root, keep=self.cfg.train.keep_checkpoints,
                            metadata={"run": self.record} if self.record else None)
        barrier(self.info)
        return p

    def remember_best(self) -> None:
        m = unwrap(self.model)
        self.best_state = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
        if self.out is not None and self.main:
            save_module(m, self.out / "best.safetensors",
                        metadata={"step": self.state.step, "run": self.record})

    # ---- the loop ---------------------------------------------------------------------------

    def resume(self) -> None:
        latest = TrainState.latest(self.ckpt_root) if self.ckpt_root is not None else None
        if latest is None:
            if self.main and self.ckpt_root is not None:
                print(f"nothing to resume in {self.ckpt_root}: starting a new run", flush=True)
            return
        self.state.load(latest)
        if self.main:
            print(f"resuming from {latest} (step {self.state.step})", flush=True)
        if self.best_step is not None and self.cfg.train.select == "best" and self.out is not None:
            best_file = self.out / "best.safetensors"
            if best_file.is_file():
                from safetensors.torch import load_file

                self.best_state = load_file(str(best_file))

    def run(self, resume: bool, report: bool, t_start: float) -> FitResult:
        cfg, tc, task, info = self.cfg, self.cfg.train, self.task, self.info
        if resume:
            self.resume()
        start_step = self.start_step = self.state.step
        if self.out is not None and self.main:
            from zootune.config import save_config

            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
        self.logger = RunLogger(self.out if self.main else None, tensorboard=tc.tensorboard,
                                resume_step=start_step if start_step > 0 else None)
        sampler = StepBatchSampler(len(self.data.train), tc.batch_size, seed=tc.seed,
                                   start_step=start_step, num_steps=tc.steps, rank=info.rank,
                                   world_size=info.world_size)
        loader = DataLoader(self.data.train, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                            pin_memory=self.device.type == "cuda", collate_fn=collate_samples)

        def first_batch() -> dict[str, Any]:
            return to_device(next(iter(loader)), self.device)

        with autocast(self.device, self.amp):  # e.g. Zoo-Tuning fixes its kernels here
            self.method.prepare_training(self.model, first_batch, task, self.state.extras)
        train_model = _wrap_ddp(self.model, self.device) if info.enabled else self.model
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start_step, disable=not (self.main and tc.progress),
                   dynamic_ncols=True, desc=cfg.name or "train", leave=True)
        window = MetricAccumulator(task.metric_reductions)
        win_samples, win_t0 = 0, time.time()
        interrupted = False
        last_ckpt: Path | None = None
        train_model.train()
        with InterruptHandler() as stop, gate_tracking(self.model, True):
            for batch in loader:
                batch = to_device(batch, self.device)
                with autocast(self.device, self.amp):
                    loss, outputs = self.method.loss(train_model, batch, task)
                    if self.regularizers is not None:
                        loss = loss + self.regularizers(batch)
                self.opt_step(loss)
                self.state.step += 1
                step = self.state.step
                with torch.no_grad():
                    out_d = outputs.detach() if torch.is_tensor(outputs) else outputs
                    window.add(task.batch_metrics(out_d, batch))
                win_samples += task.batch_size(batch) * info.world_size
                bar.update(1)

                log_now = step % tc.log_every == 0 or step == tc.steps
                if log_now:
                    self.opt_step.check(start_step)
                    m = task.summarize(window.reduce(info))
                    m["samples_per_s"] = win_samples / max(time.time() - win_t0, 1e-9)
                    m["lr"] = self.state.optimizer.param_groups[0]["lr"]
                    self.log(step, "train", m)
                    bar.set_postfix_str(task.summary_line({k: v for k, v in m.items() if k != "lr"}),
                                        refresh=False)
                    window.reset()
                    win_samples, win_t0 = 0, time.time()

                if tc.eval_every and step % tc.eval_every == 0 and step != tc.steps:
                    m = self.run_eval("val", step)
                    if m is not None and self.better(m):
                        self.state.extras.update(best_step=step, best_val=m)
                        if tc.select == "best":
                            self.remember_best()
                    train_model.train()

                if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step != tc.steps:
                    last_ckpt = self.checkpoint()

                if self._stop_requested(stop, log_now) and step < tc.steps:
                    interrupted = True
                    if self.main:
                        bar.write(f"interrupted at step {step}: writing a checkpoint")
                    last_ckpt = self.checkpoint()
                    break
        bar.close()
        self.opt_step.check(start_step)
        return self.finish(interrupted, last_ckpt, report, t_start)

    def _stop_requested(self, stop: InterruptHandler, log_now: bool) -> bool:
        """A single process reads its flag every step; DDP ranks agree at log steps only."""
        if not self.info.enabled:
            return stop.requested
        if not log_now:
            return False
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def finish(self, interrupted: bool, last_ckpt: Path | None, report: bool,
               t_start: float) -> FitResult:
        cfg, tc, step = self.cfg, self.cfg.train, self.state.step
        model = unwrap(self.model)
        metrics: dict[str, dict[str, float]] = {}
        if not interrupted:
            m = self.run_eval("val", step)
            if m is not None:
                metrics["val"] = m
                if self.better(m):
                    self.state.extras.update(best_step=step, best_val=m)
                    if tc.select == "best":  # best.safetensors must hold these final weights
                        self.remember_best()
                    self.best_state = None  # the final weights are the best: nothing to restore
            last_ckpt = self.checkpoint()
            if tc.select == "best" and self.best_state is not None and self.best_step != step:
                model.load_state_dict({k: v.to(self.device) for k, v in self.best_state.items()})
                metrics["val"] = self.best_val or {}
            t = self.run_eval("test", step)
            if t is not None:
                metrics["test"] = t
        costs = None
        if self.out is not None and report and not interrupted:
            # every rank runs the counting forward passes: in training mode a lite model
            # all-reduces its gate means, so rank 0 alone would wait for the others forever
            try:
                from zootune.report import example_batch, model_costs

                ex = example_batch(self.data, self.task.input_field)
                costs = model_costs(model, ex) if ex is not None else None
            except Exception as exc:  # noqa: BLE001 - informative only
                if self.main:
                    print(f"warning: cost counting failed: {exc.__class__.__name__}: {exc}", flush=True)
        model.eval()
        wall = time.time() - t_start
        result = FitResult(model=model, metrics=metrics, steps=step, wall_time_s=wall,
                           history=self.logger.history, best_step=self.best_step,
                           best_val=self.best_val, interrupted=interrupted, out_dir=self.out,
                           checkpoint=last_ckpt, extra_modules=self.state.extra_modules)
        self.logger.close()
        if self.out is not None and self.main and not interrupted:
            save_module(model, self.out / "model.safetensors",
                        metadata={"step": step, "select": tc.select, "run": self.record})
            summary = {"steps": step, "wall_time_s": wall, "metrics": metrics,
                       "best_step": self.best_step, "best_val": self.best_val,
                       "world_size": self.info.world_size}
            if "kernels" in self.state.extras:
                summary["kernels"] = self.state.extras["kernels"]
            if self.run_info:
                summary["run"] = self.run_info
            atomic_write_text(self.out / "result.json", json.dumps(summary, indent=2, default=str))
            if report:
                try:
                    from zootune.report import write_report

                    write_report(self.out, result, cfg, task=self.task, data=self.data,
                                 run_info=self.run_info, costs=costs, method=self.method)
                except Exception as exc:  # noqa: BLE001 - a failed picture must not lose the run
                    print(f"warning: report not written: {exc.__class__.__name__}: {exc}", flush=True)
        return result
