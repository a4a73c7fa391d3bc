"""Let ``key=value`` overrides and ``--options`` mix in any order on a sub-command line.

``argparse`` stops filling a ``nargs="*"`` positional at the first option, so
``zootune tune cfg.yaml --out d optim.lr=0.1`` would reject ``optim.lr=0.1``. Sub-parsers made
intermixed parse positionals after options too (``parse_known_intermixed_args``).
"""

from __future__ import annotations

import argparse


class IntermixedParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``parse_known_args`` accepts options between positionals."""

    _busy = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._busy:
            return super().parse_known_args(args, namespace)
        self._busy = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._busy = False


def make_intermixed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.__class__ = IntermixedParser
    return parser
