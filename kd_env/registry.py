"""The one registry pattern behind knowledge types, observations and rewards."""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["Registry", "check_function_params"]


class Registry(dict):
    """A name -> class mapping with clear errors.  It is a ``dict``, so it can be read as one.

    Args:
        kind: what the entries are (used in messages), e.g. ``"reward"``.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, name: str, cls: type, source: Any, overwrite: bool = False) -> None:
        """Register ``cls`` as ``name``.  Registering the same object again (same qualified name,
        e.g. a module imported twice) is harmless; another object needs ``overwrite=True``."""
        existing = self.get(name)
        if (existing is not None and not overwrite
                and existing.__qualname__ != getattr(source, "__qualname__", None)):
            raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
        cls.name = name
        self[name] = cls

    def names(self) -> list[str]:
        return sorted(self)

    def lookup(self, name: str) -> type:
        """The class registered as ``name``, or ``ValueError`` listing the valid names."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {self.names()}")
        return self[name]


def check_function_params(kind: str, name: str, accepted: Iterable[str], given: Iterable[str]) -> None:
    """``TypeError`` when a function-defined entry gets parameters its function does not take."""
    accepted = set(accepted)
    extra = [p for p in given if p not in accepted]
    if extra:
        raise TypeError(f"{kind} {name!r} got unknown parameters {extra}")
