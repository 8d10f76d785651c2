"""Per-episode records of a learning agent: kept in memory, in ``episodes.csv`` and in TensorBoard;
and :class:`TensorBoardRun`, the one writer of TensorBoard scalars for any agent's episodes (its
training episodes and its evaluations), in stable-baselines3's layout, which every runner uses."""

from __future__ import annotations

import csv
import io
import math
import os
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["EpisodeLogger", "TensorBoardRun", "TENSORBOARD_DIR", "STATS_WINDOW", "EVENT_FILES", "run_name",
           "selection_frequencies"]

#: the folder of a run's TensorBoard logs inside its output folder (``tensorboard --logdir <out>/tb``)
TENSORBOARD_DIR = "tb"
#: the training episodes ``rollout/ep_*_mean`` average (stable-baselines3's ``stats_window_size``)
STATS_WINDOW = 100
#: the names of TensorBoard's event files
EVENT_FILES = "events.out.tfevents.*"
#: record fields :meth:`TensorBoardRun.episode` writes under their own tags (or not at all)
_OWN_FIELDS = frozenset({"episode", "steps", "length", "return", "final_probe_metric", "seconds"})


def run_name(name: str, n: int | str) -> str:
    """The folder of one learner's run in stable-baselines3's layout, ``<name>_<n>`` (``n``: the
    learner's seed), with ``name`` made file-name safe (``schedule:my/plan.json`` ->
    ``schedule_my_plan.json_0``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
    return f"{safe}_{n}"


class TensorBoardRun:
    """TensorBoard scalars of one learner's run, in stable-baselines3's layout: one run folder per
    learner and seed (``<log_dir>/<algo>_<seed>/events.out.tfevents...``, see :func:`run_name`),
    the x axis in env steps (phases; SB3's timesteps) and SB3's tags where SB3 has one:

    ==================================  ========================================================
    tag                                 value
    ==================================  ========================================================
    ``rollout/ep_rew_mean``             mean return of the last :data:`STATS_WINDOW` training
                                        episodes (as SB3)
    ``rollout/ep_len_mean``             their mean length in phases (as SB3)
    ``rollout/ep_probe_mean``           their mean final probe metric (the student's dev probe)
    ``rollout/weight_<knowledge>``      the episode's mean weight of each knowledge type
    ``train/<field>``                   the record's other numbers (``actor_loss``,
                                        ``critic_loss``, ``entropy``, ``learning_return`` ...)
    ``time/episodes``                   training episodes so far
    ``eval/mean_reward``                mean return of an evaluation's episodes (as SB3's
                                        ``EvalCallback``)
    ``eval/mean_ep_length``             their mean length (as ``EvalCallback``)
    ``eval/probe_metric``               their mean final probe metric
    ``eval/<split>_metric``             the final students' mean metric on ``split`` (``test``,
                                        ``dev``); ``eval/<split>_loss`` their mean loss
    ``eval_weights/<knowledge>/phase_<p>``  the evaluation episodes' mean weight of each knowledge
                                        type in phase ``p`` (0-based)
    ==================================  ========================================================

    A learner that does not train (a fixed mask, a schedule, a baseline) has only its evaluations,
    at step 0.  The event file is opened at the first scalar (nothing is written for a run that
    logs nothing).  Each process writes its own run folders: a runner gives every learner and seed
    its own folder, and TensorBoard names its files by host and process.

    Args:
        folder: the run folder.
        knowledge_names: the knowledge types of an action's entries (for ``eval_weights/``).
        fresh: remove the folder's event files when the first scalar is written (a rerun of the
            same learner and seed replaces the earlier run's curves).
        purge: open the event file with ``purge_step`` = the first step written, so TensorBoard
            hides an earlier (killed) attempt's scalars from there on (a resumed run shows one curve).
        history: records of training episodes written before (a resumed run): they start the
            ``rollout/ep_*_mean`` window.
    """

    def __init__(self, folder: str | os.PathLike, knowledge_names: Sequence[str] = (), *, fresh: bool = False,
                 purge: bool = False, history: Iterable[dict[str, Any]] = ()):
        self.folder = Path(folder)
        self.knowledge_names = list(knowledge_names)
        self.fresh, self.purge = fresh, purge
        self._writer: Any = None
        self._window: deque[tuple[float, float, float]] = deque(maxlen=STATS_WINDOW)
        self._episodes = 0
        self._steps = 0
        for record in history:
            self._remember(record)

    def _remember(self, record: dict[str, Any]) -> None:
        self._episodes += 1
        length = _number(record.get("length"))
        self._steps += int(length) if math.isfinite(length) else 0
        self._window.append((_number(record.get("return")), length, _number(record.get("final_probe_metric"))))

    def _open(self, step: int) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            if self.fresh:
                for old in self.folder.glob(EVENT_FILES):
                    old.unlink(missing_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.folder), purge_step=step if self.purge else None)
        return self._writer

    def scalar(self, tag: str, value: Any, step: int) -> None:
        """One scalar (skipped when it is not a finite number)."""
        value = _number(value)
        if math.isfinite(value):
            self._open(step).add_scalar(tag, value, int(step))

    def episode(self, record: dict[str, Any], step: int | None = None) -> None:
        """One finished training episode (an agent's episode record: ``return``, ``length``,
        ``final_probe_metric``, ``freq_<knowledge>`` and any other numbers) at ``step`` (default:
        the record's ``steps``, else the steps of the episodes written so far)."""
        self._remember(record)
        if step is None:
            recorded: Any = record.get("steps")
            step = int(recorded) if _is_int(recorded) else self._steps
        self._open(step)
        window = np.asarray(self._window, np.float64)
        for k, tag in enumerate(("rollout/ep_rew_mean", "rollout/ep_len_mean", "rollout/ep_probe_mean")):
            finite = window[:, k][np.isfinite(window[:, k])]
            if finite.size:
                self.scalar(tag, float(finite.mean()), step)
        self.scalar("time/episodes", self._episodes, step)
        for key, value in record.items():
            if key in _OWN_FIELDS or not _is_number(value):
                continue
            if key.startswith("freq_"):
                self.scalar(f"rollout/weight_{key[5:]}", value, step)
            else:
                self.scalar(f"train/{key}", value, step)
        self._writer.flush()

    def evaluation(self, step: int, returns: ArrayLike, lengths: ArrayLike, *,
                   metrics: Mapping[str, ArrayLike] | None = None, losses: Mapping[str, ArrayLike] | None = None,
                   probe: ArrayLike | None = None, actions: ArrayLike | None = None) -> None:
        """One evaluation of the learner at ``step``: its episodes' returns and lengths, the final
        students' ``metrics`` and ``losses`` (``{split: one value per episode}``, split ``"test"``
        or ``"dev"``), their final ``probe`` metrics, and the ``actions`` played (``(episodes,
        phases, knowledge types)``, NaN past an episode's end or where not known), each averaged
        over the episodes (NaNs left out)."""
        self._open(step)
        tags: list[tuple[str, ArrayLike | None]] = [("eval/mean_reward", returns), ("eval/mean_ep_length", lengths),
                                       ("eval/probe_metric", probe)]
        tags += [(f"eval/{split}_metric", values) for split, values in (metrics or {}).items()]
        tags += [(f"eval/{split}_loss", values) for split, values in (losses or {}).items()]
        for tag, values in tags:
            if values is not None:
                self.scalar(tag, _nanmean(values), step)
        if actions is not None and self.knowledge_names:
            acts = np.asarray(actions, np.float64)
            acts = acts.reshape(acts.shape[0], -1, len(self.knowledge_names)) if acts.size else acts
            for p in range(acts.shape[1] if acts.ndim == 3 else 0):
                for j, name in enumerate(self.knowledge_names):
                    self.scalar(f"eval_weights/{name}/phase_{p}", _nanmean(acts[:, p, j]), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorBoardRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def _number(value: Any) -> float:
    """``value`` as a float (NaN when it is not a number)."""
    return float(value) if _is_number(value) else math.nan


def _nanmean(values: ArrayLike) -> float:
    arr = np.asarray(values, np.float64).reshape(-1)
    finite = arr[np.isfinite(arr)]
    return float(finite.mean()) if finite.size else math.nan


class EpisodeLogger:
    """Per-episode records: kept in a list, appended to ``log_dir/episodes.csv`` and written to
    TensorBoard (``log_dir``, :class:`TensorBoardRun`'s tags) when ``log_dir`` is given.

    Each episode is in ``episodes.csv`` once, also after a killed run is resumed: the first record
    a logger writes (episode ``n``; agents number their episodes from 1) first drops the file's rows
    of episodes ``>= n`` (rewriting it atomically), so an attempt that starts again at episode 1
    replaces the killed attempt's rows, and one resumed from a checkpoint after episode ``n - 1``
    keeps the rows before it.  TensorBoard: each attempt adds an event file to ``log_dir``, opened
    with ``purge_step`` = the step (env steps so far) of its first episode, so TensorBoard hides the
    earlier attempts' scalars from there on (one curve, no doubled steps).  Records without an
    ``episode`` field are only appended.

    Args:
        log_dir: folder for ``episodes.csv`` and the TensorBoard event files (``None``: memory only).
        records: the list records are appended to (an agent's ``episode_log``).
        tensorboard: also write TensorBoard scalars.
    """

    def __init__(self, log_dir: str | os.PathLike | None, records: list[dict[str, Any]], tensorboard: bool = True):
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.records = records
        self.tensorboard = tensorboard
        self._tensorboard: TensorBoardRun | None = None
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
        path = self.log_dir / "episodes.csv"
        first = _episode_number(record)
        if self._columns is None:
            self._columns = self._start_csv(path, record, first)
            if self.tensorboard:
                # purge: TensorBoard hides an earlier (killed) attempt's events from this episode on
                self._tensorboard = TensorBoardRun(self.log_dir, purge=True, history=self.records[:-1])
        with open(path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=self._columns, extrasaction="ignore", restval="").writerow(record)
        if self._tensorboard is not None:
            self._tensorboard.episode(record)

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
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


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
