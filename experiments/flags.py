"""Command-line flags generated from a config dataclass, and the one way a runner turns defaults,
a YAML file, ``--set`` overrides and flags into a validated config.

One source of truth: a config dataclass's fields give each flag its name, type, default and help.

* name: ``--kebab-name`` of the field (``metadata={"flag": "--other"}`` renames it, ``"flag":
  None`` leaves the field to the YAML file and ``--set``);
* type: from the annotation: ``int``, ``float``, ``str``; ``bool`` gives ``--x/--no-x``;
  ``X | None`` is ``X``; ``Literal[...]`` (or ``metadata={"choices": ...}``) gives choices;
  ``list[X]`` / ``tuple[X, ...]`` take a comma-separated list; ``metadata={"type": f}`` parses
  the text with ``f`` instead (e.g. :func:`experiments.cli.parse_seeds`); ``metadata={"repeat":
  True}`` makes the flag repeatable, one item a use (``--set A --set B``: a list, each item parsed
  by ``metadata["type"]`` or the list's item type); a mapping or any other type has no flag
  (YAML file and ``--set`` only);
* default: the field's, shown in the help (a flag that is not given leaves the field alone);
* help: the field's attribute docstring (the string literal right after the field, the
  convention of every config dataclass here), or ``metadata={"help": ...}``; ``metadata={"note":
  ...}`` adds a text shared between runners after it (e.g. :data:`experiments.cli.SEEDS_FORMS`).

:func:`build_config` merges ``defaults < YAML file < --set KEY=VALUE < flags``, builds the
config and validates it **once** (its ``validate()``), and only then runs the I/O steps it is
given (reading a checkpoint, a folder check), so that a bad value never touches a file.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import yaml

__all__ = ["ConfigError", "add_config_flags", "build_config", "deep_merge", "field_docs", "flag_name",
           "given_flags", "load_yaml_mapping", "parse_sets", "add_config_file_flags"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be built: an unreadable file, an unknown key, a bad ``--set``."""


# ---- help from the attribute docstrings ------------------------------------------------------


#: a Sphinx cross-reference, ``:mod:`x``` or ``:func:`~a.b```: its target is what help shows
_ROLE = re.compile(r":\w+:`~?([^`]+)`")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass's attribute docstrings (the string literal right
    after ``name: type = default``), base classes first; whitespace folded, ``````code``````
    marks and Sphinx roles dropped."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and \
                    isinstance(after.value.value, str):
                text = _ROLE.sub(r"\1", after.value.value).replace("``", "")
                docs[node.target.id] = " ".join(text.split())
    return docs


# ---- flags from fields -----------------------------------------------------------------------


