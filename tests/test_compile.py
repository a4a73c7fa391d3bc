"""``torch.compile`` of a ZooModel: one graph (no break per layer), same numbers as eager.

Traced with dynamo's ``aot_eager`` backend (the whole forward and the autograd graph, without
inductor's code generation, so it runs in seconds); ``fullgraph=True`` turns any graph break —
a scratch buffer, a ``.item()`` in the temporal ensemble, the no-grad weight cache — into an error.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zootune
from zootune.layers import workspace


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.mark.parametrize("lite", [False, True])
@pytest.mark.parametrize("kernel", ["unfold", "stacked"])
def test_compiled_zoo_model_is_one_graph_and_exact(lite, kernel):
    torch.manual_seed(0)
    eager = zootune.zoo_tune([_net() for _ in range(3)], lite=lite, kernel=kernel, gate_init="default").train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 3, 12, 12)
    torch._dynamo.reset()
    try:
        for _ in range(2):  # a training step changes the weights and the gate statistics
            y_e, y_c = eager(x), compiled(x)
            torch.testing.assert_close(y_c, y_e)
            y_e.square().sum().backward()
            y_c.square().sum().backward()
            for (n, p), q in zip(eager.named_parameters(), model.parameters()):
                if p.grad is not None:
                    torch.testing.assert_close(q.grad, p.grad, msg=n)
            with torch.no_grad():
                for p, q in zip(eager.parameters(), model.parameters()):
                    if p.grad is not None:
                        p.sub_(0.1 * p.grad)
                        q.sub_(0.1 * q.grad)
                        p.grad = q.grad = None
        eager.eval()
        model.eval()
        with torch.no_grad():  # inference: eager caches the aligned / merged weights, compiled does not
            for _ in range(2):
                torch.testing.assert_close(compiled(x), eager(x))
            for p, q in zip(eager.parameters(), model.parameters()):
                p.mul_(1.5)
                q.mul_(1.5)
            torch.testing.assert_close(compiled(x), eager(x))
            assert torch._dynamo.explain(model)(x).graph_break_count == 0
        model.train()
        assert torch._dynamo.explain(model)(x).graph_break_count == 0
    finally:
        torch._dynamo.reset()


def test_scratch_buffers_only_on_the_cpu():
    workspace.release()
    a = workspace.scratch("t", (3, 4), torch.float32, torch.device("cpu"))
    b = workspace.scratch("t", (2, 5), torch.float32, torch.device("cpu"))
    assert a.data_ptr() == b.data_ptr() and workspace.allocated_bytes() == 12 * 4
    m = workspace.scratch("t", (3, 4), torch.float32, torch.device("meta"))  # any other device: fresh
    assert m.device.type == "meta" and m.shape == (3, 4) and workspace.allocated_bytes() == 12 * 4
    workspace.release()
