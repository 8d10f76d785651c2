"""Pieces every experiment uses, written once: one distillation scored on the held-out split
(:func:`distil_and_test`) and following
selector training through ``learn(..., callback=...)`` (:class:`TrainingProgress`).

The command-line pieces (``--seeds``, ``--plugin``) are in :mod:`experiments.cli`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from agents import run_episode
from kd_env.io import progress_bar

__all__ = ["distil_and_test", "TrainingProgress"]


def distil_and_test(env: Any, agent: Any, seed: int) -> dict[str, Any]:
    """Distil one student with ``agent`` acting deterministically (one episode of ``env``, reset
    with ``seed`` and the agent's own reset options), then score it on the test split.

    Returns:
        the unit's result row: ``seed``, ``metric_name``, ``metric`` (the test split's main
        metric), ``test_metrics``, ``dev_metric`` (the final dev probe), ``return``,
        ``train_seconds`` (the phases' wall time), ``wall_seconds``, ``student_parameters``,
        ``student_precision`` (``fp32``/``bf16``: the student's training steps, as resolved here),
        ``crashed``, ``actions`` (as the env applied them), ``curve`` (the dev probe after reset
        and after each phase) and ``mean_weights``.
    """
    start = time.perf_counter()
    episode = run_episode(env, agent, deterministic=True, seed=seed)
    infos = episode["infos"]
    actions = [[float(x) for x in info["action"]] for info in infos]
    curve = [episode["reset_info"]["probe_metric"], *(info["probe_metric"] for info in infos)]
    distiller = env.unwrapped.distiller
    test = distiller.evaluate("test")
    return {
        "seed": seed, "metric_name": distiller.task.metric, "metric": float(test["main"]),
        "test_metrics": {k: float(v) for k, v in test.items()}, "dev_metric": float(infos[-1]["probe_metric"]),
        "return": float(episode["return"]), "train_seconds": float(sum(episode["phase_seconds"])),
        "wall_seconds": float(time.perf_counter() - start),
        "student_parameters": int(distiller.student.num_parameters()),
        "student_precision": getattr(distiller, "precision", "fp32"),
        "crashed": any(bool(info["crashed"]) for info in infos),
        "actions": actions, "curve": [float(x) for x in curve],
        "mean_weights": [float(x) for x in np.mean(actions, axis=0)],
    }


class TrainingProgress:
    """An episode callback for ``agent.learn(..., callback=...)``: keeps each training episode's
    return (the env's, without exploration bonuses), shows a progress bar on stderr and, with
    ``tensorboard`` (an :class:`agents.episode_log.TensorBoardRun`, closed by :meth:`close`),
    writes each episode to TensorBoard (for agents that log none themselves)."""

    def __init__(self, episodes: int, desc: str = "train selector", on_episode: Any = None, tensorboard: Any = None):
        self.returns: list[float] = []
        self._tensorboard = tensorboard
        self._bar = progress_bar(None, episodes, desc) if episodes else None
        self._on_episode = on_episode
        """called with each episode's wall seconds; may return a note for the bar"""
        self._last = time.perf_counter()

    def __call__(self, agent: Any, record: dict[str, Any]) -> bool:
        self.returns.append(float(record["return"]))
        if self._tensorboard is not None:
            self._tensorboard.episode(record)
        now = time.perf_counter()
        note = self._on_episode(now - self._last) if self._on_episode is not None else None
        self._last = now
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(ret=f"{self.returns[-1]:+.3f}", **({"run": note} if note else {}))
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
