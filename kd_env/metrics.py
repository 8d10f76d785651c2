"""Task metrics: the one place where they are defined (accuracy; F1 for MRPC/QQP; Matthews
correlation for CoLA; Pearson and Spearman for STS-B), and the metric a task is ranked by."""

from __future__ import annotations

import numpy as np

from .data import GLUE_TASKS, TaskData

__all__ = ["compute_metrics", "main_metric_name"]


def _f1_binary(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (gold == 1)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # average ties
    xs = x[order]
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        if j > i:
            ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return 0.0 if denom == 0 else float((a * b).sum() / denom)


def main_metric_name(task: str | TaskData) -> str:
    """The metric a task is ranked by (``accuracy`` for non-GLUE tasks)."""
    if isinstance(task, TaskData):
        return task.metric
    return GLUE_TASKS.get(task, {}).get("metric", "accuracy")


def compute_metrics(task: str | TaskData, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE metrics for ``task`` from model outputs.

    Args:
        task: task name or :class:`TaskData`.
        logits: ``(N, C)`` class scores, or ``(N,)`` / ``(N, 1)`` predictions for regression.
        labels: ``(N,)`` gold labels (floats for regression).

    Returns:
        A dict with every metric of the task plus ``"main"``, the task's ranking metric.
        Accuracy for classification; F1 and accuracy for MRPC/QQP; Matthews correlation for CoLA;
        Pearson and Spearman for STS-B.
    """
    name = task.name if isinstance(task, TaskData) else task
    metric = main_metric_name(task)
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    regression = (isinstance(task, TaskData) and task.is_regression) or name == "stsb"
    if regression:
        pred = logits.reshape(-1).astype(np.float64)
        gold = labels.reshape(-1).astype(np.float64)
        out = {"pearson": _pearson(pred, gold), "spearman": _pearson(_rank(pred), _rank(gold))}
        out["main"] = out["pearson"]
        return out
    pred = logits.argmax(-1) if logits.ndim == 2 else logits.astype(np.int64)
    gold = labels.astype(np.int64)
    out = {"accuracy": float((pred == gold).mean()) if len(gold) else 0.0}
    if metric == "f1":
        out["f1"] = _f1_binary(pred, gold)
    if metric == "matthews":
        out["matthews"] = _matthews(pred, gold)
    out["main"] = out[metric]
    return out
