"""One validated configuration for every zootune run (``zootune tune CONFIG.yaml``).

A run is described by a YAML file with the sections of :class:`Config` (``zoo``, ``method``,
``task``, ``data``, ``optim``, ``schedule``, ``train``). It is loaded in three layers:

1. the *recipe* named by ``recipe:`` (e.g. ``paper_classification``, the recipe of the paper's
   §4.2: SGD lr 0.01, momentum 0.9, x0.1 every 6k of 15k iterations, batch 48);
2. the YAML file itself, deep-merged over the recipe;
3. ``key=value`` overrides from the command line with dotted keys (``optim.lr=0.003``), whose
   values are parsed as YAML scalars (``true``, ``1e-3``, ``[a, b]``).

The result is validated by pydantic with ``extra="forbid"``: a misspelt key or a wrong type is
reported as one :class:`ConfigError` line that names the bad key and lists the valid ones.

``method`` and ``task`` are plug-ins: each names an entry of its registry
(:mod:`zootune.methods`, :mod:`zootune.tasks`) and carries that entry's own options, validated by
the entry's ``Options`` model (``method: {name: zoo_tuning, lite: true}``; a bare name such as
``method: finetune`` takes the defaults). A wrong option for that method is one error line that
lists the options it has.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from zootune.errors import ZootuneError


class ConfigError(ZootuneError, ValueError):
    """A configuration file or override is malformed, has an unknown key or a wrong type."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_Section = Section


class PluginOptions(Section):
    """Options of a registered plug-in (a method or a task); ``name`` selects the plug-in.

    Subclasses (``Method.Options``, ``Task.Options``) add their own fields with defaults.
    """

    name: str


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


class ZooConfig(_Section):
    """Where the source models come from: everything is loaded by :func:`zootune.zoo.load_zoo`.

    ``spec``: a zoo spec, a zoo preset (``paper-resnet50``, ``demo``) or a list of specs /
    ``{spec, arch, name, kwargs}`` mappings (see :mod:`zootune.zoo`). Two shorthands become
    specs: ``builder`` (an architecture: ``torchvision:resnet18``, ``timm:resnet18``,
    ``package.module:callable``) with ``checkpoints`` (local files, one per source:
    ``file:PATH arch=BUILDER``), or with ``random_sources: N`` (``random:BUILDER seed=seed+i``,
    randomly initialised sources for smoke tests). ``builder_kwargs`` go to the builder.
    ``strip_heads``: ``None`` lets the run decide (heads that differ between members are
    stripped when the task puts a new head on every model anyway).
    """

    spec: Any = None
    builder: str | None = None
    builder_kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoints: list[str] = Field(default_factory=list)
    names: list[str] | None = None
    random_sources: int | None = Field(default=None, ge=1)
    seed: int = 0
    strict: bool = True
    strip_heads: bool | None = None
    offline: bool | None = None
    checkpoint_dir: str | None = None


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

    #: optimizer steps; 0 trains nothing: the model is built, evaluated and saved as it is
    #: (e.g. an ensemble whose members are finished stages)
    steps: int = Field(default=15000, ge=0)
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
    """A whole run. Every section has defaults; ``recipe`` picks a training recipe for them."""

    recipe: str | None = None
    name: str | None = None
    out_dir: str | None = None
    #: modules imported before ``method`` and ``task`` are validated: where a user's own
    #: registered methods, tasks and data sets live (``plugins: [mypkg.my_methods]``)
    plugins: list[str] = Field(default_factory=list)
    method: SerializeAsAny[PluginOptions] = Field(
        default_factory=lambda: _plugin("method", _DEFAULT_PLUGIN["method"]))
    zoo: ZooConfig = Field(default_factory=ZooConfig)
    task: SerializeAsAny[PluginOptions] = Field(
        default_factory=lambda: _plugin("task", _DEFAULT_PLUGIN["task"]))
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    #: fine-tuning regularisers added to any method's loss (:mod:`zootune.methods.regularizers`):
    #: a list of ``{name: l2_sp | delta | bss, ...options}``
    regularizers: list[SerializeAsAny[PluginOptions]] = Field(default_factory=list)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v: str | None) -> str | None:
        if v is not None and v not in RECIPES:
            raise ValueError(f"unknown recipe {v!r}; valid recipes: {', '.join(sorted(RECIPES))}")
        return v

    @field_validator("method", mode="before")
    @classmethod
    def _method_options(cls, v: Any) -> Any:
        return _plugin("method", v)

    @field_validator("task", mode="before")
    @classmethod
    def _task_options(cls, v: Any) -> Any:
        return _plugin("task", v)

    @field_validator("regularizers", mode="before")
    @classmethod
    def _regularizer_options(cls, v: Any) -> Any:
        return _regularizers(v)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict of every value (defaults included)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

