"""Per-episode records of a learning agent: kept in memory, in ``episodes.csv`` and in TensorBoard."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EpisodeLogger", "selection_frequencies"]


class EpisodeLogger:
    """Per-episode records: kept in a list, appended to ``log_dir/episodes.csv`` and written to
    TensorBoard (``log_dir``) when ``log_dir`` is given.

    Args:
        log_dir: folder for ``episodes.csv`` and the TensorBoard event files (``None``: memory only).
        records: the list records are appended to (an agent's ``episode_log``).
        tensorboard: also write TensorBoard scalars.
    """

    def __init__(self, log_dir: str | os.PathLike | None, records: list[dict[str, Any]], tensorboard: bool = True):
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.records = records
        self._writer = None
        self._columns: list[str] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def csv_path(self) -> Path | None:
        return self.log_dir / "episodes.csv" if self.log_dir is not None else None

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.log_dir is None:
            return
        path = self.csv_path
        if self._columns is None:
            if path.exists() and path.stat().st_size > 0:
                with open(path, newline="", encoding="utf-8") as fh:
                    self._columns = next(csv.reader(fh), None) or list(record)
            else:
                self._columns = list(record)
                with open(path, "w", newline="", encoding="utf-8") as fh:
                    csv.writer(fh).writerow(self._columns)
        with open(path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=self._columns, extrasaction="ignore", restval="").writerow(record)
        if self._writer is not None:
            step = int(record.get("episode", len(self.records)))
            for key, value in record.items():
                if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and key != "episode":
                    if math.isfinite(float(value)):
                        self._writer.add_scalar(f"episode/{key}", float(value), step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def selection_frequencies(actions: list[np.ndarray] | np.ndarray, knowledge_names: list[str]) -> dict[str, float]:
    """``{"freq_<knowledge>": mean action value over the episode}``."""
    arr = np.asarray(actions, dtype=np.float64).reshape(-1, len(knowledge_names)) if len(actions) else \
        np.full((1, len(knowledge_names)), math.nan)
    return {f"freq_{n}": float(v) for n, v in zip(knowledge_names, arr.mean(axis=0))}
