"""The trainer as a library: public training parts and the supervised loop built from them.

Owns the loop machinery: train state and checkpoints, the optimizer step (AMP, clipping,
divergence check), interrupt handling, logging, metric accumulation, DDP plumbing, and the
config -> zoo -> task -> method -> model assembly. It knows no method or task by name (the
registries in :mod:`zootune.methods` and :mod:`zootune.tasks` do) and must never import
:mod:`zootune.commands`.

Python API (the CLI ``zootune tune`` is a thin layer over it)::

    from zootune.config import build_config, load_config
    from zootune.train import build_run, fit, evaluate, run_config

    cfg = build_config({"recipe": "adam", "method": {"name": "zoo_tuning", "lite": True},
                        "zoo": {"spec": "demo"}, "data": {"name": "demo_target"},
                        "train": {"steps": 300, "batch_size": 32}})   # or load_config("x.yaml")
    res = run_config(cfg, "runs/x")          # every stage of the method, report, model file
    res.metrics["test"]["accuracy"]; res.model

    run = build_run(cfg)                     # or step by step: zoo -> data -> task -> model
    res = fit(run.model, run.task, run.data, cfg, "runs/x", method=run.method,
              run_info=run.info(), record=run.record())
    evaluate(res.model, run.task, run.data.test)                      # {"loss", "accuracy"}
    zootune.load("runs/x")                   # the trained model again, from its folder

Parts for loops of your own (an RL agent loop, say); ``examples/custom_loop.py`` is a complete,
tested one::

    from zootune.train import (TrainState, OptimizerStep, InterruptHandler, RunLogger,
                               MetricAccumulator, gate_tracking)

    state = TrainState(model=net, optimizer=opt, extras={"env_steps": 0})
    if (latest := TrainState.latest("run/checkpoints")) is not None:
        state.load(latest)                   # weights, optimizer, RNG, step, extras
    step_fn = OptimizerStep(opt, grad_clip=10.0)
    logger = RunLogger("run", resume_step=state.step or None)
    with InterruptHandler() as stop:
        while state.step < total and not stop.requested:
            with gate_tracking(net, False):  # acting: no gate statistics
                action = act(net, obs)
            loss = td_loss(net, batch)       # a training forward: statistics on by default
            step_fn(loss); state.step += 1
            if state.step % 1000 == 0:
                step_fn.check(); state.save("run/checkpoints")
                logger.log(state.step, "train", {"loss": float(loss.detach())})

Errors a user can fix are :class:`zootune.errors.ZootuneError` subclasses (``ConfigError``,
``DataError``, ``CheckpointError``, ``TrainingError`` for a diverged loss): one line in the CLI.
"""

from zootune.train.build import Run, build_run, build_structure, load_run_zoo, zoo_specs
from zootune.train.interrupt import InterruptHandler
from zootune.train.logger import RunLogger
from zootune.train.loop import FitResult, deterministic, evaluate, fit, gate_tracking, to_device, unwrap
from zootune.train.metrics import MetricAccumulator
from zootune.train.runner import run_config
from zootune.train.state import TrainState, rng_state, set_rng_state
from zootune.train.step import OptimizerStep, TrainingError, amp_dtype, autocast, resolve_device

__all__ = ["FitResult", "InterruptHandler", "MetricAccumulator", "OptimizerStep", "Run",
           "RunLogger", "TrainState", "TrainingError", "amp_dtype", "autocast", "build_run",
           "build_structure", "deterministic", "evaluate", "fit", "gate_tracking", "load_run_zoo",
           "resolve_device", "rng_state", "run_config", "set_rng_state", "to_device", "unwrap",
           "zoo_specs"]
