"""Where and how torch runs: the device, the intra-op thread count, the numeric precision, private
random streams, and a timer for the parts of a training step."""

from __future__ import annotations

import contextlib
import os
import time

import torch

__all__ = ["NO_TIMER", "PRECISIONS", "StepTimer", "autocast", "cpu_has_fast_bf16", "private_torch_rng", "resolve_device",
           "resolve_precision", "resolve_threads", "usable_cpus"]

#: the values of ``DistillConfig.precision``
PRECISIONS = ("auto", "fp32", "bf16")


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


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU reports bf16 matrix instructions: AMX tiles (``amx_bf16``) or AVX-512 bf16
    dot products (``avx512_bf16``) in ``/proc/cpuinfo`` (False where the file cannot be read).
    Measured on an AVX-512-bf16 CPU without AMX (AMD EPYC, 1 thread): a MiniLM-L6 fine-tuning
    step at batch 32 took 0.61-0.70x its fp32 time under bf16 autocast, a forward pass 0.57x."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            return any(line.startswith("flags") and {"amx_bf16", "avx512_bf16"} & set(line.split()) for line in fh)
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``DistillConfig.precision``: the value itself, or for ``auto``
    ``bf16`` where it pays (a CPU with bf16 instructions, :func:`cpu_has_fast_bf16`; a GPU for which
    ``torch.cuda.is_bf16_supported()``), else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device):
    """A context running a block in ``precision``: bf16 autocast (matrix multiplies in bf16, losses
    and reductions in fp32, fp32 weights) or, for ``fp32``, nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be 'fp32' or 'bf16' here (resolve 'auto' first), got {precision!r}")
    return contextlib.nullcontext()


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
