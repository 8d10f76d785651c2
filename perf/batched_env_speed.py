"""Env steps per second per core: the batched vector env against the single env and Gymnasium's
``AsyncVectorEnv``, measured side by side in one run.

Every row runs whole DigitsKD episodes (resets included) with random masks, for at least
``--seconds`` of wall time, and reports env steps (phases) per second and per core:

* ``single env``: one ``KnowledgeSelectionEnv`` on one torch thread (one core);
* ``AsyncVectorEnv``: ``--async-copies`` single envs in as many spawned processes, one thread
  each (one core per copy);
* ``batched N``: :class:`kd_env.batched.BatchedKDVectorEnv` with N copies on one thread (one core).

The ratio column divides each row's steps/s per core by the single env's.  The rows are run in
turn, ``--rounds`` times, and each row's median over the rounds is shown (the machines are noisy).
Not a test: timings depend on the machine and its load.

Usage::

    python perf/batched_env_speed.py                       # N = 1, 8, 32, 128
    python perf/batched_env_speed.py --sizes 32 --rounds 1 --seconds 2
    python perf/batched_env_speed.py --profile 32          # where a batched phase's time goes

``--profile N`` skips the speed table: it times the parts of ``StudentBatch.train_phase`` at N
copies (random masks, 10 optimizer steps a phase) and prints torch.profiler's operator table.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import kd_env  # noqa: E402,F401  (registers the ids)
from kd_env.batched import BatchedKDVectorEnv  # noqa: E402


def cpu_description() -> str:
    """CPU model and whether it has AMX / AVX512-BF16 (they decide fp32 vs bf16 elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split())
    except OSError:
        pass
    have = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return f"{model}; flags: {', '.join(have) or 'none of amx_bf16/avx512_bf16/avx512f/avx2'}"


def steps_per_second(env, num_copies: int, seconds: float, vector: bool, seed: int = 0) -> float:
    """Env steps per second over whole episodes with random masks (resets included)."""
    rng = np.random.default_rng(seed)
    k = (env.single_action_space if vector else env.action_space).n
    env.reset(seed=seed)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or steps == 0:
        if vector:
            env.step(rng.integers(0, 2, (num_copies, k), dtype=np.int8))  # next-step autoreset
            steps += num_copies
        else:
            *_, terminated, truncated, _ = env.step(rng.integers(0, 2, k, dtype=np.int8))
            steps += 1
            if terminated or truncated:
                env.reset()
    return steps / (time.perf_counter() - start)


def profile_phase(env_id: str, n: int, phases: int = 10, device: str = "cpu") -> None:
    """Where one batched phase's time goes at ``n`` copies: wall time per optimizer step of the
    parts of :meth:`~kd_env.batched.StudentBatch.train_phase`, then torch.profiler's operators."""
    from torch.profiler import ProfilerActivity, profile

    from kd_env.batched import StudentBatch
    from kd_env.batched.handstep import _HandStep

    env = BatchedKDVectorEnv(n, **gym.spec(env_id).kwargs, device=device)
    env.reset(seed=0)
    batch = env.batch
    rng = np.random.default_rng(0)
    k = len(batch.knowledge)
    steps = batch.distillers[0].config.steps_per_action
    spent: dict[str, float] = {}

    def timed(owner, name, label):
        original = inspect.getattr_static(owner, name)  # a staticmethod stays one
        call = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
        return original, staticmethod(wrapper) if isinstance(original, staticmethod) else wrapper

    parts = [(StudentBatch, "_gather", "gather the batch"), (StudentBatch, "forward", "student forward"),
             (StudentBatch, "_terms", "knowledge terms (forward)"), (torch.Tensor, "backward", "backward"),
             (_HandStep, "forward", "forward and every term, by hand"),
             (_HandStep, "backward", "backward, by hand"),
             (StudentBatch, "_clip", "gradient norms and clipping"), (StudentBatch, "_adamw", "AdamW"),
             (StudentBatch, "_prediction_stats", "prediction statistics"),
             (StudentBatch, "train_phase", "whole phase")]
    saved = []

    def phase() -> None:
        batch.train_phase(rng.integers(0, 2, (n, k)).astype(np.float64), [steps] * n)

    try:
        for _ in range(3):
            phase()
        for owner, name, label in parts:
            original, wrapper = timed(owner, name, label)
            saved.append((owner, name, original))
            setattr(owner, name, wrapper)
        for _ in range(phases):
            phase()
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    print(f"\n## One batched phase at N = {n} ({phases} phases of {steps} optimizer steps, random masks)\n")
    print("| part | ms per optimizer step |")
    print("|---|---|")
    whole = spent.pop("whole phase")
    for label, seconds in spent.items():
        print(f"| {label} | {seconds / (phases * steps) * 1e3:.2f} |")
    print(f"| rest (statistics, bookkeeping) | {(whole - sum(spent.values())) / (phases * steps) * 1e3:.2f} |")
    print(f"| whole phase | {whole / (phases * steps) * 1e3:.2f} |\n")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(phases):
            phase()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    env.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="kd_env/DigitsKD-v0")
    p.add_argument("--sizes", default="1,8,32,128", help="batched copies N, comma separated")
    p.add_argument("--async-copies", type=int, default=2, help="processes of the AsyncVectorEnv row (0: none)")
    p.add_argument("--seconds", type=float, default=8.0, help="wall time per row and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu", help="device of the batched env (cpu, cuda)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile StudentBatch.train_phase at N copies instead of timing env steps")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x]
    torch.set_num_threads(1)
    if a.profile:
        print(f"CPU: {cpu_description()}; torch {torch.__version__}, 1 thread")
        profile_phase(a.env, a.profile, device=a.device)
        return
    rows: dict[str, list[float]] = {}  # name -> steps/s per core, one per round
    cores: dict[str, int] = {}
    envs = {"single env": (gym.make(a.env, threads=1), 1, False)}
    cores["single env"] = 1
    if a.async_copies > 0:
        name = f"AsyncVectorEnv, {a.async_copies} processes"
        envs[name] = (gym.make_vec(a.env, num_envs=a.async_copies, vectorization_mode="async",
                                   vector_kwargs={"context": "spawn"}, threads=1), a.async_copies, True)
        cores[name] = a.async_copies
    for n in sizes:
        name = f"batched, N = {n}" + (f" ({a.device})" if a.device != "cpu" else "")
        envs[name] = (BatchedKDVectorEnv(n, **gym.spec(a.env).kwargs, device=a.device), n, True)
        cores[name] = 1
    try:
        for r in range(a.rounds):
            for name, (env, n, vector) in envs.items():
                rows.setdefault(name, []).append(steps_per_second(env, n, a.seconds, vector, seed=r) / cores[name])
    finally:
        for env, _, _ in envs.values():
            env.close()
    base = statistics.median(rows["single env"])
    print(f"\n## Batched env speed: {a.env}\n")
    print(f"CPU: {cpu_description()}; {os.cpu_count()} CPUs; torch {torch.__version__}, 1 thread per process; "
          f"fp32; {a.rounds} round(s) of {a.seconds:g} s per row, medians; load average at the end "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| env | cores | env steps/s per core | vs single env |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        value = statistics.median(values)
        print(f"| {name} | {cores[name]} | {value:.0f} | {value / base:.2f}x |")


if __name__ == "__main__":
    main()
