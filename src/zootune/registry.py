"""A registry of plug-in classes selected by name from a config (methods, tasks).

Each plug-in class carries a nested pydantic ``Options`` model; registering it under a name
makes ``{name: NAME, ...options}`` in a config build it. An ``Options`` inherited from a parent
plug-in gets a subclass of its own, so every registered name has its own options class (named in
config errors).
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """``{name: plug-in class}`` with a ``register`` decorator and clear errors."""

    def __init__(self, kind: str, base: type, options_base: type, error: type[Exception]) -> None:
        self.kind = kind
        self.base = base
        self.options_base = options_base
        self.error = error
        self._entries: dict[str, C] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: make ``{kind}: NAME`` in a config build this class."""

        def deco(cls: C) -> C:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"register({name!r}) expects a {self.base.__name__} subclass, got {cls!r}")
            if not issubclass(cls.Options, self.options_base):
                raise TypeError(f"{cls.__name__}.Options must subclass {self.options_base.__name__}")
            if "Options" not in cls.__dict__:
                from pydantic import create_model

                cls.Options = create_model(f"{cls.__name__}Options", __base__=cls.Options)
            cls.name = name
            cls.Options.plugin_name = name  # named in config errors
            self._entries[name] = cls
            return cls

        return deco

    def available(self) -> list[str]:
        """The registered names (what a config's ``{kind}:`` may say)."""
        return sorted(self._entries)

    def get(self, name: str) -> C:
        """The class registered as ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}; valid {self.kind}s: "
                             f"{', '.join(self.available())}") from None
