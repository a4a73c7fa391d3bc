"""Compact prioritized replay for Atari: every frame stored once, stacked on sampling.

Why our own: TorchRL's and Tianshou's replay buffers store each observation as given (a stack
of 4 frames: 4x the memory, 2.8 GB for 100k steps where this needs 0.7 GB) and compute n-step
returns in the collector or as a storage-wide transform. TorchRL's ``PrioritizedSampler`` was
read and not used: its importance weights are normalised by the minimum priority over the whole
storage range, so a slot that must not be sampled (priority 0: its frame stack or n-step window
is not complete yet, or it is an episode's final frame) zeroes every weight; and its C++ trees
are checkpointed element by element. The sum/min trees here are small vectorised NumPy arrays
that checkpoint as two arrays.

Layout: slot ``p`` of a ring of ``capacity`` holds the newest frame of the observation at
time ``p``, the action taken there, the (clipped) reward, ``terminal`` (the n-step return ends
after this action: game over, or a lost life for bootstrapping), ``first`` (an episode's first
observation: the frame stack is padded with this frame, as ``FrameStackObservation`` does) and
``actionable`` (False for the final frame of an episode, which is stored only so that a
truncated episode can bootstrap from it).

A slot becomes sampleable (gets the maximum priority so far) once its n-step window is known:
``n`` later slots are written, or the episode ended before. Writing a slot over an old one
makes the old one unsampleable, and the ``stack - 1`` slots after it too (their stacks reached
into it).

Sampling (Schaul et al. 2016, proportional): ``P(i) = p_i / sum_k p_k`` with stratified draws
(one per equal slice of the total mass); importance weights ``w_i = (N P(i))^-beta / max_j
w_j = (p_i / p_min)^-beta``; new priorities are ``(loss + eps)^alpha``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zootune.errors import ZootuneError


class ReplayError(ZootuneError, RuntimeError):
    """The replay buffer was used out of order or restored from a state that does not fit it."""


class SumMinTree:
    """A sum tree and a min tree over ``capacity`` leaves (priorities; 0 = not sampleable)."""

    def __init__(self, capacity: int) -> None:
        self.size = 1 << max(0, int(capacity - 1).bit_length())
        self.capacity = int(capacity)
        self.sum = np.zeros(2 * self.size, dtype=np.float64)
        self.min = np.full(2 * self.size, np.inf, dtype=np.float64)

    def update(self, index: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``index`` to ``values`` (later duplicates win) and fix their ancestors."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if index.size == 0:
            return
        pos = index + self.size
        self.sum[pos] = values
        self.min[pos] = np.where(values > 0, values, np.inf)
        pos = np.unique(pos // 2)
        while pos[0] >= 1:
            self.sum[pos] = self.sum[2 * pos] + self.sum[2 * pos + 1]
            self.min[pos] = np.minimum(self.min[2 * pos], self.min[2 * pos + 1])
            if pos[0] == 1:
                break
            pos = np.unique(pos // 2)

    def leaves(self, index: np.ndarray) -> np.ndarray:
        return self.sum[np.asarray(index, dtype=np.int64) + self.size]

    @property
    def total(self) -> float:
        return float(self.sum[1])

    @property
    def min_value(self) -> float:
        return float(self.min[1])

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf of each ``mass`` in [0, total): the first whose cumulative sum exceeds it."""
        node = np.ones(len(mass), dtype=np.int64)
        mass = np.asarray(mass, dtype=np.float64).copy()
        while node[0] < self.size:
            left = self.sum[2 * node]
            right = mass >= left
            mass = np.where(right, mass - left, mass)
            node = 2 * node + right
        return node - self.size

    def load_leaves(self, leaves: np.ndarray) -> None:
        self.sum[:] = 0.0
        self.min[:] = np.inf
        idx = np.arange(len(leaves))
        self.update(idx, leaves)


@dataclass
class Batch:
    """A sampled minibatch (torch tensors on the CPU)."""

    index: np.ndarray            # slots
    obs: torch.Tensor            # (B, stack, H, W) uint8
    actions: torch.Tensor        # (B,) long
    returns: torch.Tensor        # (B,) n-step discounted (clipped) rewards
    next_obs: torch.Tensor       # (B, stack, H, W) uint8: the bootstrap observation
    discounts: torch.Tensor      # (B,) gamma^k of the bootstrap state, 0 after a terminal
    weights: torch.Tensor        # (B,) importance weights, max 1


