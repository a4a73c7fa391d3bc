"""Gating network ``A_i^l`` of an AdaAgg layer (paper §3.2, Eq. 2).

``a = act(fc2(relu(fc1(pool(h)))))`` gives one value per source model for every sample. The paper
uses global average pooling and two 1x1 convolutions; on a pooled ``(B, C, 1, 1)`` map a 1x1
convolution is exactly a Linear layer, so Linear layers are used for both convolutions and Linear
layers (for a Linear layer the input is pooled over every axis except batch and features).

Kinds (``kind=``):

* ``"sigmoid"``: the paper's independent sigmoids. At a uniform start every gate is 0.5, so the
  aggregated weight is ``m/2`` times the source average: a following BatchNorm absorbs the scale,
  a Linear layer without a norm after it does not.
* ``"normalized"``: the same sigmoids divided by their sum, so the gates are a convex combination
  (sum 1) and a uniform start equals plain weight averaging. Independent sigmoids still decide
  how much each source gets; only the overall scale is removed.
* ``"softmax"``: a softmax over sources (the mixture-of-experts convention).

Initialisations (``init=``):

* ``"uniform"``: the output layer starts at zero, so every sample starts with equal gates and the
  gates move away from uniform only as far as the target loss asks;
* ``"kaiming"``: Kaiming-normal (fan-out) weights and zero biases in both layers, as the public
  reference code does; gates start sharp and vary strongly between inputs;
* ``"default"``: PyTorch's default Linear initialisation.

Remedies for gates that collapse (all off by default; see ``docs/baselines.md``, "Gate remedies"):

* **Noisy gating** (``Gate.noise``, a plain attribute, not in the state dict): Shazeer et al.,
  "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer", ICLR 2017,
  Eq. 4 without top-k. In training mode only, ``a = act(z + noise * eps)`` with
  ``z = fc2(relu(fc1(pool(h))))`` the gate logits and ``eps ~ N(0, I)`` drawn per sample and per
  source, i.e. the noise is added *before* the gate's normalisation (sigmoid, sigmoid / sum or
  softmax), so normalised gates still sum to one. The standard deviation is a **fixed**
  hyper-parameter, not the paper's learned ``softplus(x W_noise)``: in the paper that std is
  trained mainly through the load loss, whose smooth estimator is built on the top-k
  threshold; without top-k the only gradient reaching it is the task loss's, which lowers
  noise that does not help fit the batch, so a learned std would mostly shrink to zero. A fixed
  std also leaves the parameters (state dict, saved files, export) unchanged. In eval mode, and
  at ``noise == 0``, the forward is exactly the noiseless one and draws no random numbers.
* **Importance balance** (:func:`importance_loss`): Shazeer et al. 2017, Eqs. 6-7 (importance,
  its loss): the squared coefficient of variation of the per-source importance
  ``Imp_i = sum_b a_bi`` over a batch.
* **A wider gate**: ``hidden=`` (``gate_hidden`` of :func:`zootune.zoo_tune`). The default
  ``C_in // 4 + 1`` is a single ReLU unit for a layer with fewer than 4 input channels (the
  first conv of a grey-scale or RGB model); when that unit's pre-activation is negative for
  every input the gate is constant and receives no gradient for the rest of training (a dead
  gate). More hidden units make that unlikely; they cannot add information the pooled input
  does not carry (for a grey-scale first conv: one number per image, its mean intensity).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

GateKind = Literal["sigmoid", "normalized", "softmax"]
GateInit = Literal["uniform", "kaiming", "default"]
GATE_KINDS = ("sigmoid", "normalized", "softmax")
GATE_INITS = ("uniform", "kaiming", "default")


def default_hidden(in_features: int) -> int:
    """Hidden width of the gate: a quarter of the input channels, plus one (as the reference)."""
    return in_features // 4 + 1


class Gate(nn.Module):
    """Per-sample gates ``a`` (B, m) from a layer input (``A^l(h^{l-1})`` in Eq. 2).

    ``noise`` (float, default 0): the fixed standard deviation of the Gaussian noise added to the
    logits in training mode (noisy gating, module docstring). A plain attribute, not part of the
    state dict; a class attribute too, so gates pickled before it existed have it.
    """

    noise: float = 0.0

    def __init__(
        self,
        in_features: int,
        num_sources: int,
        hidden: int | None = None,
        kind: GateKind = "normalized",
        init: GateInit = "uniform",
        noise: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in GATE_KINDS:
            raise ValueError(f"gate kind {kind!r} is not one of {GATE_KINDS}")
        if init not in GATE_INITS:
            raise ValueError(f"gate init {init!r} is not one of {GATE_INITS}")
        hidden = default_hidden(in_features) if hidden is None else int(hidden)
        if hidden < 1:
            raise ValueError(f"gate hidden size must be >= 1, got {hidden}")
        self.kind = kind
        self.init = init
        self.noise = check_noise(noise)
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_sources)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()
        if self.init == "kaiming":
            for fc in (self.fc1, self.fc2):
                nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(fc.bias)
        elif self.init == "uniform":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "softmax":
            return torch.softmax(logits, dim=-1)
        s = torch.sigmoid(logits)
        if self.kind == "normalized":
            s = s / s.sum(dim=-1, keepdim=True)
        return s

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The noiseless logits ``z = fc2(relu(fc1(pooled)))`` (B, m)."""
        return self.fc2(F.relu(self.fc1(pooled)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled`` (B, C_in) -> gates (B, m); noisy logits in training when ``noise > 0``."""
        z = self.logits(pooled)
        if self.training and self.noise > 0:
            z = z + torch.randn_like(z) * self.noise
        return self.activate(z)

    @torch.no_grad()
    def neutral(self) -> torch.Tensor:
        """Gates for an all-zero pooled input: the prior used before any gate was observed
        (never noisy, in any mode)."""
        z = torch.zeros(1, self.fc1.in_features, device=self.fc1.weight.device,
                        dtype=self.fc1.weight.dtype)
        return self.activate(self.logits(z))[0]

    def extra_repr(self) -> str:
        noise = f", noise={self.noise}" if self.noise else ""
        return f"kind={self.kind}, init={self.init}{noise}"


def check_noise(noise: float) -> float:
    noise = float(noise)
    if not noise >= 0.0 or noise == float("inf"):
        raise ValueError(f"gate noise must be a finite number >= 0, got {noise}")
    return noise


def set_gate_noise(module: nn.Module, noise: float) -> int:
    """Set the noise std of every :class:`Gate` in ``module`` (noisy gating, module docstring);
    returns how many gates were set."""
    noise = check_noise(noise)
    n = 0
    for m in module.modules():
        if isinstance(m, Gate):
            m.noise = noise
            n += 1
    return n


# ---- importance balance (Shazeer et al. 2017, Eqs. 6-7) ----------------------------------------


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation along the last axis, ``Var(x) / (mean(x)^2 + eps)``
    (population variance, as the paper's reference implementation), computed in float32."""
    x = x.float()
    mean = x.mean(dim=-1)
    var = (x - mean.unsqueeze(-1)).square().mean(dim=-1)
    return var / (mean.square() + eps)


def importance_loss(gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Importance balance term (Shazeer et al. 2017, Eqs. 6-7, without the weight):
    ``mean_l CV(Imp^l)^2`` with ``Imp^l_i = sum_b a^l_bi`` the importance of source ``i`` in the
    ``l``-th gate tensor (B_l, m) of ``gates`` (one per aggregated layer of a forward).

    Zero exactly when every source receives the same total gate over the batch; it does not
    penalise per-sample routing (samples may prefer different sources as long as the batch
    totals are balanced) and, being scale-free, not the overall scale of independent sigmoid
    gates. Differentiable; an empty ``gates`` gives 0."""
    if not gates:
        return torch.zeros(())
    return torch.stack([cv_squared(a.reshape(-1, a.shape[-1]).sum(dim=0)) for a in gates]).mean()


@contextmanager
def capture_gates(gates: Iterable[Gate]) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs (B, m) of ``gates`` computed in training mode inside the block, in
    call order, with their autograd graph (temporary forward hooks: the layers' kernels are
    unchanged). The gates keep nothing after the block."""
    seen: list[torch.Tensor] = []

    def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        if mod.training:
            seen.append(out)

    handles = [g.register_forward_hook(hook) for g in gates]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def pool_conv_input(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a (B, C, H, W) input -> (B, C).

    A sum, then a division of the small result: the backward of ``sum`` broadcasts the gradient
    without writing a (B, C, H, W) tensor, which ``mean``'s backward does (a division of every
    element: 0.46 ms a step of the DER's conv2 input at batch 32 here, in an ad-hoc
    ``torch.profiler`` run)."""
    return x.sum(dim=(-2, -1)) / (x.shape[-2] * x.shape[-1])


def pool_linear_input(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but batch and features of a (B, *, F) input -> (B, F)."""
    if x.dim() == 2:
        return x
    return x.flatten(1, -2).mean(dim=1)
