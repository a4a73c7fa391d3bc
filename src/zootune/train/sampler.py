"""Deterministic, resumable batches: step ``s`` always sees the same samples.

The training stream is the concatenation of per-epoch permutations of the train set
(permutation ``e`` drawn from ``numpy.random.default_rng([seed, e])``); global batch ``s`` is
``stream[s*B:(s+1)*B]``. So the batch of a step is a pure function of ``(seed, s)``: a run
resumed at step ``s`` sees exactly what an uninterrupted run sees, whatever happened before.
Under DDP rank ``r`` of ``W`` takes the ``r``-th contiguous ``B/W`` slice of the global batch, so
``W`` processes together see the single-process batch.

Each key is ``(index, sample_seed)``, where ``sample_seed`` depends on ``(seed, epoch, index)``;
:class:`zootune.data.TransformedDataset` uses it to seed random augmentation.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the augmentation of one sample in one epoch."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64).dot([1 << 31, 1]))


class StepBatchSampler:
    """Yields the keys of global batch ``s`` (this rank's slice) for ``s = start, start+1, ...``."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, start_step: int = 0,
                 num_steps: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 1:
            raise ValueError("empty training set")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.n = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.num_steps = num_steps
        self.rank = int(rank)
        self.world_size = int(world_size)
        self._perm_cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        p = self._perm_cache.get(epoch)
        if p is None:
            p = np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch), 0xB47C]).permutation(self.n)
            self._perm_cache = {epoch: p}  # keep only the current epoch
        return p

    def global_batch(self, step: int) -> list[tuple[int, int]]:
        """Keys ``(index, sample_seed)`` of the whole global batch of ``step``."""
        start = step * self.batch_size
        keys: list[tuple[int, int]] = []
        pos = start
        while len(keys) < self.batch_size:
            epoch, off = divmod(pos, self.n)
            perm = self.permutation(epoch)
            take = min(self.batch_size - len(keys), self.n - off)
            for i in perm[off:off + take]:
                keys.append((int(i), sample_seed(self.seed, epoch, int(i))))
            pos += take
        return keys

    def batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's slice of the global batch of ``step``."""
        per = self.batch_size // self.world_size
        return self.global_batch(step)[self.rank * per:(self.rank + 1) * per]

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.n

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.num_steps is None or step < self.num_steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("infinite sampler")
        return max(0, self.num_steps - self.start_step)
