"""The Data-Efficient Rainbow network (van Hasselt et al. 2019; the paper's appendix A.1).

Two convolutions (``conv1``: 32 filters 5x5 stride 5; ``conv2``: 64 filters 5x5 stride 5), each
followed by a ReLU module (``act1``, ``act2``: no parameters, there so that hooks can read or
replace the activations), a flatten, then a dueling head of noisy linear layers (value and
advantage streams, each ``hidden`` -> output) producing a C51 distribution over ``atoms``
returns for every action.
Only ``conv1`` and ``conv2`` are aggregated by Zoo-Tuning (``zoo_tune(..., layers=["conv1",
"conv2"])``); the head is new on every target game.

The noisy layers are TorchRL's :class:`torchrl.modules.NoisyLinear` (factorised Gaussian noise,
Fortunato et al. 2018, with the DER reference code's initialisation), driven by the module's
train/eval mode: noise in ``train()``, the mean weights in ``eval()`` (the greedy evaluation
policy). Noise is resampled only by :meth:`DERNetwork.reset_noise`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from zootune.errors import ZootuneError


class RLDependencyError(ZootuneError, ImportError):
    """An optional RL dependency (torchrl, gymnasium, ale-py, opencv) is not installed."""


def _noisy_linear_cls():
    try:
        from torchrl.modules import NoisyLinear
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RLDependencyError(f"the RL agent needs torchrl ({exc}): pip install 'zootune[rl]'") from None
    return NoisyLinear


def _linear(cfg: Any, n_in: int, n_out: int) -> nn.Module:
    if cfg.noisy:
        return _noisy_linear_cls()(n_in, n_out, std_init=cfg.noisy_sigma0, use_exploration_type=False)
    return nn.Linear(n_in, n_out)


class DERNetwork(nn.Module):
    """``forward(obs uint8 (B, stack, H, W)) -> log-probabilities (B, actions, atoms)``.

    Args:
        num_actions: the game's action count.
        cfg: an :class:`zootune.rl.config.AgentConfig` (channels, kernel, stride, hidden,
            dueling, noisy, sigma0, atoms).
        in_channels: stacked frames; ``screen_size``: frame height/width.
    """

    def __init__(self, num_actions: int, cfg: Any, in_channels: int = 4, screen_size: int = 84) -> None:
        super().__init__()
        c1, c2 = cfg.channels
        self.num_actions = int(num_actions)
        self.atoms = int(cfg.atoms)
        self.dueling = bool(cfg.dueling)
        self.conv1 = nn.Conv2d(in_channels, c1, cfg.kernel_size, stride=cfg.stride)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, cfg.kernel_size, stride=cfg.stride)
        self.act2 = nn.ReLU()
        side = (screen_size - cfg.kernel_size) // cfg.stride + 1
        side = (side - cfg.kernel_size) // cfg.stride + 1
        if side < 1:
            raise ZootuneError(f"screen_size {screen_size} is too small for two {cfg.kernel_size}x"
                               f"{cfg.kernel_size} stride-{cfg.stride} convolutions")
        self.feature_size = c2 * side * side
        self.fc_h_a = _linear(cfg, self.feature_size, cfg.hidden)
        self.fc_z_a = _linear(cfg, cfg.hidden, self.num_actions * self.atoms)
        if self.dueling:
            self.fc_h_v = _linear(cfg, self.feature_size, cfg.hidden)
            self.fc_z_v = _linear(cfg, cfg.hidden, self.atoms)

    @staticmethod
    def scale(obs: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """uint8 frames -> floats in [0, 1]; a float input is taken as already scaled.

        ``channels_last``: store the result NHWC (one copy from the uint8 frames). The network
        computes the same function in either layout; which is faster depends on the convolution
        kernels (``run.channels_last``, :func:`zootune.rl.config.input_channels_last`)."""
        if obs.dtype == torch.uint8:
            if channels_last and obs.dim() == 4:
                out = torch.empty(obs.shape, dtype=torch.float32, device=obs.device,
                                  memory_format=torch.channels_last)
                return out.copy_(obs).div_(255.0)
            return obs.float().div_(255.0)
        return obs.contiguous(memory_format=torch.channels_last) if channels_last and obs.dim() == 4 else obs

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.scale(obs)).flatten(1)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The two convolutions and their activations on a float input (B, stack, H, W)."""
        return self.act2(self.conv2(self.act1(self.conv1(x))))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.features(obs)
        a = self.fc_z_a(F.relu(self.fc_h_a(h))).view(-1, self.num_actions, self.atoms)
        if self.dueling:
            v = self.fc_z_v(F.relu(self.fc_h_v(h))).view(-1, 1, self.atoms)
            a = v + a - a.mean(dim=1, keepdim=True)
        return F.log_softmax(a, dim=-1)

    def reset_noise(self) -> None:
        """Resample the factorised noise of every noisy layer (no-op without noisy layers)."""
        reset_noise(self)


def reset_noise(model: nn.Module) -> None:
    """Resample the noise of every noisy layer inside ``model`` (a DER network or a ZooModel)."""
    for m in model.modules():
        fn = getattr(m, "reset_noise", None)
        if callable(fn) and not isinstance(m, DERNetwork) and m is not model:
            fn()


def q_values(log_probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Expected returns ``(B, actions)`` of C51 log-probabilities ``(B, actions, atoms)``."""
    return (log_probs.exp() * support).sum(-1)
