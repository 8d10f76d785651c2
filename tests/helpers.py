"""Helpers shared by the reliability tests (tests/test_reliability_*.py)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

#: wall-clock fields: they differ between any two runs, so result comparisons skip them
TIMING_KEYS = frozenset({"train_seconds", "wall_seconds", "seconds", "phase_seconds", "fine_tune_seconds",
                         "eval_seconds", "total_seconds", "seconds_per_run", "date",
                         "wall_seconds_this_invocation"})


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Exact, recursive equality of nested dicts / lists / arrays / tensors / dataclasses / floats
    (NaN equals NaN; dtypes and shapes must match)."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        same = torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num()))
        assert same, path
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype, path
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), f"{path}: {a} vs {b}"
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def assert_close(a: Any, b: Any, tol: float = 1e-6, path: str = "", skip: frozenset = TIMING_KEYS) -> None:
    """Recursive equality of JSON-like values with floats within ``tol`` (NaN equals NaN); keys in
    ``skip`` are ignored (they must still be present on both sides)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            if k not in skip:
                assert_close(a[k], b[k], tol, f"{path}[{k!r}]", skip)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, tol, f"{path}[{i}]", skip)
    elif isinstance(a, float) or isinstance(b, float):
        x, y = float(a), float(b)
        assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol, f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def parse_cell(text: str) -> Any:
    """A CSV cell as a float, a list of floats (space-separated), or the text itself."""
    parts = text.split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return text
    return values[0] if len(values) == 1 else values


def read_csv_rows(path: Path, skip: frozenset = TIMING_KEYS) -> tuple[list[str], list[dict[str, Any]]]:
    """(header, rows) of a CSV with cells parsed by :func:`parse_cell` and ``skip`` columns dropped."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [{k: parse_cell(v) for k, v in row.items() if k not in skip} for row in reader]
        return list(reader.fieldnames or []), rows


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a job started by a test: offline, one thread, this checkout importable."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


PYTHON = sys.executable


def assert_passes_env_checkers(make_env: Callable[[], Any]) -> None:
    """Gymnasium's ``check_env`` (on the unwrapped env, as it asks) and stable-baselines3's
    ``check_env(warn=True)`` both pass without a single warning, each on a fresh env from
    ``make_env`` (Gymnasium's checker closes the env it checks)."""
    from gymnasium.utils.env_checker import check_env as gymnasium_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for name, check in (("stable-baselines3", lambda env: sb3_check_env(env, warn=True)),
                        ("gymnasium", lambda env: gymnasium_check_env(env.unwrapped))):
        env = make_env()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                check(env)
        finally:
            env.close()
        assert [str(w.message) for w in caught] == [], f"{name} check_env warned"


def unclipped_observation(env: Any) -> Any:
    """The env's current observation before clipping (``Observation.unclipped``): an array, or a
    dict of arrays for the ``dict`` observation."""
    return env.unwrapped.observation_fn.unclipped(env.unwrapped.state)


def outside_bounds(space: Any, values: Any, tol: float = 1e-6) -> list[str]:
    """Entries of unclipped ``values`` outside the Box (or Dict of Boxes) ``space`` by more than
    ``tol``, or not finite, as readable strings (empty when all are inside)."""
    if isinstance(values, dict):
        return [f"{k}: {m}" for k in values for m in outside_bounds(space[k], values[k], tol)]
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < space.low - tol) | (values > space.high + tol)
    return [f"[{i}] = {values[i]!r} not in [{space.low[i]}, {space.high[i]}]" for i in np.flatnonzero(bad)]


def ray_or_skip():
    """Ray, which CI installs (``make test`` installs the ``ray`` extra): under ``CI`` a missing
    Ray fails the test instead of skipping it, so the distributed path cannot go untested
    unnoticed; elsewhere the test is skipped."""
    import pytest

    if os.environ.get("CI"):
        import ray
        return ray
    return pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]'); CI installs it")


def hide_ray(monkeypatch) -> None:
    """Make ``import ray`` fail for the rest of the test, as on a machine without Ray."""
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)


def tensorboard_runs(root: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The TensorBoard runs under ``root`` as TensorBoard reads them back (``EventAccumulator``):
    ``{run folder relative to root: {tag: [(step, value), ...]}}``; every run folder holds one
    event file (one writer, one process)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for folder in sorted({f.parent for f in Path(root).rglob("events.out.tfevents.*")}):
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1, folder
        acc = EventAccumulator(str(folder))
        acc.Reload()
        out[folder.relative_to(root).as_posix()] = {
            tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return out
