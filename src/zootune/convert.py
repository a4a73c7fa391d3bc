"""``zoo_tune()``: turn a zoo of same-architecture models into one Zoo-Tuning model.

Steps (paper §3.2 and appendix A.2):

1. validate the zoo: at least two ``nn.Module`` s with the same module tree, the same parameter
   and buffer shapes, and finite weights (:func:`validate_zoo`, built on the one architecture
   check :func:`zootune.zoo.check_same_architecture`);
2. select the layers to aggregate (``layers=`` / ``exclude=`` name patterns; by default every
   ``nn.Conv2d`` and ``nn.Linear`` whose forward is the standard one) and replace each with an
   AdaAgg layer holding the ``m`` source weights, an alignment ``T_i`` (``align=``) and a gate;
3. give every other parameter and buffer — norm layers, excluded layers, a new head — the zoo
   average (``rest="average"``) or one source's value (``rest=<index>``).

BatchNorm: the affine parameters (gamma, beta) start as the zoo average, as in the paper
(appendix A.2). The running mean and variance are averaged too. They describe the *sources'*
activations, not the aggregated model's, so they are only a starting point: in training mode
BatchNorm uses batch statistics and re-estimates its running statistics as training proceeds,
which is what the paper's recipe relies on. For evaluating a model before or after only a little
training, or after changing its gates, re-estimate them on target data with
:func:`zootune.recalibrate_batchnorm`. (The public reference code instead reset them to 0/1.)

The source models are never modified: everything is copied.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn

from .errors import LayerSelectionError, ZooMismatchError, ZootuneError
from .layers import CONV_KERNELS, GATE_INITS, GATE_KINDS, AdaAggBase, AdaAggConv2d, AdaAggLinear
from .zoo.check import check_same_architecture

AlignSpec = bool | Literal["default", "paper"] | Sequence[str]

#: Layers the public reference code aligns on a ResNet (torchvision / timm naming): the stem and
#: the 3x3 convolutions of the last two stages.
PAPER_ALIGN_PATTERNS = ("conv1", "layer3.*.conv2", "layer4.*.conv2")


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def validate_zoo(models: Sequence[nn.Module], names: Sequence[str] | None = None) -> None:
    """Raise one clear :class:`ZooMismatchError` if ``models`` cannot form a zoo.

    Aggregation needs a list or tuple of at least two ``nn.Module`` s; everything else — the
    same module tree, parameter and buffer names and shapes, finite weights — is
    :func:`zootune.zoo.check_same_architecture` (the one architecture check, whose messages
    name both members, the key, both shapes, and say when a classification head differs).
    ``names`` (default: a :class:`zootune.zoo.Zoo`'s own names) name the members in messages.
    """
    if isinstance(models, nn.Module) or not isinstance(models, (list, tuple)):
        raise ZooMismatchError(
            "zoo_tune expects a list or tuple of nn.Module (the zoo); "
            f"got {type(models).__name__}"
        )
    if len(models) < 2:
        raise ZooMismatchError(
            f"a zoo needs at least 2 models, got {len(models)}: with one model, fine-tune it directly"
        )
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise ZooMismatchError(f"zoo member {i} is a {type(m).__name__}, not an nn.Module")
    if names is None:
        names = getattr(models, "names", None)
        if names is not None and len(names) != len(models):
            names = None
    check_same_architecture(models, names)


# ----------------------------------------------------------------------------------------------
# Layer selection
# ----------------------------------------------------------------------------------------------


def _unsupported_reason(name: str, module: nn.Module, parent: nn.Module | None) -> str | None:
    """Why ``module`` cannot become an AdaAgg layer, or None if it can."""
    if isinstance(module, nn.Conv2d):
        if type(module).forward is not nn.Conv2d.forward or (
            type(module)._conv_forward is not nn.Conv2d._conv_forward
        ):
            return f"{type(module).__name__} overrides Conv2d.forward (its maths is not a plain conv)"
    elif isinstance(module, nn.Linear):
        if type(module).forward is not nn.Linear.forward:
            return f"{type(module).__name__} overrides Linear.forward"
        if isinstance(parent, nn.MultiheadAttention):
            return "nn.MultiheadAttention reads its out_proj weight directly, never calls it"
    else:
        return f"{type(module).__name__} is not an nn.Conv2d or nn.Linear"
    if hasattr(module, "parametrizations") or any(
        hasattr(module, f"{p}_orig") or hasattr(module, f"{p}_g") for p in ("weight",)
    ):
        return "its weight is parametrised (weight norm / parametrize)"
    return None


def _has_wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """A pattern selects a module if it matches its name or the name of one of its ancestors."""
    parts = name.split(".")
    prefixes = [".".join(parts[: k + 1]) for k in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pat) for pat in patterns for p in prefixes)


def select_layers(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Names of the modules of ``model`` that will become AdaAgg layers.

    ``layers=None`` selects every supported ``nn.Conv2d`` / ``nn.Linear``. Patterns are
    ``fnmatch`` patterns on module names (``"layer3.*.conv2"``); a pattern naming a container
    (``"layer1"``) selects the supported layers inside it. One clear error for a pattern that
    matches no module, one that matches only layers that cannot be aggregated, or an exact name
    of an unsupported layer.
    """
    if isinstance(layers, str):
        layers = [layers]
    if isinstance(exclude, str):
        exclude = [exclude]
    parents: dict[str, nn.Module] = {}
    named = dict(model.named_modules())
    for name, mod in named.items():
        for child_name, _ in mod.named_children():
            parents[f"{name}.{child_name}" if name else child_name] = mod
    leaves = {n: m for n, m in named.items() if n and isinstance(m, (nn.Conv2d, nn.Linear))}
    reasons = {n: _unsupported_reason(n, m, parents.get(n)) for n, m in leaves.items()}
    if layers is None:
        chosen = [n for n in leaves if reasons[n] is None]
    else:
        chosen = []
        for pat in layers:
            hits = [n for n in named if n and _matches(n, [pat])]
            if not hits:
                raise LayerSelectionError(
                    f"layer pattern '{pat}' matches no module; examples of names: "
                    + ", ".join(list(leaves)[:5])
                )
            exact = named.get(pat)
            if exact is not None and not _has_wildcard(pat):
                reason = _unsupported_reason(pat, exact, parents.get(pat))
                if isinstance(exact, (nn.Conv2d, nn.Linear)) and reason is not None:
                    raise LayerSelectionError(f"layer '{pat}' cannot be aggregated: {reason}")
                if not isinstance(exact, (nn.Conv2d, nn.Linear)) and not any(
                    h in leaves for h in hits
                ):
                    raise LayerSelectionError(f"layer '{pat}' cannot be aggregated: {reason}")
            ok = [n for n in hits if n in leaves and reasons[n] is None]
            if not ok:
                bad = next((n for n in hits if n in leaves), hits[0])
                why = reasons.get(bad) or f"{type(named[bad]).__name__} holds no Conv2d or Linear"
                raise LayerSelectionError(
                    f"layer pattern '{pat}' matches no layer that can be aggregated "
                    f"(e.g. '{bad}': {why})"
                )
            chosen += [n for n in ok if n not in chosen]
        chosen = [n for n in leaves if n in chosen]  # model order
    for pat in exclude:
        if not any(_matches(n, [pat]) for n in named if n):
            raise LayerSelectionError(f"exclude pattern '{pat}' matches no module")
    chosen = [n for n in chosen if not _matches(n, exclude)]
    if not chosen:
        raise LayerSelectionError("no layer left to aggregate after applying layers/exclude")
    return chosen


def select_aligned(model: nn.Module, chosen: Sequence[str], align: AlignSpec) -> list[str]:
    """Which of the ``chosen`` layers get a channel alignment ``T_i``.

    ``True``: all; ``False``: none; ``"default"``: every conv with a kernel larger than 1x1 and
    no 1x1 conv or Linear (appendix A.2: aligning the 1x1 convs adds parameters and cost without
    improving accuracy); ``"paper"``: what the public reference code aligns on a ResNet (the stem
    and the 3x3 convs of layer3 / layer4); or a list of name patterns.
    """
    named = dict(model.named_modules())
    if align is True:
        return list(chosen)
    if align is False or align is None:
        return []
    if align == "default":
        return [
            n for n in chosen
            if isinstance(named[n], nn.Conv2d) and tuple(named[n].kernel_size) != (1, 1)
        ]
    patterns = PAPER_ALIGN_PATTERNS if align == "paper" else align
    if isinstance(patterns, str):
        patterns = [patterns]
    out = [n for n in chosen if _matches(n, patterns)]
    for pat in patterns:
        if not any(_matches(n, [pat]) for n in chosen):
            raise LayerSelectionError(
                f"align pattern '{pat}' matches no aggregated layer"
                + (" (align='paper' expects torchvision/timm ResNet names)" if align == "paper" else "")
            )
    return out


# ----------------------------------------------------------------------------------------------
# ZooModel
# ----------------------------------------------------------------------------------------------


class GateTracking:
    """What :meth:`ZooModel.track_gates` returns: the change is made at once; used as a context
    manager, each layer's previous ``track_gates`` value is restored on exit."""

    def __init__(self, layers: Sequence[AdaAggBase], mode: bool) -> None:
        self._previous = [(layer, layer.track_gates) for layer in layers]
        self.mode = bool(mode)
        for layer in layers:
            layer.track_gates = self.mode

    def __enter__(self) -> "GateTracking":
        return self

    def __exit__(self, *exc: object) -> None:
        for layer, previous in self._previous:
            layer.track_gates = previous

    def __repr__(self) -> str:
        return f"GateTracking(mode={self.mode})"


class ZooModel(nn.Module):
    """A model whose selected layers aggregate a zoo (Zoo-Tuning). Call it like ``models[0]``.

    ``zm.model`` is the converted module (the class of ``models[0]`` with AdaAgg layers in place);
    attributes ``zm`` does not have are looked up on it. ``settings`` records how it was built
    (used by :func:`zootune.save` / :func:`zootune.load`).

    Gate statistics — lite mode's temporal ensemble ``abar`` (Eq. 4), which *is* the exported
    model's gate, and the running mean of observed gates in per-sample mode — are updated by
    every training-mode forward, as BatchNorm updates its running statistics.
    ``zm.track_gates(False)`` stops that for forwards that are not training steps (a second
    forward of one step, a gradient or feature probe in train mode), without changing outputs or
    gradients; ``with zm.track_gates(False): ...`` restores each layer's previous setting on
    exit. The setting is a plain attribute of each AdaAgg layer (``track_gates``), not part of
    the state dict, and an exported model does not have it.
    """

    def __init__(self, model: nn.Module, settings: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.settings = dict(settings)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(super().__getattr__("model"), name)

    # ---- introspection ------------------------------------------------------------------------

    def adaagg_layers(self) -> dict[str, AdaAggBase]:
        """``{name: AdaAgg layer}`` in model order (names relative to ``zm.model``)."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, AdaAggBase)}

    @property
    def layer_names(self) -> list[str]:
        return list(self.adaagg_layers())

    @property
    def num_sources(self) -> int:
        return int(self.settings["num_sources"])

    @property
    def lite(self) -> bool:
        return bool(self.settings["lite"])

    @torch.no_grad()
    def gate_values(self) -> dict[str, torch.Tensor]:
        """``{layer_name: (m,)}``: ``abar`` in lite mode, the running mean of observed gates
        (same bias-corrected ensemble, Eq. 4) in per-sample mode."""
        return {n: layer.gate_value().detach().cpu() for n, layer in self.adaagg_layers().items()}

    # ---- training helpers ---------------------------------------------------------------------

    def parameter_roles(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters by role: ``source`` (W_i, biases), ``align`` (T_i), ``gate``
        (A_i), ``other`` (norm layers, non-aggregated layers, head)."""
        roles: dict[str, list[tuple[str, nn.Parameter]]] = {
            "source": [], "align": [], "gate": [], "other": []
        }
        in_layer: dict[int, str] = {}
        for layer in self.adaagg_layers().values():
            for n, p in layer.named_parameters():
                role = "gate" if n.startswith("gate.") else "align" if n.startswith("align.") else "source"
                in_layer[id(p)] = role
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                roles[in_layer.get(id(p), "other")].append((name, p))
        return roles

    def param_groups(
        self,
        lr: float,
        *,
        gate_lr: float | None = None,
        align_lr: float | None = None,
        head: Sequence[str] = (),
        head_lr: float | None = None,
        weight_decay: float = 0.0,
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups with their own learning rates.

        ``head``: name patterns (relative to ``zm.model``) of the new task head, which gets
        ``head_lr``. Weight decay on the alignment pulls ``T_i`` towards the identity (it is
        stored as ``I + D_i``).
        """
        roles = self.parameter_roles()
        head_params = [(n, p) for n, p in roles["other"] if head and _matches(n, head)]
        head_ids = {id(p) for _, p in head_params}
        groups = [
            ("source", roles["source"] + [(n, p) for n, p in roles["other"] if id(p) not in head_ids], lr),
            ("align", roles["align"], align_lr if align_lr is not None else lr),
            ("gate", roles["gate"], gate_lr if gate_lr is not None else lr),
            ("head", head_params, head_lr if head_lr is not None else lr),
        ]
        return [
            {"name": name, "params": [p for _, p in ps], "lr": glr, "weight_decay": weight_decay}
            for name, ps, glr in groups
            if ps
        ]

    def track_gates(self, mode: bool = True) -> GateTracking:
        """Whether training-mode forwards update the gate statistics (default: they do).

        Sets ``track_gates`` on every AdaAgg layer now and returns an object that, used as a
        context manager, restores each layer's previous value on exit (like
        ``torch.autograd.set_grad_enabled``): ``zm.track_gates(False)`` and
        ``with zm.track_gates(False): ...`` both work.
        """
        return GateTracking(list(self.adaagg_layers().values()), mode)

    def kernel_plan(self) -> dict[str, str]:
        """``{layer: kernel}``: the per-sample convolution kernel each ``kernel="auto"`` layer
        used in its last training forward (1x1 convs always use a matrix product: not listed).

        Recorded by the trainer with the run so that a resumed or distributed run computes
        with exactly the same kernels (their rounding differs), see :meth:`set_kernels`."""
        from .layers import AdaAggConv2d
        from .layers.kernels import CONV_KERNELS

        return {n: layer.train_kernel for n, layer in self.adaagg_layers().items()
                if isinstance(layer, AdaAggConv2d) and layer.kernel == "auto"
                and layer.train_kernel in CONV_KERNELS}

    def set_kernels(self, plan: dict[str, str]) -> "ZooModel":
        """Fix the per-sample kernel of the named layers (a :meth:`kernel_plan`)."""
        from .layers.kernels import CONV_KERNELS

        layers = self.adaagg_layers()
        for name, kernel in plan.items():
            if name not in layers or kernel not in CONV_KERNELS:
                raise ZootuneError(f"kernel plan entry {name!r}: {kernel!r} does not fit this model")
            layers[name].kernel = kernel
        # saved with the model (zootune.save), so a loaded model computes with the same kernels
        self.settings["kernel_plan"] = {**self.settings.get("kernel_plan", {}), **dict(plan)}
        return self

    def freeze_gates(self) -> "ZooModel":
        """Stop training the gate networks (with the uniform init: fixed equal gates, i.e. plain
        weight averaging — the ``average_aggregation`` baseline)."""
        for layer in self.adaagg_layers().values():
            layer.gate.requires_grad_(False)
        return self

    # ---- export -------------------------------------------------------------------------------

    def export(self, *, average_gates: bool = False) -> nn.Module:
        """An ordinary module of ``models[0]``'s class with merged weights (Eq. 5), in eval mode.

        Lite models merge with ``abar`` and the result computes exactly what the lite model
        computes in eval mode. A per-sample model has no single weight per layer — every input
        gets its own — so exporting it is refused unless ``average_gates=True`` asks to merge
        with the running mean of the gates observed in training (an approximation: compare its
        accuracy before deploying it).
        """
        if not self.lite and not average_gates:
            raise ZootuneError(
                "this ZooModel was built with lite=False: its layer weights depend on each input "
                "(per-sample gates), so no single plain model reproduces it. Train with lite=True "
                "for an exact export, or call export(average_gates=True) to merge with the mean "
                "observed gates (an approximation)."
            )
        memo: dict[int, Any] = {
            id(layer): layer.to_plain() for layer in self.adaagg_layers().values()
        }
        plain = copy.deepcopy(self.model, memo)
        return plain.eval()

    def extra_repr(self) -> str:
        s = self.settings
        return (
            f"num_sources={s['num_sources']}, lite={s['lite']}, layers={len(s['layers'])}, "
            f"aligned={len(s['align'])}, gate={s['gate']}"
        )


# ----------------------------------------------------------------------------------------------
# zoo_tune
# ----------------------------------------------------------------------------------------------


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


@torch.no_grad()
def _fill_rest(base: nn.Module, models: Sequence[nn.Module], skip: set[str], rest) -> None:
    """Average (or pick) every parameter/buffer of ``base`` outside the aggregated layers."""
    states = [m.state_dict() for m in models]
    for key, target in base.state_dict().items():
        if key.rpartition(".")[0] in skip:
            continue
        if rest == "average" and target.is_floating_point():
            stacked = torch.stack([s[key].to(target.device, torch.float64) for s in states])
            target.copy_(stacked.mean(dim=0))
        else:
            index = 0 if rest == "average" else rest
            target.copy_(states[index][key])


def zoo_tune(
    models: Sequence[nn.Module],
    *,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    align: AlignSpec = "default",
    lite: bool = False,
    rest: Literal["average"] | int = "average",
    gate: str = "normalized",
    gate_init: str = "uniform",
    gate_hidden: int | None = None,
    te_momentum: float = 0.9,
    kernel: str = "auto",
    recompute: bool = True,
    align_zoo: bool | dict[str, Any] = False,
) -> ZooModel:
    """Build a Zoo-Tuning model from ``models`` (a zoo of one architecture).

    Args:
        models: two or more ``nn.Module`` s with identical module trees and shapes.
        layers: name patterns of the layers to aggregate (default: every supported Conv2d and
            Linear). The paper's RL setting aggregates only the first two convs.
        exclude: name patterns kept out of aggregation (e.g. the new head).
        align: which layers get channel alignment ``T_i`` (Eq. 1): ``True``, ``False``,
            ``"default"`` (every k>1 conv), ``"paper"`` (reference code's choice) or patterns.
        lite: lite Zoo-Tuning (§3.3): batch-mean gates and a temporal ensemble in training,
            one merged model at inference, exact :meth:`ZooModel.export`.
        rest: non-aggregated parameters and buffers: ``"average"`` of the zoo, or a source index.
        gate: ``"normalized"`` (sigmoids divided by their sum; a uniform start is exactly weight
            averaging), ``"sigmoid"`` (the paper's independent sigmoids) or ``"softmax"``.
        gate_init: ``"uniform"`` (equal gates at the start), ``"kaiming"`` (reference code) or
            ``"default"`` (PyTorch's Linear init).
        gate_hidden: hidden width of the gate network (default ``C_in // 4 + 1``).
        te_momentum: ``lambda`` of the temporal ensemble (Eq. 4).
        kernel: per-sample convolution kernel: ``"auto"`` (timed once per shape), ``"grouped"``
            ``"loop"`` or ``"unfold"`` (1x1 convs and Linear always use a batched matrix product).
        recompute: recompute per-sample weights in backward instead of storing ``B x |W|``.
        align_zoo: first permute every member into ``models[0]``'s channel order
            (:func:`zootune.align_zoo`; for zoos trained from independent random starts).
            ``True``: weight matching with the defaults; a dict: :func:`zootune.align_zoo`'s
            keyword arguments (``method``, ``data``, ``repair``...). With ``repair`` and
            ``data`` the built model's BatchNorm layers are repaired on ``data``
            (:func:`zootune.align.repair_batchnorm`; the model starts as the zoo average).

    Returns:
        a :class:`ZooModel`; the source models are not modified.
    """
    validate_zoo(models)
    zoo_aligned = None
    if align_zoo:
        from .align import align_zoo as _align_zoo

        if not isinstance(align_zoo, (bool, dict)):
            raise ZootuneError(f"align_zoo must be a bool or a dict of align_zoo options, got {align_zoo!r}")
        zoo_aligned = _align_zoo(models, **({} if align_zoo is True else dict(align_zoo)))
        models = list(zoo_aligned)
    if gate not in GATE_KINDS:
        raise ZootuneError(f"gate must be one of {GATE_KINDS}, got {gate!r}")
    if gate_init not in GATE_INITS:
        raise ZootuneError(f"gate_init must be one of {GATE_INITS}, got {gate_init!r}")
    if kernel not in CONV_KERNELS:
        raise ZootuneError(f"kernel must be one of {CONV_KERNELS}, got {kernel!r}")
    if rest != "average" and not (isinstance(rest, int) and 0 <= rest < len(models)):
        raise ZootuneError(f"rest must be 'average' or a source index in [0, {len(models)}), got {rest!r}")
    if not (0.0 <= te_momentum < 1.0) or math.isnan(te_momentum):
        raise ZootuneError(f"te_momentum must be in [0, 1), got {te_momentum}")
    ref = models[0]
    chosen = select_layers(ref, layers, exclude)
    aligned = set(select_aligned(ref, chosen, align))

    base = copy.deepcopy(ref)
    _fill_rest(base, models, set(chosen), rest)
    source_modules = [dict(m.named_modules()) for m in models]
    for name in chosen:
        sources = [mods[name] for mods in source_modules]
        cls = AdaAggConv2d if isinstance(sources[0], nn.Conv2d) else AdaAggLinear
        layer = cls(
            sources,
            align=name in aligned,
            lite=lite,
            gate=gate,
            gate_init=gate_init,
            gate_hidden=gate_hidden,
            te_momentum=te_momentum,
            recompute=recompute,
            kernel=kernel,
        )
        _set_submodule(base, name, layer)
    base.train(ref.training)
    settings = {
        "num_sources": len(models),
        "layers": chosen,
        "align": [n for n in chosen if n in aligned],
        "lite": bool(lite),
        "rest": rest,
        "gate": gate,
        "gate_init": gate_init,
        "gate_hidden": gate_hidden,
        "te_momentum": float(te_momentum),
        "kernel": kernel,
        "recompute": bool(recompute),
        "source_class": f"{type(ref).__module__}.{type(ref).__qualname__}",
    }
    if zoo_aligned is not None:
        za = zoo_aligned
        settings["align_zoo"] = {"method": za.info["method"], "reference": za.info["reference"],
                                 "groups": za.info["groups"], "repair": za.repair}
    zm = ZooModel(base, settings)
    if zoo_aligned is not None and zoo_aligned.repair:
        from .align import repair_batchnorm

        repair_batchnorm(zm, list(zoo_aligned), zoo_aligned.data or [], mode=zoo_aligned.repair)
    return zm
