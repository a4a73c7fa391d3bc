"""One validated configuration for every zootune run (``zootune tune CONFIG.yaml``).

A run is described by a YAML file with the sections of :class:`Config` (``zoo``, ``zoo_tune``,
``method``, ``task``, ``data``, ``optim``, ``schedule``, ``train``). It is loaded in three layers:

1. the *preset* named by ``preset:`` (e.g. ``paper_classification``, the recipe of the paper's
   §4.2: SGD lr 0.01, momentum 0.9, x0.1 every 6k of 15k iterations, batch 48);
2. the YAML file itself, deep-merged over the preset;
3. ``key=value`` overrides from the command line with dotted keys (``optim.lr=0.003``), whose
   values are parsed as YAML scalars (``true``, ``1e-3``, ``[a, b]``).

The result is validated by pydantic with ``extra="forbid"``: a misspelt key or a wrong type is
reported as one :class:`ConfigError` line that names the bad key and lists the valid ones.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zootune.errors import ZootuneError


class ConfigError(ZootuneError, ValueError):
    """A configuration file or override is malformed, has an unknown key or a wrong type."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


class ZooConfig(_Section):
    """Where the source models come from.

    Either ``spec`` (a zoo spec or preset understood by :func:`zootune.zoo.load_zoo`, when that
    module is installed), or ``builder`` (``"torchvision:resnet18"``, ``"timm:resnet18"`` or an
    import path ``"package.module:function"``) plus ``checkpoints`` (local ``.safetensors`` /
    ``.pt`` state dicts, one per source). ``random_sources: N`` builds N randomly initialised
    sources (seeds ``seed, seed+1, ...``): only for smoke tests and debugging.
    """

    spec: Any = None
    builder: str | None = None
    builder_kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoints: list[str] = Field(default_factory=list)
    names: list[str] | None = None
    random_sources: int | None = Field(default=None, ge=1)
    seed: int = 0
    strict: bool = True
    # passed to zootune.zoo.load_zoo with ``spec``
    strip_heads: bool | None = None
    offline: bool | None = None
    checkpoint_dir: str | None = None


class ZooTuneConfig(_Section):
    """Options passed to :func:`zootune.zoo_tune` (see its docstring for their meaning)."""

    layers: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    align: bool | Literal["default", "paper"] | list[str] = "default"
    lite: bool = False
    rest: Literal["average"] | int = "average"
    gate: Literal["sigmoid", "normalized", "softmax"] = "normalized"
    gate_init: Literal["uniform", "kaiming", "default"] = "uniform"
    gate_hidden: int | None = Field(default=None, ge=1)
    te_momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    kernel: str = "auto"
    recompute: bool = True


class TaskConfig(_Section):
    """What is learned: the task kind and its head."""

    name: Literal["classification"] = "classification"
    num_classes: int | None = Field(default=None, ge=1)
    head: str | None = None  # module name of the source classifier to replace (auto if None)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)


