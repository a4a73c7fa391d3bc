"""CLI subcommands: one module per command, each with ``register(subparsers)``.

Owns argument parsing and printing only: every command calls the library (``zootune.train``,
``zootune.export``, ``zootune.select``, ``zootune.zoo``) and holds no logic a Python user
would need. Nothing in the library may import this package.
"""