#: Training recipes a config can start from with ``recipe: NAME``; the YAML and overrides win.
#: (Zoo presets, named sets of checkpoints, are another thing: ``zootune.zoo.ZOO_PRESETS``.)
RECIPES: dict[str, dict[str, Any]] = {
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


def _model_at(loc: Sequence[Any], root: type[BaseModel] = Config) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc[:-1]`` (for listing valid keys)."""
    model: type[BaseModel] = root
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


def _field_path(loc: list[str], root: type[BaseModel]) -> list[str]:
    """``loc`` cut after the last config key (pydantic appends union branches, list indices)."""
    out: list[str] = []
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or part not in model.model_fields:
            if model is not None:
                out.append(part)  # an unknown key of this section: keep it
            break
        out.append(part)
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return out or loc[:1]


#: Keys of earlier versions and where their settings live now.
_MOVED = {
    "preset": "use 'recipe' (training recipes); zoo presets go in zoo.spec",
    "zoo_tune": "Zoo-Tuning options live in the method section now, e.g. "
                "method: {name: zoo_tuning, lite: true, align: default}",
    "source": "the source to fine-tune is a method option now: method: {name: finetune, source: 0}",
}


def _format_validation_error(exc: ValidationError, root: type[BaseModel] = Config,
                             prefix: Sequence[str] = ()) -> str:
    """One line for the first problem, naming the key and the valid keys of its section."""
    errors = exc.errors()
    first = errors[0]
    loc = _field_path([str(p) for p in first["loc"]], root)
    full = list(prefix) + loc
    key = ".".join(full) or "<root>"
    owner = _model_at(loc, root)
    valid = sorted(owner.model_fields) if owner is not None else []
    section = ".".join(full[:-1]) or "top level"
    if owner is not None and issubclass(owner, PluginOptions) and full[:-1]:
        section += f" ({getattr(owner, 'plugin_name', '') or 'plug-in'})"
    if first["type"] == "extra_forbidden":
        msg = f"unknown config key {key!r}"
        if not prefix and len(loc) == 1 and loc[0] in _MOVED:
            msg += f": {_MOVED[loc[0]]}"
        else:
            hint = difflib.get_close_matches(loc[-1], valid, n=1)
            if hint:
                msg += f" (did you mean {'.'.join(full[:-1] + [hint[0]])!r}?)"
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


def _registry(kind: str):
    if kind == "method":
        from zootune import methods as reg
    elif kind == "regularizer":
        from zootune.methods import regularizers as reg
    else:
        from zootune import tasks as reg
    return reg


_DEFAULT_PLUGIN = {"method": "zoo_tuning", "task": "classification"}


def _plugin(kind: str, value: Any) -> PluginOptions:
    """The validated ``Options`` of the plug-in that ``value`` names (str, mapping or options).

    Raises :class:`ConfigError` (one line naming the key and the plug-in's valid options).
    """
    reg = _registry(kind)
    if isinstance(value, PluginOptions):
        cls = reg.get(value.name)
        if isinstance(value, cls.Options):
            return value
        value = value.model_dump()
    if value is None:
        value = {}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config key {kind!r} must be a {kind} name or a mapping with 'name' and "
                          f"its options (got {value!r}); valid {kind}s: {', '.join(reg.available())}")
    value = dict(value)
    if kind not in _DEFAULT_PLUGIN and "name" not in value:
        raise ConfigError(f"every {kind} needs a 'name'; valid {kind}s: {', '.join(reg.available())}")
    name = value.setdefault("name", _DEFAULT_PLUGIN.get(kind))
    if not isinstance(name, str) or name not in reg.available():
        hint = difflib.get_close_matches(str(name), reg.available(), n=1)
        raise ConfigError(f"unknown {kind} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; valid {kind}s: {', '.join(reg.available())}")
    options_cls = reg.get(name).Options
    try:
        return options_cls.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, options_cls, prefix=[kind])) from None


def _regularizers(value: Any) -> list[PluginOptions]:
    """The ``regularizers`` section: a list of regulariser names or ``{name, ...options}``."""
    if value is None:
        return []
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key 'regularizers' must be a list of {{name: ..., options}} "
                          f"(got {value!r})")
    return [_plugin("regularizer", v) for v in value]


def _normalise_plugins(raw: dict[str, Any]) -> dict[str, Any]:
    """``method: NAME`` -> ``method: {name: NAME}`` so that dotted overrides can reach options."""
    for kind in ("method", "task"):
        if isinstance(raw.get(kind), str):
            raw[kind] = {"name": raw[kind]}
    return raw


def build_config(raw: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Validate ``raw`` (+ overrides) on top of its recipe; raise :class:`ConfigError`."""
    raw = _normalise_plugins(copy.deepcopy(dict(raw or {})))
    for text in overrides:  # one at a time: `method=finetune method.source=1` works
        raw = _normalise_plugins(apply_overrides(raw, [text]))
    recipe = raw.get("recipe")
    if recipe is not None:
        if not isinstance(recipe, str) or recipe not in RECIPES:
            raise ConfigError(
                f"unknown recipe {recipe!r}; valid recipes: {', '.join(sorted(RECIPES))}"
            )
        raw = deep_merge(RECIPES[recipe], raw)
    import_plugins(raw.get("plugins") or [])
    for kind in ("method", "task"):  # plug-in sections first: their errors name their options
        if kind in raw and not isinstance(raw[kind], PluginOptions):
            raw[kind] = _plugin(kind, raw[kind])
    if "regularizers" in raw:
        raw["regularizers"] = _regularizers(raw["regularizers"])
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def import_plugins(modules: Sequence[str]) -> None:
    """Import the modules a config lists under ``plugins`` (they register methods, tasks and
    data sets when imported); one :class:`ConfigError` for a module that cannot be imported."""
    import importlib

    if isinstance(modules, str):
        modules = [modules]
    for name in modules:
        try:
            importlib.import_module(str(name))
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import {name!r} ({exc.__class__.__name__}: {exc})") from None


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of an example shipped in the package (``digits_tiny``).

    The examples live in ``zootune/configs/`` inside the installed package, so
    ``zootune tune digits_tiny`` works from any folder after ``pip install zootune``.
    """
    p = Path(path)
    if p.is_file():
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    shipped = Path(__file__).resolve().parent / "configs" / name
    if shipped.is_file() and len(p.parts) <= 2:
        return shipped
    return p


def example_configs() -> dict[str, Path]:
    """``{name: path}`` of the example configs shipped in the package."""
    folder = Path(__file__).resolve().parent / "configs"
    return {f.stem: f for f in sorted(folder.glob("*.yaml"))}


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config file (a path or a shipped example's name; or only overrides when
    ``path`` is None) and validate it."""
    raw = read_yaml(resolve_config_path(path)) if path is not None else {}
    return build_config(raw, overrides)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config (every default spelt out) as YAML, atomically."""
    from zootune.atomic import atomic_write_text

    atomic_write_text(path, cfg.to_yaml())
