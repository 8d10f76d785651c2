"""Atomic, fsync'ed file writes (a killed process leaves either the old file or the new one), the
check that an output folder is writable before any work, the JSON encoding of numpy values, and
progress bars on stderr."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

__all__ = ["FolderError", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "check_cache_root",
           "check_writable_folder", "fsync_dir", "json_default", "progress_bar", "set_progress_bars"]


class FolderError(ValueError):
    """An output or cache folder that cannot be used: not a folder, not creatable or not writable.
    Its message is one line naming the path, what it is for and the fix."""


def check_writable_folder(path: str | os.PathLike, what: str, fix: str | None = None) -> Path:
    """Check that ``path`` is a folder this process can write to, or that it can be made: when
    it is missing, its nearest existing parent must be a writable folder.  Nothing is left behind
    (a missing folder is not created here, so a run refused later leaves no empty folder);
    writability is tested by creating and removing a small temporary file.

    Args:
        path: the folder.
        what: what it is for, e.g. ``"run folder (--out)"`` or ``"cache root (KD_ENV_CACHE)"``.
        fix: the remedy named in the error (default: choose another path, or make it writable).

    Returns:
        the folder's path (``~`` expanded).

    Raises:
        FolderError: one line naming the path, ``what`` and the fix, when the path (or a parent)
            is a file, the folder cannot be created or it is not writable.
    """
    folder = Path(path).expanduser()
    fix = fix or "choose another path or make it a writable folder"

    def fail(problem: str) -> FolderError:
        return FolderError(f"{what} {str(folder)!r} {problem}; {fix}")

    existing = folder
    for parent in (folder, *folder.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is a file, not a folder" if parent == folder else f"is under {str(parent)!r}, which is a file"
                raise fail(where)
            existing = parent
            break
    probe = existing / f".write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"ok")
    except OSError as exc:
        problem = "is not writable" if existing == folder else f"cannot be created in {str(existing)!r}"
        raise fail(f"{problem} ({exc.strerror or type(exc).__name__})") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return folder


def check_cache_root(override: str | os.PathLike | None = None) -> Path:
    """:func:`check_writable_folder` for the teacher cache root, resolved as
    :func:`kd_env.teacher.cache_root` resolves it: ``override`` (``DistillConfig.cache_dir``),
    else ``$KD_ENV_CACHE``, else ``~/.cache/kd_env``.  Runners call it before the teacher is
    built, so an unusable cache fails at once rather than after fine-tuning.

    Raises:
        FolderError: the cache root is a file, cannot be created or is not writable.
    """
    if override:
        root, source = Path(override), "distill.cache_dir"
    elif os.environ.get("KD_ENV_CACHE"):
        root, source = Path(os.environ["KD_ENV_CACHE"]), "KD_ENV_CACHE"
    else:
        root, source = Path.home() / ".cache" / "kd_env", "default"
    return check_writable_folder(root, f"teacher cache root ({source})",
                                 "set KD_ENV_CACHE (or distill.cache_dir) to a writable folder")


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """``json.dumps``'s ``default``: numpy scalars and arrays, paths and sets as plain JSON.

    Raises:
        TypeError: any other object, named.
    """
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot serialise {obj!r} ({type(obj).__name__}) to JSON")


#: whether :func:`progress_bar` draws bars at all (the runners' ``-q`` turns them off)
_PROGRESS_BARS = True


def set_progress_bars(enabled: bool) -> None:
    """Turn every :func:`progress_bar` of this process on or off (``-q`` on the runners: off)."""
    global _PROGRESS_BARS
    _PROGRESS_BARS = bool(enabled)


def progress_bar(iterable: Any, total: int, desc: str, enabled: bool = True, leave: bool = True) -> Any:
    """``iterable`` with a tqdm progress bar on stderr (``iterable`` itself when not ``enabled``;
    a disabled tqdm bar when bars are off in this process, :func:`set_progress_bars`)."""
    if not enabled:
        return iterable
    import sys

    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=leave, dynamic_ncols=True, file=sys.stderr,
                disable=not _PROGRESS_BARS)
