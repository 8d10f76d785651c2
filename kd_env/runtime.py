"""Where and how torch runs: the device, the intra-op thread count, and private random streams."""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["private_torch_rng", "resolve_device", "resolve_threads", "usable_cpus"]


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
