"""Single-model baselines: ``finetune`` (one source, fine-tuned) and ``scratch`` (its
architecture, randomly initialised). Each trains an ordinary model of the zoo's architecture
carrying the task head; the exported model is that model itself.
"""

from __future__ import annotations

from pydantic import Field

from torch import nn

from zootune.methods.base import BuildContext, Method, MethodError, MethodOptions, register


def _source_index(source: int | str, ctx: BuildContext) -> int:
    names = list(getattr(ctx.zoo, "names", []) or [])
    if isinstance(source, str):
        if source not in names:
            raise MethodError(f"method.source {source!r} is not a zoo member; members: {', '.join(names)}")
        return names.index(source)
    if not 0 <= source < len(ctx.zoo):
        raise MethodError(f"method.source={source} but the zoo has {len(ctx.zoo)} models"
                          + (f" ({', '.join(names)})" if names else ""))
    return source


@register("finetune")
class FineTune(Method):
    """Fine-tune one source with a fresh task head (the paper's per-source baseline)."""

    class Options(MethodOptions):
        #: which zoo member: its index or its name
        source: int | str = Field(default=0)

    def build(self, ctx: BuildContext) -> nn.Module:
        i = _source_index(self.options.source, ctx)
        return ctx.target_models()[i]


def reset_parameters(model: nn.Module) -> nn.Module:
    """Re-initialise every submodule that has ``reset_parameters`` (PyTorch's own inits)."""
    for m in model.modules():
        fn = getattr(m, "reset_parameters", None)
        if callable(fn):
            fn()
    return model


@register("scratch")
class Scratch(Method):
    """Train the zoo's architecture from a random initialisation (no transfer): the floor every
    transfer method must beat. Every module with ``reset_parameters`` is re-initialised
    (BatchNorm statistics included), seeded by ``train.seed``."""

    class Options(MethodOptions):
        #: which member's structure to copy (only matters for zoos of one architecture with
        #: different heads)
        source: int | str = Field(default=0)

    def build(self, ctx: BuildContext) -> nn.Module:
        i = _source_index(self.options.source, ctx)
        return reset_parameters(ctx.target_models()[i])