def flag_name(field: dataclasses.Field) -> str | None:
    """The flag of ``field``: ``metadata["flag"]`` where given (``None``: no flag), else
    ``--kebab-name``."""
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _comma_list(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [item(x.strip()) for x in text.split(",") if x.strip()]

    parse.__name__ = f"comma-separated {getattr(item, '__name__', 'value')}"  # argparse names it in errors
    return parse


def _argument(field: dataclasses.Field, annotation: Any) -> dict[str, Any] | None:
    """argparse keywords for ``field`` (``None``: the type has no flag)."""
    meta = field.metadata
    kind = _unwrap_optional(annotation)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    keywords: dict[str, Any] = {}
    if "choices" in meta:
        keywords["choices"] = list(meta["choices"])
    if meta.get("repeat"):  # one item a use: --flag A --flag B
        item = args[0] if origin in (list, tuple) and args and args[0] in (int, float, str) else str
        keywords.update(action="append", type=meta.get("type", item))
    elif "type" in meta:
        keywords["type"] = meta["type"]
    elif kind is bool:
        keywords["action"] = argparse.BooleanOptionalAction
    elif kind in (int, float, str):
        keywords["type"] = kind
    elif origin is typing.Literal:
        keywords.setdefault("choices", list(args))
        keywords["type"] = type(args[0])
    elif origin in (list, tuple) and args and args[0] in (int, float, str) and \
            (origin is list or len(args) == 1 or args[1] is Ellipsis):
        keywords["type"] = _comma_list(args[0])
        keywords.setdefault("metavar", "A,B,...")
    else:
        return None
    if "metavar" in meta:
        keywords["metavar"] = meta["metavar"]
    elif "metavar" not in keywords and "choices" not in keywords and \
            keywords.get("action") is not argparse.BooleanOptionalAction:
        keywords["metavar"] = field.name.upper()
    return keywords


def _default_text(field: dataclasses.Field) -> str | None:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return None
    if value is None or value == [] or value == {}:
        return None
    if isinstance(value, bool):
        return f"--{field.name.replace('_', '-')}" if value else f"--no-{field.name.replace('_', '-')}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                     only: Iterable[str] | None = None, exclude: Iterable[str] = (), prefix: str = "",
                     default_note: str | None = None, help: Mapping[str, str] | None = None) -> list[str]:
    """Add a flag per field of dataclass ``cls`` (those in ``only``, in field order, less
    ``exclude`` and fields without a flag: see the module's doc).  A flag not given is absent from
    the parsed namespace (``argparse.SUPPRESS``): :func:`given_flags` reads the ones given, under
    ``prefix + field name``.  ``default_note`` replaces the help's default (e.g. ``"the
    preset's"``); ``help`` replaces the docstring of the fields it names.  Returns the fields
    that got a flag."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    wanted = None if only is None else list(only)
    skip = set(exclude)
    added = []
    for field in dataclasses.fields(cls):
        if (wanted is not None and field.name not in wanted) or field.name in skip:
            continue
        flag = flag_name(field)
        keywords = None if flag is None else _argument(field, hints[field.name])
        if flag is None or keywords is None:
            continue
        text = (help or {}).get(field.name) or field.metadata.get("help") or docs.get(field.name, "")
        if field.metadata.get("note"):
            text = f"{text}: {field.metadata['note']}" if text else field.metadata["note"]
        default = default_note if default_note is not None else _default_text(field)
        if default is not None and "default" not in text:
            text = f"{text} (default: {default})" if text else f"default: {default}"
        flags = [flag, *field.metadata.get("aliases", ())]
        parser.add_argument(*flags, dest=prefix + field.name, default=argparse.SUPPRESS,
                            help=text.replace("%", "%%"), **keywords)
        added.append(field.name)
    return added


def given_flags(args: argparse.Namespace, names: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """The flags of :func:`add_config_flags` that were given: ``{field: value}`` for each of
    ``names`` whose entry ``prefix + name`` is in the namespace (a flag not given has none)."""
    values = vars(args)
    return {name: values[prefix + name] for name in names if prefix + name in values}


# ---- the config file and --set ---------------------------------------------------------------


def add_config_file_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--config FILE.yaml`` and ``--set KEY=VALUE`` (repeatable) on ``parser``; ``what``
    names the config's keys in the help."""
    parser.add_argument("--config", metavar="FILE.yaml", help=f"YAML file of {what} keys (--set and the flags "
                                                              f"override it)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help=f"set one {what} key (repeatable; over --config, under the flags): the value is "
                             f"read as YAML ('3', '1.0e-3', '[0, 1]', 'true'); KEY.SUB sets a key of a mapping, "
                             f"e.g. distill.total_steps=20")


def load_yaml_mapping(path: str | Path, keys: Sequence[str]) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (plain data only: no tags that build objects).

    Raises:
        ConfigError: a folder, no file, not YAML, or not a mapping; the message names ``keys``.
    """
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"--config {path} is a folder; pass a YAML file of keys {list(keys)} (e.g. a run's "
                          f"config.yaml)")
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise ConfigError(f"{path} is not a plain YAML mapping of keys {list(keys)} ({first})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys {list(keys)}")
    return loaded


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["a=3", "m.k=[1, 2]"]`` -> ``{"a": 3, "m": {"k": [1, 2]}}`` (values read as YAML).

    Raises:
        ConfigError: an item without ``=`` or with an empty key, or a value that is not YAML.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not eq or not all(parts):
            raise ConfigError(f"--set takes KEY=VALUE (KEY.SUB=VALUE for a key of a mapping), got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: the value is not plain YAML") from None
        for part in reversed(parts[1:]):
            value = {part: value}
        out = deep_merge(out, {parts[0]: value})
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top; mappings in both are merged key by key."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---- one build: merge, validate once, then I/O ------------------------------------------------


def build_config(cls: Callable[..., T], *, file: str | Path | None = None, sets: Sequence[str] = (),
                 flags: Mapping[str, Any] | None = None, keys: Sequence[str] | None = None,
                 prepare: Callable[[dict[str, Any]], None] | None = None,
                 io: Sequence[Callable[[T], None]] = ()) -> T:
    """The config of ``defaults < file < sets < flags``: merged (mappings key by key), checked for
    unknown keys, given to ``prepare`` (which may fill defaults that depend on the merged
    values), built with ``cls(**data)``, validated once with its ``validate()`` (where it has
    one), and only then given to each of ``io`` in turn (checks that read files: nothing reads a
    file for a config that does not validate).

    Raises:
        ConfigError: the file or a ``--set`` cannot be read, or a key is unknown.
        ValueError: from ``validate()`` (or an ``io`` step), naming the bad key.
    """
    if keys is None:
        keys = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    data = load_yaml_mapping(file, keys) if file is not None else {}
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} in {file}; valid: {list(keys)}")
    data = deep_merge(data, parse_sets(sets))
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} in --set; valid: {list(keys)}")
    data = deep_merge(data, flags or {})
    if prepare is not None:
        prepare(data)
    config = cls(**data)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    for step in io:
        step(config)
    return config
