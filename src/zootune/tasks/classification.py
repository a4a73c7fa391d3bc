"""Image classification: a fresh linear head on every source, cross-entropy, top-1 accuracy.

The paper (§4.2, following Yosinski et al.) replaces each source's task-specific last layer
with one randomly initialised fully connected layer. :func:`attach_head` does it for
torchvision, timm and plain models: it finds the classifier (timm's ``get_classifier()``,
torchvision's ``fc`` / ``classifier`` / ``heads``, a name you give, or the last ``nn.Linear``),
builds ONE new ``nn.Linear(in_features, num_classes)`` and gives every source a deep copy of it.
``zoo_tune(models, exclude=[head])`` then keeps the head as an ordinary layer: identical in all
sources, so the zoo average *is* that head, and ``ZooModel.export()`` returns one plain model.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zootune.errors import ZootuneError
from zootune.tasks.base import Task

_HEAD_ATTRS = ("fc", "classifier", "heads", "head", "last_linear")


class HeadError(ZootuneError, ValueError):
    """No classifier layer could be found (or the one named is not a Linear layer)."""


def _name_of(model: nn.Module, module: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if m is module:
            return name
    return None


def _last_linear(model: nn.Module, prefix: str = "") -> str | None:
    root = model.get_submodule(prefix) if prefix else model
    if isinstance(root, nn.Linear):
        return prefix
    last = None
    for name, m in root.named_modules():
        if isinstance(m, nn.Linear):
            last = f"{prefix}.{name}" if prefix else name
    return last


def _identity_head(model: nn.Module, head: str | None) -> str | None:
    """Name of a head that was stripped to ``nn.Identity`` (e.g. ``load_zoo(strip_heads=True)``)."""
    for name in ([head] if head else list(_HEAD_ATTRS)):
        try:
            m = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(m, nn.Identity):
            return name
    return None


def _infer_in_features(model: nn.Module, name: str, example: torch.Tensor) -> int:
    """Width of the features entering module ``name`` (one forward pass of ``example``)."""
    seen: list[int] = []
    hook = model.get_submodule(name).register_forward_hook(
        lambda mod, inp, out: seen.append(int(inp[0].shape[-1])))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        hook.remove()
        model.train(was)
    if not seen:
        raise HeadError(f"the stripped head {name!r} is not used in the forward pass")
    return seen[0]


def find_classifier(model: nn.Module, head: str | None = None) -> str:
    """Module name of the classifier ``nn.Linear`` of ``model``."""
    if head is not None:
        try:
            m = model.get_submodule(head)
        except AttributeError:
            raise HeadError(f"model has no module named {head!r} (task.head)") from None
        name = _last_linear(model, head)
        if name is None:
            raise HeadError(f"task.head {head!r} is a {type(m).__name__} without a Linear layer")
        return name
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):  # timm
        try:
            clf = get_classifier()
        except Exception:  # noqa: BLE001 - any timm quirk: fall back to attribute search
            clf = None
        if isinstance(clf, nn.Module):
            name = _name_of(model, clf)
            if name is not None:
                found = _last_linear(model, name)
                if found is not None:
                    return found
    for attr in _HEAD_ATTRS:  # torchvision and common plain models
        m = getattr(model, attr, None)
        if isinstance(m, nn.Module):
            found = _last_linear(model, attr)
            if found is not None:
                return found
    found = _last_linear(model)
    if found is None:
        raise HeadError(f"cannot find a classifier (nn.Linear) in {type(model).__name__}; "
                        "set task.head to the name of its last layer")
    return found


def attach_head(models: Sequence[nn.Module], num_classes: int, head: str | None = None,
                seed: int | None = None, example: torch.Tensor | None = None
                ) -> tuple[list[nn.Module], str]:
    """Give every model the same fresh ``nn.Linear`` head; returns ``(models, head_name)``.

    The models are modified in place (and returned). ``seed`` makes the head reproducible
    without touching the global RNG. A head already stripped to ``nn.Identity`` is replaced
    too; its input width is found with one forward pass of ``example`` (a batch of inputs).
    """
    if not models:
        raise HeadError("no source models to attach a head to")
    stripped = _identity_head(models[0], head)
    if stripped is not None:
        if example is None:
            raise HeadError(f"the source head {stripped!r} was stripped (nn.Identity) and no "
                            "example input was given to measure its input width")
        name = stripped
        in_features = _infer_in_features(models[0], name, example)
        p0 = next(models[0].parameters())
        device, dtype = p0.device, p0.dtype
    else:
        name = find_classifier(models[0], head)
        old = models[0].get_submodule(name)
        assert isinstance(old, nn.Linear)
        in_features, device, dtype = old.in_features, old.weight.device, old.weight.dtype
    if seed is None:
        new = nn.Linear(in_features, num_classes, bias=True)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            new = nn.Linear(in_features, num_classes, bias=True)
    new = new.to(device=device, dtype=dtype)
    for m in models:
        try:
            this = m.get_submodule(name)
        except AttributeError:
            raise HeadError(f"source {type(m).__name__} has no module {name!r}") from None
        ok = isinstance(this, nn.Identity) if stripped else (
            isinstance(this, nn.Linear) and this.in_features == in_features)
        if not ok:
            raise HeadError(f"sources disagree on the classifier {name!r}")
        m.set_submodule(name, copy.deepcopy(new))
        if hasattr(m, "num_classes"):  # timm keeps this attribute in sync with the head
            try:
                m.num_classes = num_classes
            except Exception:  # noqa: BLE001
                pass
    return list(models), name


class ClassificationTask(Task):
    """Cross-entropy on logits; metrics: loss and top-1 accuracy."""

    name = "classification"
    primary_metric = "accuracy"
    higher_is_better = True

    def __init__(self, num_classes: int, head: str | None = None, label_smoothing: float = 0.0,
                 head_seed: int | None = 0) -> None:
        self.num_classes = int(num_classes)
        self.head = head
        self.label_smoothing = float(label_smoothing)
        self.head_seed = head_seed
        self.head_name = None
        #: a batch of inputs, needed only when the source heads were stripped to nn.Identity
        self.example_input: torch.Tensor | None = None

    def prepare_zoo(self, models: Sequence[nn.Module]) -> list[nn.Module]:
        models, self.head_name = attach_head(models, self.num_classes, self.head, self.head_seed,
                                             example=self.example_input)
        return models

    def loss(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), batch[1], label_smoothing=self.label_smoothing)

    def batch_metrics(self, outputs: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        y = batch[1]
        n = y.shape[0]
        loss = F.cross_entropy(outputs.float(), y, reduction="sum")
        correct = (outputs.argmax(dim=1) == y).sum()
        return {"loss_sum": loss.detach().float(), "correct": correct.float(),
                "count": torch.tensor(float(n), device=y.device)}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        return {"loss": sums.get("loss_sum", 0.0) / n, "accuracy": sums.get("correct", 0.0) / n}
