"""Plug-ins of one's own used by several tests (and by the DDP worker): not a test module."""

from __future__ import annotations

from torch import nn

from zootune.methods import FineTune, MethodOptions, register


@register("test_scaled_finetune")
class ScaledFineTune(FineTune):
    """Fine-tuning with a learned output temperature (an extra module) and an extra loss term."""

    class Options(MethodOptions):
        source: int = 0
        penalty: float = 0.5

    def build(self, ctx):
        self.temperature = nn.Linear(1, 1, bias=False)
        nn.init.constant_(self.temperature.weight, 1.0)
        self.calls = 0
        return super().build(ctx)

    def extra_modules(self, model):
        return {"temperature": self.temperature}

    def loss(self, model, batch, task):
        self.calls += 1
        logits = task.forward(model, batch) * self.temperature.weight.squeeze()
        return task.loss(logits, batch) + self.options.penalty * self.temperature.weight.pow(2).sum(), logits
