"""The ``zootune`` command line.

Each subcommand lives in its own module under :mod:`zootune.commands` and exposes
``register(subparsers)``, which adds an ``argparse`` sub-parser and sets ``func`` (a callable
taking the parsed namespace and returning an exit code). Heavy imports happen inside ``func`` so
``zootune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# commands whose steps allocate large buffers: they default to ``--allocator auto``
TRAINING_COMMANDS = ("demo", "tune", "rl")

# Order here is the order in ``zootune --help``.
COMMAND_MODULES = (
    "demo",
    "tune",
    "eval",
    "export",
    "select",
    "zoo",
    "rl",
    "compare",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zootune",
        description=(
            "Transfer learning from a zoo of pretrained models (Zoo-Tuning, ICML 2021): "
            "aggregate several checkpoints of one architecture into one target model, "
            "train it, and export it."
        ),
    )
    from zootune import __version__

    parser.add_argument("--version", action="version", version=f"zootune {__version__}")
    parser.add_argument(
        "--allocator", default=None, metavar="NAME",
        help=("memory allocator for this run: jemalloc, tcmalloc (Debian: libjemalloc2, "
              "libtcmalloc-minimal4), auto (tcmalloc if installed), system, or a library path; "
              "re-executes the command once with LD_PRELOAD set (default: $ZOOTUNE_ALLOCATOR, else auto "
              "for the training commands demo, tune and rl, system for the others). Faster CPU "
              "training, see docs/speed.md"),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"zootune.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name == f"zootune.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import os

    from zootune.allocator import AUTO, ENV_CHOICE, AllocatorError, ensure

    try:  # only the process's own command line is re-executed, never an in-process call
        choice = args.allocator if args.allocator is not None else os.environ.get(ENV_CHOICE)
        if choice is None and args.command in TRAINING_COMMANDS:
            choice = AUTO
        note = ensure(choice, reexec=argv is None)
    except AllocatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if note:
        print(note, file=sys.stderr)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from zootune.errors import ZootuneError

    try:
        return int(args.func(args) or 0)
    except ZootuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
