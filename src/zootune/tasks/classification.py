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
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zootune.errors import HeadError
from pydantic import Field

from zootune.tasks.base import Task, TaskError, TaskOptions, record_forward, register

def _infer_in_features(model: nn.Module, name: str, example: torch.Tensor) -> int:
    """Width of the features entering module ``name`` (one forward pass of ``example``)."""
    seen = record_forward(model, example, [name]).get(name)
    if not seen:
        raise HeadError(f"the stripped head {name!r} is not used in the forward pass")
    return int(seen[0][0][0].shape[-1])


def find_classifier(model: nn.Module, head: str | None = None) -> str:
    """Module name of the classifier ``nn.Linear`` of ``model`` (:func:`zootune.zoo.find_head`,
    the one head finder; ``head`` names it explicitly). :class:`HeadError` when there is none."""
    from zootune.zoo import find_head

    found = find_head(model, head)
    if found is None:
        if head is not None:
            raise HeadError(f"task.head {head!r} is a {type(model.get_submodule(head)).__name__} "
                            "without a Linear layer")
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
    from zootune.zoo.heads import find_stripped_head

    stripped = find_stripped_head(models[0], head)
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


@register("classification")
class ClassificationTask(Task):
    """Cross-entropy on logits; metrics: loss and top-1 accuracy.

    Sample fields: ``image`` (the input) and ``label`` (an integer class).
    """

    class Options(TaskOptions):
        #: number of classes (default: the data set's)
        num_classes: int | None = Field(default=None, ge=1)
        #: module name of the source classifier to replace (found automatically if None)
        head: str | None = None
        label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)

    primary_metric = "accuracy"
    higher_is_better = True
    percent_metrics = frozenset({"accuracy"})
    label_field = "label"

    def __init__(self, options: TaskOptions | None = None) -> None:
        super().__init__(options)
        self.classes: list[str] | None = None
        #: a batch of inputs, needed only when the source heads were stripped to nn.Identity
        self.example_input: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        n = self.options.num_classes
        if n is None:
            raise TaskError("task.num_classes is not set and no data set told it")
        return int(n)

    @property
    def replaces_heads(self) -> bool:
        return True

    def bind(self, data: Any) -> None:
        """Number and names of classes from the data (``task.num_classes`` wins when set; it is
        recorded in the options, hence in the run's config.yaml); an example input batch."""
        from zootune.data.sample import as_sample

        classes = list(getattr(data, "classes", None) or [])
        if self.options.num_classes is None:
            if not classes:
                raise TaskError("task.num_classes is not set and the data set does not tell it")
            self.options.num_classes = len(classes)
        self.classes = classes or [str(i) for i in range(self.num_classes)]
        train = getattr(data, "train", None)
        if train is not None and len(train):
            x = torch.as_tensor(as_sample(train[0])[self.input_field])
            self.example_input = x.unsqueeze(0).repeat(2, *([1] * x.dim()))

    def prepare_zoo(self, models: Sequence[nn.Module], keep_source_heads: bool = False) -> list[nn.Module]:
        if keep_source_heads:
            raise TaskError("classification replaces the source heads; this method needs them kept")
        models, self.head_name = attach_head(models, self.num_classes, self.options.head, self.seed,
                                             example=self.example_input)
        return models

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), batch[self.label_field],
                               label_smoothing=self.options.label_smoothing)

    def batch_metrics(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        y = batch[self.label_field]
        loss = F.cross_entropy(outputs.float(), y, reduction="sum")
        correct = (outputs.argmax(dim=1) == y).sum()
        return {"loss_sum": loss.detach().float(), "correct": correct.float(),
                "count": torch.full((), float(y.shape[0]), device=y.device)}

    def summarize(self, totals: Mapping[str, Any]) -> dict[str, float]:
        n = max(float(totals.get("count", 0.0)), 1.0)
        return {"loss": float(totals.get("loss_sum", 0.0)) / n,
                "accuracy": float(totals.get("correct", 0.0)) / n}

    def describe(self) -> dict[str, Any]:
        shape = list(self.example_input.shape[1:]) if self.example_input is not None else None
        return {"task": self.name, "num_classes": self.options.num_classes,
                "classes": list(self.classes or []), "input_shape": shape}

    def restore(self, record: Mapping[str, Any]) -> None:
        if self.options.num_classes is None and record.get("num_classes"):
            self.options.num_classes = int(record["num_classes"])
        self.classes = list(record.get("classes") or []) or None
        if record.get("input_shape"):
            self.example_input = torch.zeros(2, *record["input_shape"])

    def check_compatible(self, recorded: Mapping[str, Any]) -> None:
        """Data to evaluate must have the classes the model was trained on."""
        trained = recorded.get("classes")
        if trained and self.classes and list(trained) != list(self.classes):
            raise TaskError(f"the data's classes {list(self.classes)[:10]} differ from the classes "
                            f"the model was trained on {list(trained)[:10]}")
        n = recorded.get("num_classes")
        if n is not None and self.classes and len(self.classes) != int(n):
            raise TaskError(f"the data has {len(self.classes)} classes but the model predicts {n}")
