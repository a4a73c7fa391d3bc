"""Errors raised while finding, reading and checking zoo members.

All derive from :class:`zootune.errors.ZootuneError`, so the CLI prints them as one line
(``error: ...``) instead of a stack trace. Each message names the spec (or file) involved and,
where relevant, the cache directory that was searched, so the user knows what to fix.
"""

from __future__ import annotations

from zootune.errors import CheckpointError, HeadError, ZooMismatchError, ZootuneError

__all__ = [
    "CheckpointError",
    "DownloadError",
    "HeadError",
    "NonFiniteWeightsError",
    "OfflineError",
    "UnsafeCheckpointError",
    "ZooMismatchError",
    "ZooSpecError",
    "ZootuneError",
]


class ZooSpecError(ZootuneError, ValueError):
    """A zoo spec or preset name cannot be understood (unknown kind, model, weights or option)."""


class OfflineError(ZootuneError, RuntimeError):
    """Weights are needed, are not in any local cache, and downloading is not allowed."""


class DownloadError(ZootuneError, RuntimeError):
    """Downloading weights failed (no network, unknown URL, hash mismatch...)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint holds objects whose unpickling would run code: refused."""


class NonFiniteWeightsError(CheckpointError, ZooMismatchError):
    """A parameter or buffer of a loaded model holds NaN or Inf values."""
