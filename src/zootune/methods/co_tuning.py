"""Co-Tuning (You, Kou, Long & Wang, "Co-Tuning for Transfer Learning", NeurIPS 2020).

A pretrained classifier's task-specific head (7-21% of its parameters) is usually thrown away.
Co-Tuning keeps it: the *category relationship* ``p(y_s | y_t)`` between the source classes and
the target classes turns every target label into a soft source label, and the source head, fed
the same features as the new target head, is trained to predict it:

    L = CE(g_t(f(x)), y_t)  +  lambda * CE_soft(g_s(f(x)), p(y_s | y_t = y_t))

with ``f`` the shared backbone, ``g_t`` the new target head, ``g_s`` the source head (trained
too; an extra module, not part of the deployed model) and
``CE_soft(z, q) = -sum_s q_s log softmax(z)_s``. Inference uses ``g_t`` only: the trained and the
exported model are the ordinary target model, with no extra cost.

The relationship is computed once, before training, from the target training set and the
source model ``f_0`` (its own head, probabilities ``f_0(x) ~ p(y_s | x)``):

* ``relationship: direct`` — the mean source prediction of each target class,
  ``p(y_s | y_t = y) = 1/|D_y| sum_{x in D_y} f_0(x)``
  (:func:`zootune.select.leep.class_mean_predictions`, the quantity LEEP starts from);
* ``relationship: reverse`` — learn ``p(y_t | y_s)`` by a multinomial logistic regression from
  ``(f_0(x), y_t)`` pairs, read it at the source classes (one-hot inputs ``e_s``), and recover
  ``p(y_s | y_t) = p(y_t | y_s) p(y_s) / p(y_t)`` by Bayes' rule with ``p(y_s)`` the mean source
  prediction on the target data and ``p(y_t)`` the target label frequencies; each row is then
  renormalised (the estimated factors are not exactly consistent);
* ``calibrate: true`` — first calibrate ``f_0`` by temperature scaling on held-out source data
  (``calibration_data``: a data section whose labels are the source classes; its ``val`` split
  is used): ``t* = argmin_{t>0} sum_i CE(softmax(z_i / t), y_i)``. The objective is convex in
  ``beta = 1/t`` (a log-sum-exp minus a linear term), so a bounded scalar minimiser
  (``scipy.optimize.minimize_scalar``) finds its global minimum. ``temperature:`` fixes ``t``.

**With a zoo** (``source: all``, new in zootune): the model is Zoo-Tuning over the whole zoo
(``zoo_tuning:`` holds its options), every member keeps its own source head, and each head gets
its own relationship from its own member's predictions. The auxiliary loss is the *mean* of the
members' terms, ``lambda / m * sum_i CE_soft(g_s^i(f(x)), p_i(y_s | y_t))``, so ``weight`` means
the same for one source and for m. Each source head reads the aggregated model's features.

The relationship (one buffer per source head) is checkpointed with the run's extra modules and,
when the run writes a report, saved as ``relationship.json`` and plotted as
``relationship.png`` (the top source classes of each target class).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zootune.config import DataConfig
from zootune.methods.aggregation import ZooTuning, ZooTuningOptions
from zootune.methods.base import (
    BuildContext,
    Method,
    MethodError,
    MethodOptions,
    register,
)
from zootune.methods.regularizers import submodule
from zootune.methods.single import _source_index

__all__ = ["CoTuning", "CoTuningHeads", "calibrate_temperature", "direct_relationship",
           "reverse_relationship", "source_predictions"]


# --------------------------------------------------------------------------------------------
# the relationship p(y_s | y_t) and calibration: pure functions on arrays
# --------------------------------------------------------------------------------------------


def _as_codes(labels: Any, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(torch.as_tensor(labels).cpu() if torch.is_tensor(labels) else labels).reshape(-1)
    if y.shape[0] != n:
        raise MethodError(f"{y.shape[0]} labels for {n} source predictions")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise MethodError(f"target labels must lie in 0..{num_classes - 1}")
    empty = sorted(set(range(num_classes)) - set(y.tolist()))
    if empty:
        raise MethodError(f"target class(es) {empty[:10]} have no training samples: Co-Tuning "
                          "cannot estimate their relationship p(y_s | y_t)")
    return y


def direct_relationship(source_probs: Any, labels: Any, num_classes: int) -> torch.Tensor:
    """``(C, Z)``: row ``y`` is the mean source prediction over the target samples of class ``y``."""
    from zootune.select.leep import class_mean_predictions

    p = torch.as_tensor(np.asarray(source_probs), dtype=torch.float64)
    y = _as_codes(labels, p.shape[0], num_classes)
    return class_mean_predictions(p, y, num_classes)[0]


def reverse_relationship(source_probs: Any, labels: Any, num_classes: int, *,
                         c: float = 1.0) -> torch.Tensor:
    """``(C, Z)``: ``p(y_s | y_t)`` by Bayes' rule from a learned ``p(y_t | y_s)``.

    A multinomial logistic regression (scikit-learn, inverse regularisation ``c``) maps source
    predictions to target labels; evaluated at the one-hot source classes it gives
    ``p(y_t | y_s)`` (Z, C). With ``p(y_s)`` the mean source prediction and ``p(y_t)`` the label
    frequencies, ``p(y_s | y_t) = p(y_t | y_s) p(y_s) / p(y_t)``, rows renormalised.
    """
    from sklearn.linear_model import LogisticRegression

    p = np.asarray(source_probs, dtype=np.float64)
    if p.ndim != 2:
        raise MethodError(f"source predictions must be (samples, source classes), got {p.shape}")
    y = _as_codes(labels, p.shape[0], num_classes)
    z = p.shape[1]
    clf = LogisticRegression(C=c, max_iter=2000).fit(p, y)
    t_given_s = clf.predict_proba(np.eye(z))  # (Z, C), columns in clf.classes_ = 0..C-1 order
    p_s = p.mean(0)
    p_t = np.bincount(y, minlength=num_classes) / y.shape[0]
    rel = (t_given_s * p_s[:, None]).T / p_t[:, None]  # (C, Z)
    rel = rel / rel.sum(1, keepdims=True)
    return torch.as_tensor(rel, dtype=torch.float64)


def calibrate_temperature(logits: Any, labels: Any, *, bounds: tuple[float, float] = (0.01, 100.0)
                          ) -> float:
    """Temperature ``t*`` minimising the mean cross-entropy of ``softmax(logits / t)``.

    Solved over ``beta = 1/t``, where the objective ``mean_i(logsumexp(beta z_i) - beta z_iy)``
    is convex, by a bounded scalar minimisation (``t`` within ``bounds``).
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    z = np.asarray(torch.as_tensor(logits).detach().cpu().double() if torch.is_tensor(logits)
                   else logits, dtype=np.float64)
    y = np.asarray(torch.as_tensor(labels).cpu() if torch.is_tensor(labels) else labels).astype(np.int64)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise MethodError(f"calibration needs (N, Z) logits and N labels, got {z.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise MethodError(f"calibration labels must be source classes 0..{z.shape[1] - 1}")
    zy = z[np.arange(len(y)), y]

    def nll(beta: float) -> float:
        return float(np.mean(logsumexp(beta * z, axis=1) - beta * zy))

    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    return float(1.0 / res.x)


class _FixedKeys:
    """``dataset[(i, seed + i)]`` as item ``i``: a training set read with the trainer's
    ``(index, sample_seed)`` keys, so that random augmentation is one fixed view per sample."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[(int(i), self.seed + int(i))]


@torch.no_grad()
def source_predictions(model: nn.Module, dataset: Any, input_field: str = "image",
                       label_field: str = "label", batch_size: int = 256,
                       seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, Z), labels (N,))`` of ``model`` (eval mode) over a map-style data set.

    ``seed``: read a training set with the trainer's ``(index, seed + index)`` keys (its random
    augmentation is then a fixed function of the seed; plain indices would draw it from the
    global RNG).
    """
    from torch.utils.data import DataLoader

    from zootune.data.sample import collate_samples

    if seed is not None:
        dataset = _FixedKeys(dataset, seed)

    was = model.training
    model.eval()
    outs, ys = [], []
    try:
        dev = next(model.parameters()).device
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                collate_fn=collate_samples):
            outs.append(model(batch[input_field].to(dev)).float().cpu())
            ys.append(torch.as_tensor(batch[label_field]).long())
    finally:
        model.train(was)
    if not outs:
        raise MethodError("Co-Tuning: the data set is empty")
    return torch.cat(outs), torch.cat(ys)


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------


