"""Reading CSV/TSV tables with a header into rows and class ids.

Errors name the file and the line (the header is line 1): a file that is not UTF-8 (with the
byte offset), a row with more or fewer fields than the header, a missing column, no data rows,
an empty label or text, a label that is not a class id, integer ids and class names mixed, a
name outside the given class names.  :func:`kd_env.data.load_task` builds splits from these
rows, and :mod:`kd_env.datacheck` checks the splits (sizes, classes).

Files are read as UTF-8; a byte-order mark (Excel's "CSV UTF-8") is dropped.

Labels (:func:`class_names`): integers ``0..C-1`` are the class ids as they are; any other set
of non-negative integers (``1..C``, ``{0, 2}``) and class names are mapped to ``0..C-1`` in
sorted (numeric for integers) order, and :func:`describe_mapping` words the mapping for the
one warning that shows it.  ``labels=`` (``DistillConfig.labels``, ``--labels``) names the
classes in class-id order instead, and then nothing is remapped behind the user's back.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["Rows", "LabelMappingWarning", "read_text", "read_rows", "class_names", "describe_mapping", "label_ids"]


class LabelMappingWarning(UserWarning):
    """A local task's labels were mapped to class ids (class names, or integers other than
    ``0..C-1``); the message names the files and shows the mapping."""

#: one table's rows: (texts, second texts or None, [(line number, raw label)])
Rows = tuple[list[str], list[str] | None, list[tuple[int, str]]]


def read_text(path: Path) -> str:
    """The text of a UTF-8 file, without a byte-order mark.

    Raises:
        ValueError: the file is not UTF-8; the message names the file, the line, the byte offset
            (from the start of the file, 0-based) and the byte, and says to save it as UTF-8.
    """
    raw = Path(path).read_bytes()
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = raw.count(b"\n", 0, offset) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8: byte 0x{raw[offset]:02x} at byte offset {offset} ({exc.reason}); "
            f"save the file as UTF-8 (in Excel: Save As 'CSV UTF-8'; or convert it, e.g. "
            f"iconv -f cp1252 -t utf-8 in.csv > out.csv)"
        ) from None


def read_rows(path: Path, text_cols: tuple[str, str | None] | None = None, label_col: str = "label",
              allow_empty_text: bool = False) -> Rows:
    """The rows of a CSV/TSV with a header, labels unconverted (the checks: see the module
    docstring; :func:`label_ids` converts the labels)."""
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    expected = "a header row with columns text[,text_b],label" if text_cols is None else \
        f"a header row with columns {[c for c in (*text_cols, label_col) if c]}"
    fh = io.StringIO(read_text(path), newline="")
    reader = csv.DictReader(fh, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)
    header = reader.fieldnames or []
    if not header:
        raise ValueError(f"{path}: empty file, no rows; expected {expected} and one example per line")
    a, b = text_cols or ("text", "text_b" if "text_b" in header else None)
    missing = [c for c in (a, b, label_col) if c is not None and c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {header}; expected "
                         f"{[c for c in (a, b, label_col) if c]}")
    ta: list[Any] = []
    tb: list[Any] | None = [] if b else None
    ys: list[Any] = []
    for row in reader:
        line_no = reader.line_num  # the physical line (a quoted field may span lines)
        if None in row or None in row.values():
            fields = len(header) + len(row.get(None) or []) - sum(v is None for k, v in row.items() if k is not None)
            hint = ("a text cannot hold a tab in a TSV file" if delim == "\t"
                    else "a text holding a comma must be in double quotes")
            raise ValueError(f"{path}:{line_no}: {fields} field{'s' if fields != 1 else ''}, but the header (line 1) "
                             f"has {len(header)} ({header}); every row needs exactly one field per column ({hint})")
        raw = row[label_col]
        if raw.strip() == "":
            raise ValueError(f"{path}:{line_no}: empty {label_col!r}")
        for col in (a, b):
            if col is not None and not allow_empty_text and not row[col].strip():
                raise ValueError(f"{path}:{line_no}: empty text in column {col!r}; every example needs text")
        ta.append(row[a])
        if tb is not None:
            tb.append(row[b])
        ys.append((line_no, raw.strip()))
    if not ys:
        raise ValueError(f"{path}: no rows (only a header); expected {expected} and one example per line")
    return ta, tb, ys


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


_INTEGER_RULE = ("integers 0..C-1 are the class ids; any other set of non-negative integers is mapped to 0..C-1 "
                 "in numeric order")


def class_names(tables: Sequence[tuple[Path, list[tuple[int, str]]]]) -> list[str] | None:
    """The class names of local tables' raw labels in class-id order, or ``None`` when the
    labels are the integers ``0..C-1`` (class ids as they are; a class may be missing from a
    file but not from all of them).

    Other non-negative integer sets give their values as names in numeric order (``1..C`` ->
    ``["1", ..., "C"]``: label ``1`` is class 0), class names give themselves in sorted order.

    Raises:
        ValueError: naming the file and line, when integers and names are mixed or an integer
            label is negative.
    """
    first: tuple[Path, int, str] | None = None
    for path, ys in tables:
        for line_no, y in ys:
            if first is None:
                first = (path, line_no, y)
            elif _is_integer(y) != _is_integer(first[2]):
                kind = "an integer" if _is_integer(y) else "a class name"
                other = "the integer" if _is_integer(first[2]) else "the class name"
                raise ValueError(f"{path}:{line_no}: label {y!r} is {kind}, but {first[0]}:{first[1]} has {other} "
                                 f"{first[2]!r}; labels must be all integers 0..C-1 (class ids) or all class names "
                                 f"(ids in sorted order, or in the order of DistillConfig.labels / --labels)")
            if _is_integer(y) and int(y) < 0:
                raise ValueError(f"{path}:{line_no}: label {y!r} is not a class index; labels must be integers "
                                 f"0..C-1, or all class names ({_INTEGER_RULE}; a negative integer is neither)")
    if first is None:
        return None
    if _is_integer(first[2]):
        values = sorted({int(y) for _, ys in tables for _, y in ys})
        if values == list(range(len(values))):
            return None
        return [str(v) for v in values]
    return sorted({y for _, ys in tables for _, y in ys})


def describe_mapping(paths: Sequence[Path], names: Sequence[str], integers: bool) -> str:
    """The words of the one warning that shows how :func:`class_names` mapped labels to ids."""
    pairs = ", ".join(f"{n!r} -> {i}" for i, n in enumerate(names[:20])) + (", ..." if len(names) > 20 else "")
    where = ", ".join(str(p) for p in paths)
    if integers:
        why = (f"integer labels {[int(n) for n in names[:20]]}{' ...' if len(names) > 20 else ''} are not "
               f"0..{len(names) - 1}, so they are mapped to class ids in numeric order")
    else:
        why = "class names get ids in sorted order"
    return (f"{where}: {why}: {pairs} ({len(names)} classes). Pass labels= (DistillConfig.labels, --labels) with "
            f"the names in class-id order to choose another order or class count")


def label_ids(path: Path, ys: list[tuple[int, str]], regression: bool = False,
              label_names: Sequence[str] | None = None) -> np.ndarray:
    """Raw labels as class ids (floats for ``regression``; indices into ``label_names`` when
    given); ``ValueError`` naming the file and line of a label that does not fit."""
    if regression:
        values = []
        for line_no, y in ys:
            try:
                values.append(float(y))
            except ValueError:
                raise ValueError(f"{path}:{line_no}: label {y!r} is not a number (regression task)") from None
        labels = np.asarray(values, dtype=np.float32)
    elif label_names is not None:
        names = list(label_names)
        index = {name: i for i, name in enumerate(names)}
        # an integer label may be written "01" or "+1": the names of remapped integers are "1"
        key = lambda y: y if y in index or not _is_integer(y) else str(int(y))  # noqa: E731
        bad = [(n, y) for n, y in ys if key(y) not in index]
        if bad:
            raise ValueError(f"{path}:{bad[0][0]}: unknown label {bad[0][1]!r} "
                             f"({len({y for _, y in bad})} unknown in all: {sorted({y for _, y in bad})[:5]}); "
                             f"valid: {names}")
        labels = np.asarray([index[key(y)] for _, y in ys], dtype=np.int64)
    else:
        values = []
        for line_no, y in ys:
            try:
                value = int(y)
            except ValueError:
                value = -1
            if value < 0:
                raise ValueError(f"{path}:{line_no}: label {y!r} is not a class index; labels must be integers "
                                 f"0..C-1, or all class names")
            values.append(value)
        labels = np.asarray(values, dtype=np.int64)
    return labels
