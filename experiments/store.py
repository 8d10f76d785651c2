"""Every experiment's result store: one JSON file per finished unit of work, written atomically
(temporary file, fsync, rename: a killed run leaves the old file or the new one, never half of
one), and the run's saved settings, checked before anything is written.

Resuming is reading back: :meth:`ResultStore.read` returns a unit's record only when the file is
a JSON object whose identifying keys (method, seed, a settings fingerprint) are the expected
ones, so a unit is never run twice and never confused with another's.  The experiments keep their
folders (``glue_ac``: ``<run>/units/<method>__seed<k>.json``; the benchmark:
``<run>/<algo>/<env>__seed<k>/result.json``; the headroom tool: ``<run>/units/<key>.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from kd_env.io import atomic_write_json, atomic_write_text

__all__ = ["ResultStore", "read_finished", "changed_settings", "save_settings", "file_key"]


def read_finished(path: str | os.PathLike, **expected: Any) -> dict[str, Any] | None:
    """The record of a finished unit, or ``None`` when the unit must run (again): no file, a
    file that is not a JSON object, or one whose ``expected`` keys differ (another method, seed
    or settings fingerprint: the unit was made for something else)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in expected.items()):
        return None
    return record


def file_key(text: str) -> str:
    """A file-name-safe name for a unit key: its readable part, then a short hash of the whole
    (two keys that differ only in unsafe characters still get two files)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:80]
    return f"{safe}__{hashlib.sha256(text.encode('utf-8')).hexdigest()[:10]}"


class ResultStore:
    """The finished units of one run: ``<folder>/<name>.json`` per unit."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str, **expected: Any) -> dict[str, Any] | None:
        """The finished unit ``name`` (see :func:`read_finished`), or ``None``."""
        return read_finished(self.path(name), **expected)

    def write(self, name: str, record: dict[str, Any]) -> None:
        """Write a finished unit atomically (the folder is created on first use)."""
        atomic_write_json(self.path(name), record)

    def records(self) -> list[dict[str, Any]]:
        """Every readable unit in the folder (files cut short by a kill are skipped)."""
        if not self.folder.is_dir():
            return []
        return [r for p in sorted(self.folder.glob("*.json")) if (r := read_finished(p)) is not None]


def changed_settings(path: str | os.PathLike, current: dict[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """The keys of ``current`` whose saved value in the YAML file ``path`` differs (keys in
    ``ignore`` may change between invocations: seeds or methods added to a run, workers); ``[]``
    when nothing was saved yet."""
    path = Path(path)
    if not path.exists():
        return []
    previous = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return sorted(k for k in current if k not in ignore and previous.get(k) != current[k])


def save_settings(path: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Write the run's settings (YAML, atomically)."""
    atomic_write_text(path, yaml.safe_dump(settings, sort_keys=True))