class DataConfig(_Section):
    """The target data set (see :mod:`zootune.data`)."""

    name: str = "digits"  # digits | image_folder | any name registered in zootune.data
    root: str | None = None
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    labels_per_class: int | None = Field(default=None, ge=1)
    image_size: int | None = Field(default=None, ge=1)
    channels: int | None = Field(default=None, ge=1)
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: bool = True
    num_workers: int = Field(default=0, ge=0)
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(_Section):
    """Optimiser. ``head_lr``/``gate_lr``/``align_lr`` default to ``lr`` when unset."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0.0)
    head_lr: float | None = Field(default=None, gt=0.0)
    gate_lr: float | None = Field(default=None, gt=0.0)
    align_lr: float | None = Field(default=None, gt=0.0)
    grad_clip: float | None = Field(default=None, gt=0.0)


class ScheduleConfig(_Section):
    """Learning-rate schedule, stepped once per iteration."""

    name: Literal["constant", "step", "multistep", "cosine"] = "step"
    step_size: int = Field(default=6000, ge=1)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0.0)


class TrainConfig(_Section):
    """The loop: budget, batch, logging, checkpoints, devices."""

    steps: int = Field(default=15000, ge=1)
    batch_size: int = Field(default=48, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    eval_every: int = Field(default=500, ge=0)
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=1000, ge=0)
    keep_checkpoints: int = Field(default=2, ge=1)
    select: Literal["last", "best"] = "last"
    seed: int = 0
    deterministic: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    sync_bn: bool = True
    progress: bool = True
    tensorboard: bool = True
    threads: int | None = Field(default=None, ge=1)

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_bool(cls, v: Any) -> Any:
        # YAML reads a bare ``off`` / ``on`` as a boolean
        if isinstance(v, bool):
            return "auto" if v else "off"
        return v


class Config(_Section):
    """A whole run. Every section has defaults; ``preset`` picks a recipe for them."""

    preset: str | None = None
    name: str | None = None
    out_dir: str | None = None
    method: Literal["zoo_tuning", "zoo_tuning_lite", "finetune", "average_aggregation"] = (
        "zoo_tuning"
    )
    source: int = Field(default=0, ge=0)  # which source the ``finetune`` method starts from
    zoo: ZooConfig = Field(default_factory=ZooConfig)
    zoo_tune: ZooTuneConfig = Field(default_factory=ZooTuneConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; valid presets: {', '.join(sorted(PRESETS))}")
        return v

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict of every value (defaults included)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

#: Recipes that a config can start from with ``preset: NAME``. The YAML and overrides win.
PRESETS: dict[str, dict[str, Any]] = {
    # Paper §4.2: SGD lr 0.01, momentum 0.9, 15k iterations, lr x0.1 every 6k, batch 48.
    "paper_classification": {
        "task": {"name": "classification"},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0},
        "schedule": {"name": "step", "step_size": 6000, "gamma": 0.1},
        "train": {"steps": 15000, "batch_size": 48},
    },
    # Adam, as the paper uses for facial landmarks (lr 1e-4) and RL; a constant-then-step
    # schedule at 2/3 of the budget is a sensible default for small target sets.
    "adam": {
        "optim": {"name": "adam", "lr": 1e-4, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
    },
}


# --------------------------------------------------------------------------------------------
# Loading, merging, overrides, validation
# --------------------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``; nested mappings merge, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.001)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})")
    # YAML reads "1e-3" as a string (YAML 1.1); accept scientific notation as a float.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` in a copy of ``raw`` (sections created as needed)."""
    out = copy.deepcopy(dict(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML is one :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must contain a mapping of sections")
    return data


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc[:-1]`` (for listing valid keys)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _format_validation_error(exc: ValidationError) -> str:
    """One line for the first problem, naming the key and the valid keys of its section."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "<root>"
    owner = _model_at(first["loc"])
    valid = sorted(owner.model_fields) if owner is not None else []
    section = ".".join(loc[:-1]) or "top level"
    if first["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(loc[-1], valid, n=1)
        msg = f"unknown config key {key!r}"
        if hint:
            msg += f" (did you mean {'.'.join(loc[:-1] + [hint[0]])!r}?)"
    else:
        got = first.get("input")
        got_s = repr(got)
        if len(got_s) > 60:
            got_s = got_s[:57] + "..."
        msg = f"bad value for config key {key!r}: {first['msg']} (got {got_s})"
    if valid:
        msg += f"; valid keys in {section}: {', '.join(valid)}"
    if len(errors) > 1:
        msg += f" [+{len(errors) - 1} more problem(s)]"
    return msg


def build_config(raw: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Validate ``raw`` (+ overrides) on top of its preset; raise :class:`ConfigError`."""
    raw = apply_overrides(dict(raw or {}), overrides)
    preset = raw.get("preset")
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(
                f"unknown preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}"
            )
        raw = deep_merge(PRESETS[preset], raw)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config file (or only overrides when ``path`` is None) and validate it."""
    raw = read_yaml(path) if path is not None else {}
    return build_config(raw, overrides)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config (every default spelt out) as YAML."""
    Path(path).write_text(cfg.to_yaml())
