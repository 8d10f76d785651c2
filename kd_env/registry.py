"""The one registry pattern behind knowledge types, observations, rewards and agents."""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["Registry", "check_function_params"]


class Registry(dict):
    """A name -> class (or factory) mapping with clear errors.  It is a ``dict``, so it can be
    read as one; entries keep the order they were first registered in.

    Args:
        kind: what the entries are (used in messages), e.g. ``"reward"``.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        #: name -> what was registered with the entry besides the object (see :meth:`add`)
        self.info: dict[str, dict[str, Any]] = {}

    def add(self, name: str, cls: Any, source: Any, overwrite: bool = False, *, set_name: bool = True,
            **info: Any) -> None:
        """Register ``cls`` as ``name``.  Registering the same object again (the same object, or
        the same qualified name, e.g. a module imported twice) is harmless; another object needs
        ``overwrite=True``.

        Args:
            name: the registry name.
            cls: the entry.
            source: what the caller registered (``cls`` itself, or the function ``cls`` wraps).
            overwrite: allow replacing another object.
            set_name: set ``cls.name = name``.
            **info: facts kept with the entry in :attr:`info` (replacing any kept before).
        """
        existing = self.get(name)
        if (existing is not None and not overwrite and existing is not cls
                and existing.__qualname__ != getattr(source, "__qualname__", None)):
            raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
        if set_name:
            cls.name = name
        self[name] = cls
        self.info[name] = dict(info)

    def names(self) -> list[str]:
        return sorted(self)

    def lookup(self, name: str) -> type:
        """The class registered as ``name``, or ``ValueError`` listing the valid names."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {self.names()}")
        return self[name]

    def copy(self) -> "Registry":
        """A registry of the same kind with the same entries and info (changing it leaves this
        one as it is)."""
        new = type(self)(self.kind)
        new.update(self)
        new.info = {name: dict(info) for name, info in self.info.items()}
        return new


def check_function_params(kind: str, name: str, accepted: Iterable[str], given: Iterable[str]) -> None:
    """``TypeError`` when a function-defined entry gets parameters its function does not take."""
    accepted = set(accepted)
    extra = [p for p in given if p not in accepted]
    if extra:
        raise TypeError(f"{kind} {name!r} got unknown parameters {extra}")
