"""One type checker for every typed configuration: :class:`~kd_env.config.DistillConfig`, the
experiments' config files and agent hyperparameters.

Values come from YAML, JSON or Python, so the rules are those of a config file, not of
``isinstance``: an integer is never a bool, a float field accepts an integer, a tuple field
accepts a list, ``X | None`` accepts ``None``, ``Literal[...]`` accepts only its values, and a
``str`` field accepts a path.  A class that a config file cannot express (a callable, a schedule
object) accepts instances of itself.  An annotation the checker cannot read accepts anything.

    check_types({"episodes": "three"}, {"episodes": int | None}, "config.")
    # ValueError: config.episodes must be an integer or None, got 'three' (str)
"""

from __future__ import annotations

import collections.abc
import numbers
import os
import types
import typing
from typing import Any, Mapping

__all__ = ["check_types", "check_known", "matches", "describe", "yaml_kinds", "type_hints", "DEFAULT_MESSAGE"]

#: ``{where}``, ``{name}``, ``{value}`` (the value's repr), ``{type}`` (its type's name),
#: ``{expected}`` (in words, from :func:`describe`), ``{kinds}`` (the YAML kinds that fit, from
#: :func:`yaml_kinds`) and ``{hint}`` (how to write a number PyYAML read as a string, or empty)
DEFAULT_MESSAGE = "{where}{name} must be {expected}, got {value} ({type}){hint}"
YAML_NUMBER_HINT = " (PyYAML reads 1e-3 as a string: write 1.0e-3)"

_PHRASES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
            type(None): "None"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings", dict: "mappings"}
_SEQUENCES = (list, tuple, collections.abc.Sequence)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` under the config-file rules of this module."""
    if annotation is Any or isinstance(annotation, (str, typing.TypeVar, typing.ForwardRef)):
        return True  # cannot tell: accept
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_int(value)
    if annotation is float:
        return _is_int(value) or (isinstance(value, numbers.Real) and not isinstance(value, bool))
    if annotation is str:
        return isinstance(value, (str, os.PathLike))
    container = origin or annotation
    if container in _SEQUENCES:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            return False
        items = [a for a in args if a is not Ellipsis]
        if len(items) == 1 and (len(args) == 1 or Ellipsis in args):
            return all(matches(v, items[0]) for v in value)
        if items and len(items) == len(args):  # tuple[int, str]: fixed length
            return len(value) == len(items) and all(matches(v, a) for v, a in zip(value, items))
        return True
    if container in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return False
        if len(args) == 2:
            return all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
        return True
    if container is collections.abc.Callable:
        return callable(value)
    if container is type:
        return isinstance(value, type)
    if isinstance(container, type):
        return isinstance(value, container)
    return True


def describe(annotation: Any) -> str:
    """What ``annotation`` admits, in words: ``int | None`` -> ``"an integer or None"``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        words = [describe(a) for a in args if a is not type(None)]
        if type(None) in args:
            words.append("None")
        return " or ".join(dict.fromkeys(words))
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if annotation in _PHRASES:
        return _PHRASES[annotation]
    container = origin or annotation
    if container in _SEQUENCES:
        items = [a for a in args if a is not Ellipsis]
        if len(items) == 1 and items[0] in _PLURALS:
            return f"a list of {_PLURALS[items[0]]}"
        return "a list"
    if container in (dict, collections.abc.Mapping):
        return "a mapping with string keys" if args and args[0] is str else "a mapping"
    name = getattr(container, "__name__", str(container))
    return f"a {name} object (nothing a config file can express)"


def yaml_kinds(annotation: Any) -> str:
    """The YAML kinds ``annotation`` admits, short: ``int | None`` -> ``"int or null"``,
    ``tuple[int, ...]`` -> ``"list"``."""

    def kinds(a: Any) -> set[str]:
        origin, args = typing.get_origin(a), typing.get_args(a)
        if origin in (typing.Union, types.UnionType):
            return set().union(*(kinds(x) for x in args))
        if origin is typing.Literal:
            return set().union(*(kinds(type(x)) for x in args))
        if a is None or a is type(None):
            return {"null"}
        container = origin or a
        for kind, types_ in (("bool", (bool,)), ("int", (int,)), ("float", (float,)), ("str", (str,)),
                             ("list", _SEQUENCES), ("dict", (dict, collections.abc.Mapping))):
            if container in types_:
                return {kind}
        return set()

    return " or ".join(sorted(kinds(annotation))) or "an object YAML cannot express"


def _hint(value: Any, annotation: Any) -> str:
    """:data:`YAML_NUMBER_HINT` for a string that reads as a number where a number fits."""
    if not isinstance(value, str) or not (matches(1.5, annotation) or matches(1, annotation)):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return YAML_NUMBER_HINT


def type_hints(obj: Any) -> dict[str, Any]:
    """The resolved annotations of a class, dataclass or function (``{}`` when they cannot be
    resolved)."""
    try:
        return typing.get_type_hints(obj)
    except Exception:  # noqa: BLE001 - a third-party signature whose names do not resolve
        return {}


def check_types(values: Any, annotations: Mapping[str, Any], where: str = "", *, message: str = DEFAULT_MESSAGE,
                error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the first value that does not fit its annotation.

    Args:
        values: a mapping of name -> value, or an object whose attributes are read (a dataclass).
        annotations: name -> type annotation (names absent from it are not checked; see
            :func:`check_known` for unknown names).
        where: what the values belong to, put in front of the message (e.g. ``"config."``).
        message: the error's format, with the fields of :data:`DEFAULT_MESSAGE`.
        error: the exception class to raise.
    """
    items = values.items() if isinstance(values, Mapping) else \
        ((name, getattr(values, name)) for name in annotations if hasattr(values, name))
    for name, value in items:
        if name in annotations and not matches(value, annotations[name]):
            hint = annotations[name]
            raise error(message.format(where=where, name=name, value=repr(value), type=type(value).__name__,
                                       expected=describe(hint), kinds=yaml_kinds(hint), hint=_hint(value, hint)))


def check_known(names: Any, valid: Any, where: str, what: str = "key", error: type[Exception] = ValueError) -> None:
    """Raise ``error`` listing the ``names`` that are not ``valid`` (and the valid ones)."""
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise error(f"{where}: unknown {what}(s) {unknown}; valid: {sorted(valid)}")