class CompactReplay:
    """See the module docstring. ``frame_shape``: (H, W); ``stack``: frames per observation."""

    def __init__(self, capacity: int, frame_shape: tuple[int, int], *, stack: int = 4,
                 n_step: int = 20, discount: float = 0.99, alpha: float = 0.5,
                 eps: float = 1e-6, seed: int = 0) -> None:
        if capacity <= n_step + stack:
            raise ReplayError(f"replay capacity {capacity} must exceed n_step + stack ({n_step + stack})")
        self.capacity, self.stack, self.n_step = int(capacity), int(stack), int(n_step)
        self.discount, self.alpha, self.eps = float(discount), float(alpha), float(eps)
        self.frames = np.zeros((capacity, *frame_shape), dtype=np.uint8)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminal = np.zeros(capacity, dtype=bool)
        self.first = np.zeros(capacity, dtype=bool)
        self.actionable = np.zeros(capacity, dtype=bool)
        self.tree = SumMinTree(capacity)
        self.rng = np.random.default_rng(seed)
        self.cursor = 0          # the slot of the current observation (not yet acted on)
        self.written = 0         # slots written in total
        self.pending: list[int] = []  # acted-on slots whose n-step window is still open
        self.max_priority = 1.0
        self.open = False        # an episode is in progress

    # ---- writing ------------------------------------------------------------------------------

    def _write_frame(self, frame: np.ndarray, *, first: bool, actionable: bool) -> None:
        if self.written:
            self.cursor = (self.cursor + 1) % self.capacity
        c = self.cursor
        if self.written >= self.capacity:  # overwriting: c and the stacks reaching into it
            stale = (c + np.arange(self.stack)) % self.capacity
            self.tree.update(stale, np.zeros(len(stale)))
            self.pending = [p for p in self.pending if p not in set(stale.tolist())]
        self.frames[c] = frame
        self.first[c] = first
        self.actionable[c] = actionable
        self.terminal[c] = False
        self.rewards[c] = 0.0
        self.actions[c] = 0
        self.written += 1

    def start_episode(self, frame: np.ndarray) -> None:
        """Store an episode's first observation (its newest frame ``frame``)."""
        if self.open:
            raise ReplayError("start_episode called while an episode is open (call add with episode_end=True)")
        self._write_frame(frame, first=True, actionable=True)
        self.open = True

    def add(self, action: int, reward: float, terminal: bool, next_frame: np.ndarray,
            episode_end: bool = False) -> None:
        """Record the action taken at the current observation, its reward and whether the
        n-step return ends after it (``terminal``), then store the next observation's newest
        frame. ``episode_end``: the episode is over (terminated or truncated): the next frame
        is stored as a non-actionable final frame, and :meth:`start_episode` must follow."""
        if not self.open:
            raise ReplayError("add called before start_episode")
        c = self.cursor
        self.actions[c], self.rewards[c], self.terminal[c] = int(action), float(reward), bool(terminal)
        self.pending.append(c)
        self._write_frame(next_frame, first=False, actionable=not episode_end)
        if episode_end:
            ready, self.pending = self.pending, []
            self.open = False
        else:
            cut = 0
            while cut < len(self.pending) and (self.cursor - self.pending[cut]) % self.capacity >= self.n_step:
                cut += 1
            ready, self.pending = self.pending[:cut], self.pending[cut:]
        if ready:
            self.tree.update(np.asarray(ready), np.full(len(ready), self.max_priority))

    # ---- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of sampleable slots."""
        return int(np.count_nonzero(self.tree.leaves(np.arange(self.capacity))))

    def stacked(self, index: np.ndarray) -> np.ndarray:
        """Observations (B, stack, H, W) at slots ``index``, padded at episode starts."""
        index = np.asarray(index, dtype=np.int64)
        src = np.empty((len(index), self.stack), dtype=np.int64)
        src[:, -1] = index
        for j in range(self.stack - 2, -1, -1):
            prev = src[:, j + 1]
            src[:, j] = np.where(self.first[prev], prev, (prev - 1) % self.capacity)
        return self.frames[src]

    def nstep(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(returns, bootstrap slots, bootstrap discounts)`` of the n-step windows at
        ``index``: rewards are summed until a terminal (discount 0 from then on), the final
        frame of a truncated episode (bootstrap from it) or ``n`` steps."""
        index = np.asarray(index, dtype=np.int64)
        b = len(index)
        returns = np.zeros(b, dtype=np.float64)
        boot = (index + self.n_step) % self.capacity
        disc = np.full(b, self.discount ** self.n_step, dtype=np.float64)
        alive = np.ones(b, dtype=bool)
        for k in range(self.n_step):
            pos = (index + k) % self.capacity
            returns += np.where(alive, self.discount ** k * self.rewards[pos], 0.0)
            term = alive & self.terminal[pos]
            disc[term] = 0.0
            boot[term] = pos[term]
            nxt = (pos + 1) % self.capacity
            end = alive & ~self.terminal[pos] & ~self.actionable[nxt]
            boot[end] = nxt[end]
            disc[end] = self.discount ** (k + 1)
            alive &= ~(term | end)
        return returns, boot, disc

    def probabilities(self, index: np.ndarray) -> np.ndarray:
        """Sampling probabilities ``P(i) = p_i / sum_k p_k`` of slots ``index``."""
        return self.tree.leaves(index) / self.tree.total

    def sample(self, batch_size: int, beta: float) -> Batch:
        """A prioritized minibatch with importance weights (see the module docstring)."""
        total = self.tree.total
        if total <= 0:
            raise ReplayError("nothing to sample yet: no slot has a complete n-step window")
        edges = np.arange(batch_size, dtype=np.float64) * (total / batch_size)
        mass = np.minimum(edges + self.rng.random(batch_size) * (total / batch_size), np.nextafter(total, 0))
        index = self.tree.find(mass)
        prio = self.tree.leaves(index)
        for _ in range(8):  # rounding at a boundary can land on an empty leaf: draw again
            bad = prio <= 0
            if not bad.any():
                break
            index[bad] = self.tree.find(self.rng.random(int(bad.sum())) * total)
            prio = self.tree.leaves(index)
        if (prio <= 0).any():
            raise ReplayError("sampling kept landing on empty slots (corrupt priorities)")
        weights = (prio / self.tree.min_value) ** (-beta)
        returns, boot, disc = self.nstep(index)
        return Batch(
            index=index,
            obs=torch.from_numpy(self.stacked(index)),
            actions=torch.from_numpy(self.actions[index]),
            returns=torch.from_numpy(returns.astype(np.float32)),
            next_obs=torch.from_numpy(self.stacked(boot)),
            discounts=torch.from_numpy(disc.astype(np.float32)),
            weights=torch.from_numpy(weights.astype(np.float32)),
        )

    def update_priorities(self, index: np.ndarray, losses: np.ndarray | torch.Tensor) -> None:
        """New priorities ``(loss + eps)^alpha`` for sampled slots (still-valid ones only)."""
        losses = np.asarray(losses.detach().cpu() if isinstance(losses, torch.Tensor) else losses,
                            dtype=np.float64)
        prio = (np.abs(losses) + self.eps) ** self.alpha
        index = np.asarray(index, dtype=np.int64)
        keep = self.tree.leaves(index) > 0  # a slot overwritten meanwhile stays empty
        self.tree.update(index[keep], prio[keep])
        if keep.any():
            self.max_priority = max(self.max_priority, float(prio[keep].max()))

    # ---- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything, as tensors and plain values (for :class:`zootune.train.TrainState` extras;
        the arrays are shared, not copied)."""
        n = min(self.written, self.capacity)
        return {
            "capacity": self.capacity, "stack": self.stack, "n_step": self.n_step,
            "frame_shape": list(self.frames.shape[1:]),
            "frames": torch.from_numpy(self.frames[:n]),
            "actions": torch.from_numpy(self.actions[:n]),
            "rewards": torch.from_numpy(self.rewards[:n]),
            "terminal": torch.from_numpy(self.terminal[:n]),
            "first": torch.from_numpy(self.first[:n]),
            "actionable": torch.from_numpy(self.actionable[:n]),
            "priorities": torch.from_numpy(self.tree.leaves(np.arange(self.capacity))),
            "cursor": self.cursor, "written": self.written, "pending": list(self.pending),
            "max_priority": self.max_priority, "open": self.open,
            "rng": json.dumps(self.rng.bit_generator.state),
        }

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (into a buffer built with the same settings)."""
        for key in ("capacity", "stack", "n_step"):
            if int(st[key]) != getattr(self, key):
                raise ReplayError(f"the checkpoint's replay has {key}={st[key]}, this run {getattr(self, key)}")
        if tuple(st["frame_shape"]) != self.frames.shape[1:]:
            raise ReplayError(f"the checkpoint's replay frames are {tuple(st['frame_shape'])}, "
                              f"this run's {self.frames.shape[1:]}")
        n = int(st["frames"].shape[0])
        for key in ("frames", "actions", "rewards", "terminal", "first", "actionable"):
            getattr(self, key)[:n] = st[key].numpy()
        self.tree.load_leaves(st["priorities"].numpy())
        self.cursor, self.written = int(st["cursor"]), int(st["written"])
        self.pending = [int(p) for p in st["pending"]]
        self.max_priority, self.open = float(st["max_priority"]), bool(st["open"])
        self.rng.bit_generator.state = json.loads(st["rng"])
