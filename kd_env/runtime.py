"""Where and how torch runs: the device, the intra-op thread count, and private random streams."""

from __future__ import annotations

import contextlib
import os
import time

import torch

__all__ = ["NO_TIMER", "StepTimer", "private_torch_rng", "resolve_device", "resolve_threads", "usable_cpus"]


@contextlib.contextmanager
def private_torch_rng(seed: int | None = None, device: torch.device | None = None):
    """Run a block on a private torch random stream: the process-wide torch RNG (CPU, and the CUDA
    device's when ``device`` is CUDA) is saved on entry and restored on exit, so the block neither
    reads nor changes anyone else's randomness.  With ``seed`` the block starts from
    ``torch.manual_seed(seed)``."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(int(seed))
        yield


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; valid here: 'cpu', 'auto'")
    return dev


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where the platform has
    no ``sched_getaffinity``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None) -> int:
    """The torch intra-op thread count for ``DistillConfig.threads``: the value itself, or when
    unset torch's default bounded by :func:`usable_cpus` (torch counts the machine's cores, not
    those this process may use, and more threads than usable CPUs spin against each other)."""
    if threads is not None:
        return int(threads)
    return max(1, min(torch.get_num_threads(), usable_cpus()))


class StepTimer:
    """Wall time of each part of a training step, summed over steps (profiling; see
    ``perf/engine_speed.py``).  Give one to :attr:`kd_env.engine.Distiller.step_timer`; the
    distiller then calls :meth:`start` at the top of each step and :meth:`mark` after each part.

    Args:
        device: on CUDA every mark first waits for the device, so that each part is charged with
            its own kernels (this slows the step; CPU work is synchronous already).
    """

    PARTS = ("data", "teacher", "forward", "losses", "backward", "optimizer", "statistics")

    def __init__(self, device: torch.device | None = None):
        self.cuda = device is not None and device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.steps = 0
        self._last = 0.0

    def clear(self) -> None:
        """Forget what was timed so far."""
        self.seconds.clear()
        self.steps = 0

    def start(self) -> None:
        """A step begins."""
        self.steps += 1
        self._last = self._now()

    def mark(self, part: str) -> None:
        """Charge the time since the last mark (or :meth:`start`) to ``part``."""
        now = self._now()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - self._last
        self._last = now

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def milliseconds_per_step(self) -> dict[str, float]:
        """Mean milliseconds per step of each part, in :attr:`PARTS` order, then any others."""
        names = [p for p in self.PARTS if p in self.seconds] + [p for p in self.seconds if p not in self.PARTS]
        return {p: 1000 * self.seconds[p] / max(1, self.steps) for p in names}


class _NoTimer:
    """What the distiller calls when nobody profiles it: nothing."""

    def start(self) -> None:
        pass

    def mark(self, part: str) -> None:
        pass


NO_TIMER = _NoTimer()
