"""How long each stage of a glue_ac invocation took: ``timing.json`` and the table printed at the end."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

#: where ``make install`` records its wall seconds (the Makefile writes it; the demo prints it)
INSTALL_SECONDS_FILE = ".kd_env-install-seconds"
#: the timing table's rows: key in ``stage_seconds`` -> label
STAGES = {"install": "install (make install)", "teacher": "teacher fine-tune (or load)",
          "teacher_cache": "teacher cache (+ data, student)", "selector": "selector training",
          "students": "students", "report": "report", "total": "total (this invocation, no install)"}


def install_seconds(prefix: str | Path | None = None) -> float | None:
    """The seconds the last ``make install`` took (``<venv>/.kd_env-install-seconds``), or ``None``
    when it was not recorded (installed by hand, or not in a venv made by the Makefile)."""
    path = Path(sys.prefix if prefix is None else prefix) / INSTALL_SECONDS_FILE
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stage_times(stages: dict[str, float], total: float, units: int, workers: int) -> dict[str, Any]:
    """This invocation's wall seconds per stage (a resumed run's finished stages take ~0 s), the
    last ``make install``'s, and how the students ran."""
    out: dict[str, Any] = {"install": install_seconds()}
    out.update({k: stages.get(k) for k in ("teacher", "teacher_cache", "selector", "students", "report")})
    out.update(total=total, student_units=units, workers=workers)
    return out


def clock(seconds: float | None) -> str:
    """``m:ss`` (``-`` for ``None`` or a non-finite value)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}:{sec:02d}"


def print_timing(times: dict[str, Any], out=None) -> None:
    """The per-stage wall-time table (``summary["stage_seconds"]``)."""
    out = sys.stdout if out is None else out
    print("\nwall time per stage (m:ss)", file=out)
    width = max(len(v) for v in STAGES.values()) + 2
    for key, label in STAGES.items():
        note = ""
        if key == "install" and times.get(key) is None:
            note = "  (not recorded: run `make demo`)"
        elif key == "students" and times.get(key) is not None:
            note = f"  ({times['student_units']} students, {times['workers']} at a time)"
        elif key == "selector" and times.get(key) is None:
            note = "  (no selector)"
        print(f"  {label:<{width}} {clock(times.get(key)):>6}{note}", file=out)


def sum_stage_times(times: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' :func:`stage_times` (one per situation of a study) as one: each stage's
    seconds and the students summed, the most workers, the install's seconds once."""
    total: dict[str, Any] = {"install": install_seconds()}
    for t in times:
        for key, value in t.items():
            if key == "install":
                continue
            if key == "workers":
                total[key] = max(total.get(key) or 0, value or 0)
            elif value is not None:
                total[key] = (total.get(key) or 0) + value
            else:
                total.setdefault(key, None)
    return total
