"""Reading CSV/TSV tables with a header into rows and class ids.

Errors name the file and the line (the header is line 1): a missing column, no data rows, an
empty label or text, a label that is not a class id, integer ids and class names mixed, a name
outside the given class names.  :func:`kd_env.data.load_task` builds splits from these rows.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["Rows", "read_rows", "class_names", "label_ids"]

#: one table's rows: (texts, second texts or None, [(line number, raw label)])
Rows = tuple[list[str], list[str] | None, list[tuple[int, str]]]


def read_rows(path: Path, text_cols: tuple[str, str | None] | None = None, label_col: str = "label",
              allow_empty_text: bool = False) -> Rows:
    """The rows of a CSV/TSV with a header, labels unconverted (the checks: see the module
    docstring; :func:`label_ids` converts the labels)."""
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    expected = "a header row with columns text[,text_b],label" if text_cols is None else \
        f"a header row with columns {[c for c in (*text_cols, label_col) if c]}"
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)
        header = reader.fieldnames or []
        if not header:
            raise ValueError(f"{path}: empty file, no rows; expected {expected} and one example per line")
        a, b = text_cols or ("text", "text_b" if "text_b" in header else None)
        missing = [c for c in (a, b, label_col) if c is not None and c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {header}; expected "
                             f"{[c for c in (a, b, label_col) if c]}")
        ta, tb, ys = [], [] if b else None, []
        for row in reader:
            line_no = reader.line_num  # the physical line (a quoted field may span lines)
            raw = row[label_col]
            if raw is None or raw.strip() == "":
                raise ValueError(f"{path}:{line_no}: empty {label_col!r}")
            for col in (a, b):
                if col is not None and not allow_empty_text and not (row[col] or "").strip():
                    raise ValueError(f"{path}:{line_no}: empty text in column {col!r}; every example needs text")
            ta.append(row[a] or "")
            if b:
                tb.append(row[b] or "")
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


def class_names(tables: Sequence[tuple[Path, list[tuple[int, str]]]]) -> list[str] | None:
    """The class names of local tables' raw labels, sorted, or ``None`` when every label is an
    integer (class ids as they are).  ``ValueError`` naming the file and line when integers and
    names are mixed."""
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
    if first is None or _is_integer(first[2]):
        return None
    return sorted({y for _, ys in tables for _, y in ys})


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
        bad = [(n, y) for n, y in ys if y not in names]
        if bad:
            raise ValueError(f"{path}:{bad[0][0]}: unknown label {bad[0][1]!r} "
                             f"({len({y for _, y in bad})} unknown in all: {sorted({y for _, y in bad})[:5]}); "
                             f"valid: {names}")
        labels = np.asarray([names.index(y) for _, y in ys], dtype=np.int64)
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
