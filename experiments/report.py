"""Tables, files and plots of experiment results (the statistics are in :mod:`experiments.stats`)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from kd_env.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "json_safe",
    "write_csv",
    "markdown_table",
    "plot_heatmap",
    "plot_curves",
    "plot_returns",
    "plot_learning_curves",
    "plot_selection_bars",
]


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None`` (JSON ``null``;
    ``json.dumps`` would write ``NaN``, which is not JSON), recursively through dicts, lists and
    tuples; numpy scalars and arrays become Python values."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write rows atomically (extra keys ignored)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt_csv(row.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt_csv(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return v


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg; written atomically)
# --------------------------------------------------------------------------------------------


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def draw_heatmap(ax: Any, matrix: np.ndarray, knowledge: Sequence[str] | None, title: str) -> Any:
    """Draw one knowledge (rows) x training phase (columns) heatmap on ``ax``, each cell labelled
    with its value (``knowledge=None``: no row labels); returns the image (for a colour bar)."""
    k, p = matrix.shape
    im = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_yticks(range(k), labels=list(knowledge) if knowledge is not None else [])
    ax.set_xticks(range(p), labels=[str(i + 1) for i in range(p)])
    ax.set_xlabel("training phase")
    ax.set_title(title, fontsize=10)
    for i in range(k):
        for j in range(p):
            v = matrix[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 or not np.isfinite(v) else "black")
    return im


def plot_heatmap(matrix: np.ndarray, knowledge: Sequence[str], path: str | Path, title: str) -> None:
    """Knowledge type (rows) x training phase (columns): mean weight the selector gave it."""
    plt = _figure()
    k, p = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * p + 2.5), 0.55 * k + 1.6))
    im = draw_heatmap(ax, matrix, knowledge, title)
    fig.colorbar(im, ax=ax, label="mean weight / selection frequency")
    _save(fig, path)
    plt.close(fig)


def plot_curves(curves: dict[str, list[list[float]]], path: str | Path, ylabel: str, title: str) -> None:
    """One line per method: mean over seeds per phase, with a min-max band."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.get_cmap("tab20").colors
    length = 0
    for i, (name, runs) in enumerate(sorted(curves.items())):
        length = min(len(r) for r in runs)
        arr = np.asarray([r[:length] for r in runs], dtype=np.float64)
        x = np.arange(0, length)
        color = "black" if name == "selector" else colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
        style = {"linewidth": 2.8, "zorder": 5} if name == "selector" else {"linewidth": 1.3}
        ax.plot(x, arr.mean(0), label=name, color=color, marker="o", markersize=3, **style)
        if len(arr) > 1:
            ax.fill_between(x, arr.min(0), arr.max(0), alpha=0.10, color=color)
    ax.set_xticks(range(length))
    ax.set_xlabel("phase (0 = before training)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    plt.close(fig)


def plot_returns(returns: Sequence[float], path: str | Path, title: str) -> None:
    """The selector's training return per episode (and a running mean)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    r = np.asarray(returns, dtype=np.float64)
    ax.plot(np.arange(1, len(r) + 1), r, marker="o", linewidth=1, label="episode return")
    if len(r) >= 3:
        w = min(5, len(r))
        run = np.convolve(r, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w, len(r) + 1), run, linewidth=2, label=f"running mean ({w})")
    ax.set_xlabel("selector training episode")
    ax.set_ylabel("return")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_learning_curves(curves: dict[str, dict[str, Any]], path: str | Path, title: str) -> None:
    """Evaluation return (left) and test metric (right) against training env steps.

    ``curves[name]`` holds ``timesteps`` (E,), ``return`` and ``test`` (one array of E values
    per run) and ``learns``: learners are drawn as mean lines with a 95% bootstrap band over
    runs (a learner with one run has none: its label says ``n/a (1 seed)``); non-learners (one
    evaluation) as dashed horizontal lines at their mean.
    """
    from experiments.stats import NO_INTERVAL, interval_estimate

    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    x_max = max([float(np.max(c["timesteps"])) for c in curves.values() if len(c["timesteps"])] + [1.0])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, c) in enumerate(sorted(curves.items())):
        color = colors[i % len(colors)]
        for ax, key in zip(axes, ("return", "test")):
            runs = np.asarray(c[key], dtype=np.float64)  # (runs, E)
            if runs.size == 0:
                continue
            if c["learns"] and runs.shape[1] > 1:
                x = np.asarray(c["timesteps"], dtype=np.float64)
                bands = [interval_estimate(runs[:, j], "mean", reps=500) for j in range(runs.shape[1])]
                label = name if runs.shape[0] > 1 else f"{name} (CI {NO_INTERVAL})"
                ax.plot(x, [b[0] for b in bands], marker="o", markersize=3, color=color, label=label)
                if runs.shape[0] > 1:
                    ax.fill_between(x, [b[1] for b in bands], [b[2] for b in bands], color=color, alpha=0.15)
            else:
                ax.axhline(float(runs[:, -1].mean()), color=color, linestyle="--", linewidth=1.2, label=f"{name}")
    for ax, ylabel in zip(axes, ("held-out episode return", "final student's test metric")):
        ax.set_xlabel("training env steps (phases)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, x_max * 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2, loc="best")
    fig.suptitle(title + " (mean over seeds, 95% bootstrap CI; dashed: baselines)", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def plot_selection_bars(frequencies: dict[str, np.ndarray], knowledge: Sequence[str], path: str | Path,
                        title: str) -> None:
    """Grouped bars: for each algorithm, the mean selection frequency (mask) or mean weight of
    each knowledge type."""
    plt = _figure()
    names = list(frequencies)
    k = len(knowledge)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.2))
    width = 0.8 / max(1, k)
    x = np.arange(len(names))
    for j, kname in enumerate(knowledge):
        values = [float(frequencies[n][j]) for n in names]
        ax.bar(x + (j - (k - 1) / 2) * width, values, width, label=kname)
    ax.set_xticks(x, labels=names, rotation=30, ha="right")
    ax.set_ylim(0, 1.3)  # room above the bars (at most 1) for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("selection frequency / mean weight")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(k, 5), loc="upper center")
    _save(fig, path)
    plt.close(fig)

