"""Interrupt handling for long loops: SIGINT (Ctrl-C) and SIGTERM ask the loop to stop cleanly.

Any loop (the supervised trainer, an RL agent loop) wraps itself in :class:`InterruptHandler`
and checks :attr:`InterruptHandler.requested` between steps; on a request it writes a checkpoint
and returns. A second Ctrl-C raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class InterruptHandler:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`signal` instead of killing.

    Signal handlers can only be installed from the main thread; elsewhere it does nothing (the
    loop then simply never sees a request).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for (a plain attribute read: no device sync)."""
        return self.signal is not None

    def __enter__(self) -> "InterruptHandler":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop right away
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
