"""Per-episode records of a learning agent: kept in memory, in ``episodes.csv`` and in TensorBoard."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EpisodeLogger", "selection_frequencies"]


class EpisodeLogger:
    """Per-episode records: kept in a list, appended to ``log_dir/episodes.csv`` and written to
    TensorBoard (``log_dir``) when ``log_dir`` is given.

    Each episode is in ``episodes.csv`` once, also after a killed run is resumed: the first record
    a logger writes (episode ``n``; agents number their episodes from 1) first drops the file's rows
    of episodes ``>= n`` (rewriting it atomically), so an attempt that starts again at episode 1
    replaces the killed attempt's rows, and one resumed from a checkpoint after episode ``n - 1``
    keeps the rows before it.  TensorBoard: each attempt adds an event file to ``log_dir``, opened
    with ``purge_step=n``, so TensorBoard hides the earlier attempts' scalars from step ``n`` on
    (one curve, no doubled steps).  Records without an ``episode`` field are only appended.

    Args:
        log_dir: folder for ``episodes.csv`` and the TensorBoard event files (``None``: memory only).
        records: the list records are appended to (an agent's ``episode_log``).
        tensorboard: also write TensorBoard scalars.
    """

    def __init__(self, log_dir: str | os.PathLike | None, records: list[dict[str, Any]], tensorboard: bool = True):
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.records = records
        self.tensorboard = tensorboard
        self._writer = None
        self._columns: list[str] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def csv_path(self) -> Path | None:
        return self.log_dir / "episodes.csv" if self.log_dir is not None else None

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.log_dir is None:
            return
        path = self.csv_path
        first = _episode_number(record)
        if self._columns is None:
            self._columns = self._start_csv(path, record, first)
            if self.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides an earlier (killed) attempt's events from this step on
                self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=first)
        with open(path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=self._columns, extrasaction="ignore", restval="").writerow(record)
        if self._writer is not None:
            step = int(record.get("episode", len(self.records)))
            for key, value in record.items():
                if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and key != "episode":
                    if math.isfinite(float(value)):
                        self._writer.add_scalar(f"episode/{key}", float(value), step)
            self._writer.flush()

    @staticmethod
    def _start_csv(path: Path, record: dict[str, Any], first: int | None) -> list[str]:
        """Before this logger's first row: the file's columns (a new file gets ``record``'s), and
        the rows of episodes ``>= first`` (an earlier attempt's, see the class) dropped."""
        if not (path.exists() and path.stat().st_size > 0):
            columns = list(record)
            with open(path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerow(columns)
            return columns
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        columns = (rows[0] if rows else None) or list(record)
        if first is None or "episode" not in columns:
            return columns
        col = columns.index("episode")
        kept = [r for r in rows[1:] if len(r) == len(columns) and _before(r[col], first)]
        if len(kept) != len(rows) - 1:
            from kd_env.io import atomic_write_text

            buf = io.StringIO()
            csv.writer(buf).writerows([columns, *kept])
            atomic_write_text(path, buf.getvalue())
        return columns

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _episode_number(record: dict[str, Any]) -> int | None:
    """The record's ``episode`` as an int (``None`` when it has none)."""
    value = record.get("episode")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return None


def _before(cell: str, first: int) -> bool:
    """Whether a CSV row's episode cell is an episode before ``first`` (a row cut short by a kill
    or with an unreadable episode is dropped)."""
    try:
        return int(float(cell)) < first
    except ValueError:
        return False


def selection_frequencies(actions: list[np.ndarray] | np.ndarray, knowledge_names: list[str]) -> dict[str, float]:
    """``{"freq_<knowledge>": mean action value over the episode}``."""
    arr = np.asarray(actions, dtype=np.float64).reshape(-1, len(knowledge_names)) if len(actions) else \
        np.full((1, len(knowledge_names)), math.nan)
    return {f"freq_{n}": float(v) for n, v in zip(knowledge_names, arr.mean(axis=0))}
