"""The configuration of an RL run: one validated pydantic model, like :mod:`zootune.config`.

An RL run (``zootune rl train-source`` / ``zootune rl tune``) is described by :class:`RLConfig`
with four sections; every Data-Efficient Rainbow (DER; van Hasselt, Hessel & Aslanides,
NeurIPS 2019) setting is a key with the DER default, so a config file only names what differs:

* ``env``: the Atari game and its preprocessing (gymnasium's ``AtariPreprocessing`` and
  ``FrameStackObservation`` over ALE ``v5`` environments);
* ``agent``: the DER agent (network, C51, n-step, prioritized replay, optimiser, schedule);
* ``method``: what the online network is built from (``scratch``, ``finetune``,
  ``zoo_tuning``, ``zoo_tuning_lite``, ``knowledge_flow``) and the source agents;
* ``run``: budget, seed, evaluation, logging, checkpoints, threads.

Loading works as for supervised runs: a YAML file (a path or the name of a config shipped in
``zootune/configs/rl/``), then ``key=value`` overrides with dotted keys; unknown keys and wrong
types are one :class:`zootune.config.ConfigError` line naming the key and the valid ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from zootune.config import (
    ConfigError,
    Section,
    _format_validation_error,
    apply_overrides,
    read_yaml,
)

#: The methods ``zootune rl tune --method`` accepts.
RL_METHODS = ("scratch", "finetune", "zoo_tuning", "zoo_tuning_lite", "knowledge_flow")


class EnvConfig(Section):
    """The game and the standard Atari preprocessing (Machado et al. 2018 naming).

    ``repeat_action_probability`` (sticky actions) defaults to 0.0, not ALE v5's 0.25: the
    Atari-100k results DER and the paper report were obtained without sticky actions, so the
    numbers are comparable only so. ``full_action_space`` defaults to False (each game's
    minimal action set, as DER): the head is new on every target game anyway.
    """

    game: str = "Alien"
    #: the ALE environment version; ``ALE/<game>-v5`` (ale-py >= 0.9; ROMs ship inside ale-py)
    ale_version: Literal["v5"] = "v5"
    repeat_action_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    full_action_space: bool = False
    frame_skip: int = Field(default=4, ge=1)       # action repeat; max-pool over the last two
    screen_size: int = Field(default=84, ge=8)
    frame_stack: int = Field(default=4, ge=1)
    noop_max: int = Field(default=30, ge=0)        # up to 30 no-op actions after each reset
    #: frames per episode before truncation: 108,000 frames = 27,000 agent steps
    max_episode_frames: int = Field(default=108_000, ge=1)
    #: a lost life ends the n-step return (no bootstrap across it); the episode goes on
    life_loss_terminal: bool = True
    #: rewards are clipped to [-1, 1] for training (returns are logged unclipped)
    clip_rewards: bool = True


class AgentConfig(Section):
    """Data-Efficient Rainbow. Defaults: DER (van Hasselt et al. 2019, Table 1) with the
    paper's Adam learning rate (1e-4; DER's eps 1.5e-4)."""

    # network (the paper's A.1: two 5x5 stride-5 convs, two noisy linear layers of 256)
    channels: tuple[int, int] = (32, 64)
    kernel_size: int = Field(default=5, ge=1)
    stride: int = Field(default=5, ge=1)
    hidden: int = Field(default=256, ge=1)
    dueling: bool = True
    noisy: bool = True
    noisy_sigma0: float = Field(default=0.1, ge=0.0)
    # distributional RL (C51)
    atoms: int = Field(default=51, ge=2)
    v_min: float = -10.0
    v_max: float = 10.0
    # returns
    n_step: int = Field(default=20, ge=1)
    discount: float = Field(default=0.99, ge=0.0, le=1.0)
    double_q: bool = True
    # prioritized replay
    replay_capacity: int = Field(default=100_000, ge=100)
    priority_alpha: float = Field(default=0.5, ge=0.0)
    priority_beta_start: float = Field(default=0.4, ge=0.0, le=1.0)
    priority_beta_end: float = Field(default=1.0, ge=0.0, le=1.0)
    priority_eps: float = Field(default=1e-6, gt=0.0)
    # learning
    batch_size: int = Field(default=32, ge=1)
    learning_starts: int = Field(default=1600, ge=0)
    update_every: int = Field(default=1, ge=1)          # agent steps per update
    target_update: int = Field(default=2000, ge=1)      # updates between target copies
    lr: float = Field(default=1e-4, gt=0.0)
    adam_eps: float = Field(default=1.5e-4, gt=0.0)
    grad_clip: float | None = Field(default=10.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> AgentConfig:
        if self.v_max <= self.v_min:
            raise ValueError(f"agent.v_max ({self.v_max}) must be above agent.v_min ({self.v_min})")
        return self


ConvKernel = Literal["auto", "grouped", "unfold", "loop", "stacked"]


class MethodConfig(Section):
    """What the online network starts from.

    * ``scratch``: a randomly initialised DER network (no transfer);
    * ``finetune``: the two convs of source ``source`` (index or game name), the rest new;
    * ``zoo_tuning``: the two convs of every source become AdaAgg layers (per-sample gates,
      channel alignment), the rest new (paper §4.1, A.1);
    * ``zoo_tuning_lite``: the same with lite gates; the final model is exported to a plain DER
      network (Eq. 5);
    * ``knowledge_flow``: a student DER network fed every source's features after ``layers``'
      activations through learned 1x1 transforms, the dependence annealed to 0 (Liu et al.
      2019; :mod:`zootune.rl.knowledge_flow`); the final model is the plain student.

    ``sources``: model files written by ``zootune rl train-source`` (any zootune model file of
    a DER network with the same conv shapes).
    """

    name: Literal["scratch", "finetune", "zoo_tuning", "zoo_tuning_lite", "knowledge_flow"] = "scratch"
    sources: list[str] = Field(default_factory=list)
    source: int | str = 0
    #: the layers the sources share: aggregated (zoo_tuning) or fed after their ReLU (knowledge_flow)
    layers: list[str] = Field(default_factory=lambda: ["conv1", "conv2"])
    align: bool | Literal["default"] = "default"
    gate: Literal["sigmoid", "normalized", "softmax"] = "normalized"
    gate_init: Literal["uniform", "kaiming", "default"] = "uniform"
    #: per-sample conv kernel, one for every aggregated conv or ``{layer: kernel}``; a fixed one
    #: keeps resumed runs bit-identical (``auto`` times them). The default is the fastest exact
    #: pair for DER's shapes here (benchmarks/results/rl_speed.md): ``unfold`` for conv1 (its 5x5
    #: stride-5 patches do not overlap, so im2col is a reshape, and its input needs no gradient:
    #: per-sample weights are cheaper than ``stacked``'s m-fold weight gradient) and ``stacked``
    #: for conv2 (one conv with both sources' weights stacked, no per-sample weights).
    kernel: ConvKernel | dict[str, ConvKernel] = Field(
        default_factory=lambda: {"conv1": "unfold", "conv2": "stacked"})
    #: recompute in backward instead of keeping (per-sample weights: B x |W|, 6.5 MB at batch 32
    #: here; ``stacked``: the m un-combined conv outputs, 2.6 MB)
    recompute: bool = False
    #: knowledge_flow: ``scratch`` (Liu et al.'s RL setting) or the source whose convs the student starts from
    student: int | str = "scratch"
    #: knowledge_flow: the teachers' share of each fed layer at step 0 ...
    beta: float = Field(default=0.5, ge=0.0, le=1.0)
    #: ... falling linearly to exactly 0 at this fraction of run.steps (no teacher is run after)
    anneal: float = Field(default=0.5, gt=0.0, le=1.0)


class RunConfig(Section):
    """Budget, seed, evaluation, logging and checkpoints."""

    steps: int = Field(default=100_000, ge=1)           # agent steps (x frame_skip frames)
    seed: int = 0
    eval_every: int = Field(default=20_000, ge=0)       # 0: only at the end
    eval_episodes: int = Field(default=10, ge=1)
    log_every: int = Field(default=1000, ge=1)
    checkpoint_every: int = Field(default=10_000, ge=0)  # 0: only at the end / on interrupt
    threads: int = Field(default=1, ge=1)               # torch intra-op threads
    #: flush denormal numbers to zero on the CPU (``torch.set_flush_denormal``) for the whole run.
    #: Adam moments of weights whose gradients stay (near) zero decay into the denormal range
    #: (seen in the noisy head layers); a Zoo-Tuning run here had 390k of them at step 40k, and
    #: its fused Adam step took 12.0 ms instead of 1.3 ms with them flushed, slowing the run
    #: from ~19 to ~14 agent steps/s
    #: (``benchmarks/results/rl_speed.md``, ninth session). Values below 1.2e-38 become 0.
    flush_denormal: bool = True
    device: str = "cpu"
    tensorboard: bool = True
    #: feed the network channels-last (NHWC) observations: speed only, the same function
    #: (up to rounding); ``None``: by method, see :func:`input_channels_last`
    channels_last: bool | None = None


class RLConfig(Section):
    """A whole RL run (see the module docstring)."""

    env: EnvConfig = Field(default_factory=EnvConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def input_channels_last(cfg: RLConfig) -> bool:
    """Whether the run feeds its networks channels-last observations (``run.channels_last``,
    or by method when it is ``None``): every method but per-sample ``zoo_tuning`` — its
    per-sample kernels read NCHW observations faster, while the plain convolutions of the others
    (oneDNN) run faster channels-last. ``benchmarks/rl_speed.py`` times every method in both
    layouts (``benchmarks/results/rl_speed.md``)."""
    if cfg.run.channels_last is not None:
        return cfg.run.channels_last
    return cfg.method.name != "zoo_tuning"


def build_rl_config(raw: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> RLConfig:
    """Validate ``raw`` + dotted ``overrides``; one :class:`ConfigError` line on a problem."""
    data = apply_overrides(dict(raw or {}), overrides)
    try:
        return RLConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, RLConfig)) from None


def shipped_rl_configs() -> dict[str, Path]:
    """``{name: path}`` of the RL configs shipped in ``zootune/configs/rl/``."""
    folder = Path(__file__).resolve().parent.parent / "configs" / "rl"
    return {f.stem: f for f in sorted(folder.glob("*.yaml"))}


def resolve_rl_config(path: str | Path) -> Path:
    """A config file path, or the name of a shipped RL config (``der``, ``grid_paper``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = shipped_rl_configs()
    if p.stem in shipped and len(p.parts) == 1:
        return shipped[p.stem]
    raise ConfigError(f"RL config {str(p)!r} is neither a file nor a shipped config "
                      f"({', '.join(shipped)})")


def load_rl_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RLConfig:
    """Load an RL config file (default: the shipped ``der``) and apply overrides."""
    raw = read_yaml(resolve_rl_config(path if path is not None else "der"))
    return build_rl_config(raw, overrides)
