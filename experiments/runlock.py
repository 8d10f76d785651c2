"""One run per folder: :class:`RunLock`, a lock file in a run folder naming its holder (PID, host
name, start time), taken when a run starts and released when it ends (also on exceptions).

A second run on a locked folder refuses at once with :class:`RunLockedError`, naming the holder
and the lock file.  A lock left by a killed run (its PID no longer exists on this host) is stale:
the next run takes it over with a one-line note on stderr.  A lock held from another host cannot
be checked and is never taken over: remove the file by hand once that run is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from kd_env.io import fsync_dir

from .logs import get_logger

LOGGER = get_logger("runlock")

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]

#: the lock file's name inside a run folder
LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """The run folder is locked by another live run (or by a lock this host cannot check)."""


def _pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (one owned by another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


class RunLock:
    """The lock file ``<folder>/run.lock``: JSON with the holder's ``pid``, ``host``, ``started``
    (UTC, ISO 8601) and a random ``token``, created atomically (written to a temporary file,
    then hard-linked to the lock's name, which fails when the lock exists).

    Use as a context manager, or :meth:`acquire` and :meth:`release`.  The folder is created when
    missing; a folder the lock created and that is still empty at release is removed again (a run
    that fails before writing anything leaves no run folder).

    Args:
        folder: the run folder.
        what: the run's kind in messages, e.g. ``"glue_ac run"``.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self.token = uuid.uuid4().hex
        self.held = False
        self._created: list[Path] = []

    # ---- the lock file -------------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _write_tmp(self) -> Path:
        tmp = self.folder / f".{LOCK_FILE}.tmp-{self.token[:8]}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self._record(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def read(self) -> dict[str, Any] | None:
        """The holder's record, ``{}`` when the file is unreadable, ``None`` when there is no lock."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            record = json.loads(text)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _holder(self, record: dict[str, Any]) -> str:
        return (f"PID {record.get('pid', '?')} on host {record.get('host', '?')}, started "
                f"{record.get('started', '?')}")

    def _stale(self, record: dict[str, Any]) -> bool:
        """A lock whose holder is gone: its host is this one and its PID no longer exists."""
        pid = record.get("pid")
        return (record.get("host") == socket.gethostname() and isinstance(pid, int)
                and pid != os.getpid() and not _pid_alive(pid))

    # ---- taking and giving back ----------------------------------------------------------------
    def acquire(self) -> "RunLock":
        """Take the lock.

        Raises:
            RunLockedError: a live run (or one on another host) holds the folder, or the lock
                file is unreadable; the message names the holder and the lock file.
        """
        if not self.folder.exists():
            missing = [f for f in (self.folder, *self.folder.parents) if not f.exists()]
            self.folder.mkdir(parents=True, exist_ok=True)
            self._created = missing  # deepest first: removed again at release while empty
        tmp = self._write_tmp()
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails when a lock exists
                except FileExistsError:
                    pass
                except OSError:  # a file system without hard links: exclusive create instead
                    try:
                        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    except FileExistsError:
                        pass
                    else:
                        with os.fdopen(fd, "wb") as fh:
                            fh.write(tmp.read_bytes())
                            fh.flush()
                            os.fsync(fh.fileno())
                        self.held = True
                        break
                else:
                    self.held = True
                    break
                record = self.read()
                if record is None:  # released meanwhile: try again
                    continue
                if not record:
                    raise RunLockedError(
                        f"{self.folder} is locked by an unreadable lock file {self.path}; remove it if no "
                        f"{self.what} is using the folder")
                if not self._stale(record):
                    raise RunLockedError(
                        f"{self.folder} is in use by another {self.what} ({self._holder(record)}; lock file "
                        f"{self.path}); wait for it to end, or pass another --name or --out (remove the lock "
                        f"file only if that run is gone)")
                os.replace(tmp, self.path)  # take over the stale lock, then check no other run did too
                tmp = self._write_tmp()
                if (self.read() or {}).get("token") != self.token:
                    continue
                LOGGER.warning(f"note: took over the stale lock {self.path} of a {self.what} that is gone "
                               f"({self._holder(record)}: no such process)")
                self.held = True
                break
            else:
                record = self.read() or {}
                raise RunLockedError(f"{self.folder} is in use by another {self.what} ({self._holder(record)}; "
                                     f"lock file {self.path})")
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.folder)
        return self

    def release(self) -> None:
        """Give the lock back (only a lock this object holds is removed), and remove the run folder
        (and the parents it made for it) when this lock created them and they are still empty."""
        if self.held:
            self.held = False
            if (self.read() or {}).get("token") == self.token:
                self.path.unlink(missing_ok=True)
        created, self._created = self._created, []
        for folder in created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