class CoTuningHeads(nn.Module):
    """The source head(s) trained by the auxiliary loss and their fixed relationships.

    ``heads[i]``: source head ``i`` (trainable); buffer ``relationship{i}`` ``(C, Z_i)``:
    ``p(y_s | y_t)``; buffer ``temperature{i}``: the calibration temperature used.
    """

    def __init__(self, heads: Sequence[nn.Module], relationships: Sequence[torch.Tensor],
                 temperatures: Sequence[float]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        for i, (r, t) in enumerate(zip(relationships, temperatures)):
            self.register_buffer(f"relationship{i}", r.float().clone())
            self.register_buffer(f"temperature{i}", torch.tensor(float(t)))

    def relationship(self, i: int) -> torch.Tensor:
        return getattr(self, f"relationship{i}")

    def aux_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over heads of ``CE_soft(g_s^i(features), relationship_i[labels])``."""
        total = None
        for i, head in enumerate(self.heads):
            logp = F.log_softmax(head(features).float(), dim=1)
            q = self.relationship(i)[labels]
            term = -(q * logp).sum(1).mean()
            total = term if total is None else total + term
        assert total is not None
        return total / len(self.heads)


class _ZooTuningPart(ZooTuningOptions):
    """Zoo-Tuning's options inside ``co_tuning`` (used with ``source: all``). ``gate_balance``
    is refused: co_tuning's own loss does not add Zoo-Tuning's balance term."""

    name: str = "zoo_tuning"
    gate_balance: float = Field(default=0.0, ge=0.0, le=0.0)


class CoTuningOptions(MethodOptions):
    #: the zoo member whose head is kept (index or name), or ``all``: Zoo-Tuning over the zoo
    #: with every member's head (one relationship per head)
    source: int | str = 0
    relationship: Literal["direct", "reverse"] = "direct"
    #: lambda, the weight of the auxiliary source-head loss
    weight: float = Field(default=1.0, ge=0.0)
    #: calibrate each source model by temperature scaling on ``calibration_data``
    calibrate: bool = False
    #: held-out source data (labels = source classes): one data section, or one per member
    calibration_data: DataConfig | list[DataConfig] | None = None
    #: a fixed temperature for the source predictions (instead of calibrating)
    temperature: float | None = Field(default=None, gt=0.0)
    #: inverse regularisation strength of the reverse approach's logistic regression
    reverse_c: float = Field(default=1.0, gt=0.0)
    #: source class names per member (a list, or a string of one-character names), for the plot
    source_classes: dict[str, list[str] | str] = Field(default_factory=dict)
    #: Zoo-Tuning's options when ``source: all``
    zoo_tuning: _ZooTuningPart = Field(default_factory=_ZooTuningPart)


@register("co_tuning")
class CoTuning(Method):
    """Co-Tuning: target loss + lambda x source-head loss against ``p(y_s | y_t)``."""

    Options = CoTuningOptions
    #: heads that are the same in every member are kept by the zoo; a zoo whose members' heads
    #: differ is loaded stripped (it could not be loaded otherwise) and the used members are
    #: re-loaded with their heads (:meth:`_source_model`)
    needs_source_heads = False

    def __init__(self, options: MethodOptions | None = None) -> None:
        super().__init__(options)
        self.heads: CoTuningHeads | None = None
        self.members: list[str] = []
        self.temperatures: list[float] = []
        self._tap_handle = None
        self._capture = False
        self._features: torch.Tensor | None = None
        self._classes: list[str] = []

    # ---- building ---------------------------------------------------------------------------

    def _sources(self, ctx: BuildContext) -> list[int]:
        if self.options.source == "all":
            if len(ctx.zoo) < 2:
                raise MethodError("co_tuning source: all needs a zoo of at least 2 models")
            return list(range(len(ctx.zoo)))
        return [_source_index(self.options.source, ctx)]

    def build(self, ctx: BuildContext) -> nn.Module:
        o = self.options
        idx = self._sources(ctx)
        names = list(getattr(ctx.zoo, "names", []) or [f"source{i}" for i in range(len(ctx.zoo))])
        self.members = [names[i] for i in idx]
        if o.source == "all":
            model = ZooTuning(ZooTuningOptions.model_validate(o.zoo_tuning.model_dump())).build(ctx)
        else:
            model = ctx.target_models()[idx[0]]
        head_name = getattr(ctx.task, "head_name", None)
        if not head_name:
            raise MethodError("co_tuning needs a task with a classification head (task.head_name)")
        sources = [self._source_model(ctx, i, head_name, names[i]) for i in idx]
        heads = [copy.deepcopy(m.get_submodule(head_name)).float() for m in sources]
        num_classes = int(getattr(ctx.task, "num_classes", 0) or 0)
        if num_classes < 1:
            raise MethodError("co_tuning needs a classification task with num_classes")
        self._classes = list(getattr(ctx.task, "classes", None) or [str(c) for c in range(num_classes)])
        if ctx.structure_only:
            rels = [torch.zeros(num_classes, h.out_features) for h in heads]
            self.temperatures = [1.0] * len(heads)
        else:
            rels, self.temperatures = self._relationships(ctx, sources, num_classes)
        self.heads = CoTuningHeads(heads, rels, self.temperatures)
        self._label_field = getattr(ctx.task, "label_field", "label")
        self._tap_handle = submodule(model, head_name).register_forward_hook(self._hook)
        return model

    @staticmethod
    def _source_model(ctx: BuildContext, i: int, head_name: str, name: str) -> nn.Module:
        """Zoo member ``i`` with its own classification head: the zoo's model when the zoo kept
        the heads, else the member re-loaded from its spec (a zoo whose members' heads differ
        is loaded with the heads stripped)."""
        def head_of(m: nn.Module) -> nn.Module | None:
            try:
                return m.get_submodule(head_name)
            except AttributeError:
                return None

        model = ctx.zoo[i]
        if isinstance(head_of(model), nn.Linear):
            return model
        specs = list(getattr(ctx.zoo, "specs", []) or [])
        if i < len(specs) and specs[i]:
            from zootune.zoo import load

            try:
                model = load(specs[i], pretrained=not ctx.structure_only)
            except Exception as exc:  # noqa: BLE001 - reported as one line below
                raise MethodError(f"co_tuning: cannot re-load zoo member {name!r} with its head "
                                  f"({exc.__class__.__name__}: {exc})") from None
            if isinstance(head_of(model), nn.Linear):
                return model.eval()
        raise MethodError(
            f"zoo member {name!r} has no source classification head at {head_name!r} (found "
            f"{type(head_of(model)).__name__}; the checkpoint has none): Co-Tuning needs the "
            "source classifier")

    def _calibration_sets(self, ctx: BuildContext, n: int) -> list[Any]:
        from zootune.data import build_data

        cd = self.options.calibration_data
        if cd is None:
            raise MethodError("co_tuning calibrate: true needs calibration_data (held-out source "
                              "data whose labels are the source classes), or set temperature")
        cds = cd if isinstance(cd, list) else [cd]
        if len(cds) != n:
            raise MethodError(f"co_tuning: {len(cds)} calibration_data section(s) for {n} source(s)")
        pre = getattr(ctx.zoo, "preprocessing", None)
        if pre is not None and "declares none" in str(getattr(pre, "source", "")):
            pre = None
        out = []
        for c in cds:
            splits = build_data(c, pre)
            ds = getattr(splits, "val", None)
            if ds is None or len(ds) == 0:
                raise MethodError(f"calibration data {c.name!r} has no val split to calibrate on")
            out.append(ds)
        return out

    def _relationships(self, ctx: BuildContext, sources: list[nn.Module], num_classes: int
                       ) -> tuple[list[torch.Tensor], list[float]]:
        o = self.options
        train = getattr(ctx.data, "train", None)
        if train is None or len(train) == 0:
            raise MethodError("co_tuning needs the target training data to compute p(y_s | y_t)")
        field = ctx.task.input_field
        label_field = getattr(ctx.task, "label_field", "label")
        cal = self._calibration_sets(ctx, len(sources)) if o.calibrate and o.temperature is None else None
        rels, temps = [], []
        for k, src in enumerate(sources):
            if o.temperature is not None:
                t = float(o.temperature)
            elif cal is not None:
                z, y = source_predictions(src, cal[k], field, label_field)
                t = calibrate_temperature(z, y)
            else:
                t = 1.0
            logits, labels = source_predictions(src, train, field, label_field,
                                                seed=ctx.cfg.train.seed)
            probs = torch.softmax(logits.double() / t, dim=1)
            if o.relationship == "direct":
                r = direct_relationship(probs, labels, num_classes)
            else:
                r = reverse_relationship(probs.numpy(), labels.numpy(), num_classes, c=o.reverse_c)
            rels.append(r)
            temps.append(t)
        return rels, temps

    def extra_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"co_tuning_heads": self.heads} if self.heads is not None else {}

    # ---- training ---------------------------------------------------------------------------

    def _hook(self, mod: nn.Module, inp: tuple, out: Any) -> None:
        if self._capture:
            self._features = inp[0]

    def loss(self, model: nn.Module, batch: dict[str, Any], task: Any) -> tuple[torch.Tensor, Any]:
        self._capture = True
        try:
            outputs = task.forward(model, batch)
        finally:
            self._capture = False
        feats, self._features = self._features, None
        if feats is None:
            raise MethodError("co_tuning: the task head was not called in the forward pass")
        loss = task.loss(outputs, batch)
        if self.options.weight > 0 and self.heads is not None:
            feats = feats.reshape(feats.shape[0], -1)
            loss = loss + self.options.weight * self.heads.aux_loss(feats, batch[self._label_field])
        return loss, outputs

    # ---- reporting --------------------------------------------------------------------------

    def source_class_names(self, k: int) -> list[str]:
        z = self.heads.relationship(k).shape[1] if self.heads is not None else 0
        given = self.options.source_classes.get(self.members[k]) if self.members else None
        names = list(given) if given is not None else []
        return names if len(names) == z else [f"s{j}" for j in range(z)]

    def relationship_record(self, top: int = 5) -> dict[str, Any]:
        """JSON-able relationships: per source, the matrix and each target class's top classes."""
        from zootune.viz.relationship import top_sources

        out: dict[str, Any] = {"relationship": self.options.relationship,
                               "target_classes": self._classes, "sources": []}
        if self.heads is None:
            return out
        for k, member in enumerate(self.members):
            r = self.heads.relationship(k).detach().cpu()
            names = self.source_class_names(k)
            out["sources"].append({
                "member": member, "temperature": self.temperatures[k] if self.temperatures else 1.0,
                "source_classes": names, "matrix": r.tolist(),
                "top": top_sources(r, self._classes, names, top)})
        return out

    def report_section(self, model: nn.Module, data: Any, out_dir: Any) -> list[str]:
        import json
        from pathlib import Path

        from zootune.atomic import atomic_write_text
        from zootune.viz.relationship import plot_relationship

        if self.heads is None or out_dir is None:
            return []
        out = Path(out_dir)
        rec = self.relationship_record()
        atomic_write_text(out / "relationship.json", json.dumps(rec, indent=1))
        lines = ["## Co-Tuning: category relationship p(y_s | y_t)\n",
                 (f"{self.options.relationship} relationship, weight {self.options.weight}; "
                  "the matrices are in `relationship.json`.\n")]
        for k, src in enumerate(rec["sources"]):
            fname = "relationship.png" if len(rec["sources"]) == 1 else f"relationship_{k}.png"
            plot_relationship(self.heads.relationship(k).detach().cpu(), out / fname,
                              self._classes, src["source_classes"],
                              title=f"p(y_s | y_t): source {src['member']} (T={src['temperature']:.3g})")
            lines.append(f"![relationship {src['member']}]({fname})\n")
        return lines

    def describe(self) -> str:
        o = self.options
        src = "all (zoo_tuning" + (", lite" if o.zoo_tuning.lite else "") + ")" \
            if o.source == "all" else str(o.source)
        cal = (f", T={o.temperature}" if o.temperature is not None
               else ", calibrated" if o.calibrate else "")
        return f"co_tuning (source={src}, {o.relationship}, weight={o.weight}{cal})"
