"""Speed of the knowledge-selection environment: its overhead over the engine, and env steps/s.

(1) Overhead: one ``env.step`` against the engine's ``Distiller.train_phase`` alone, on the same
phase: the env's full state is saved (``state_dict``) before each repetition and restored between
the two timings, so both run the same optimizer steps on the same batches from the same student
with the same knowledge weights.  The two are interleaved (their order alternates); the table gives the
median times of N repetitions and the median of the N paired ratios.  Two rewards: ``dev_loss_delta`` (the paper's; the step
includes the dev-probe evaluation) and ``train_loss_delta`` with a large ``probe_every`` (no
probe: the env's pure bookkeeping overhead).  Targets: <= 1.25x on DigitsKD, <= 1.05x on the
text env (pure overhead).

(2) DigitsKD env steps per second at ``steps_per_action=10`` over whole episodes (resets
included), random mask actions.

Usage::

    python perf/env_speed.py               # DigitsKD (+ TextKD when its teacher is cached)
    python perf/env_speed.py --text        # also TextKD (fine-tunes MiniLM + builds its
                                                 # teacher cache the first time: slow on CPU)
    python perf/env_speed.py --no-text --threads 1 --reps 30

The teacher cache lives in ``$KD_ENV_CACHE`` (default ``~/.cache/kd_env``).  Prints a markdown
table.  Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import kd_env  # noqa: E402,F401  (registers the ids)
from kd_env.teacher import cache_root  # noqa: E402

DIGITS = "kd_env/DigitsKD-v0"
TEXT = "kd_env/TextKD-v0"
TARGETS = {DIGITS: 1.25, TEXT: 1.05}


def text_teacher_cached() -> bool:
    """Whether the text preset's fine-tuned teacher is already in the cache (then the text row
    costs minutes, not the teacher's fine-tuning)."""
    return any((cache_root() / "teachers").glob("minilm-l6-rt-polarity-*/teacher.json"))


def overhead(env_id: str, reward: str, reps: int, warmup: int, weights: np.ndarray, **make_kwargs) -> dict:
    """Median seconds of one env step and of ``train_phase`` alone on the same phase."""
    probe_every = 10**9 if reward == "train_loss_delta" else 1
    env = gym.make(env_id, reward=reward, probe_every=probe_every, record_time=False, **make_kwargs)
    base = env.unwrapped
    distiller = base.distiller
    env.reset(seed=0)
    for _ in range(warmup):  # past the first-call costs (passive checker, allocator, caches)
        env.step(weights)
    state = base.state_dict()
    env_times, engine_times = [], []

    def time_env():
        start = time.perf_counter()
        env.step(weights)
        env_times.append(time.perf_counter() - start)

    def time_engine():
        start = time.perf_counter()
        distiller.train_phase(weights)
        engine_times.append(time.perf_counter() - start)

    for rep in range(reps):
        first, second = (time_env, time_engine) if rep % 2 == 0 else (time_engine, time_env)
        first()
        base.load_state_dict(state)
        second()
        base.load_state_dict(state)
    env.close()
    env_med, engine_med = statistics.median(env_times), statistics.median(engine_times)
    # the median of the paired ratios: robust to load that drifts over the run
    paired = statistics.median(e / g for e, g in zip(env_times, engine_times))
    return {"env": env_med, "engine": engine_med, "ratio": paired,
            "phase_steps": distiller.config.steps_per_action}


def throughput(episodes: int, steps_per_action: int = 10) -> dict:
    """DigitsKD env steps per second over whole episodes (resets included)."""
    env = gym.make(DIGITS, steps_per_action=steps_per_action)
    env.action_space.seed(0)
    env.reset(seed=0)
    env.step(env.action_space.sample())  # warm-up
    steps = 0
    start = time.perf_counter()
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            steps += 1
            done = term or trunc
    seconds = time.perf_counter() - start
    env.close()
    return {"steps": steps, "seconds": seconds, "per_second": steps / seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", dest="text", action="store_true", default=None,
                      help="also measure TextKD-v0 (default: only if its teacher is already cached)")
    text.add_argument("--no-text", dest="text", action="store_false", help="skip TextKD-v0")
    parser.add_argument("--reps", type=int, default=31, help="repetitions per overhead measurement (median)")
    parser.add_argument("--text-reps", type=int, default=5, help="repetitions on the text env")
    parser.add_argument("--warmup", type=int, default=2, help="env steps before timing")
    parser.add_argument("--episodes", type=int, default=6, help="DigitsKD episodes for steps/s")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with_text = text_teacher_cached() if args.text is None else args.text

    rows = []
    cases = [(DIGITS, args.reps)] + ([(TEXT, args.text_reps)] if with_text else [])
    for env_id, reps in cases:
        weights = np.ones(4, np.int8)  # every default knowledge type: the most work per phase
        for reward in ("dev_loss_delta", "train_loss_delta"):
            r = overhead(env_id, reward, reps, args.warmup, weights)
            rows.append((env_id, reward, reps, r))
            print(f"  measured {env_id} {reward}: {r['ratio']:.3f}x", file=sys.stderr, flush=True)
    tp = throughput(args.episodes)

    print(f"\n## Environment speed\n\nmachine: {platform.machine()} {platform.system()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"device cpu\n")
    print("| env | reward | probe each phase | steps/phase | reps | env.step (ms) | train_phase (ms) "
          "| ratio (median of pairs) | target (pure overhead) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for env_id, reward, reps, r in rows:
        pure = reward == "train_loss_delta"
        target = f"<= {TARGETS[env_id]:.2f}x: {'met' if r['ratio'] <= TARGETS[env_id] else 'MISSED'}" if pure else "-"
        print(f"| {env_id} | {reward} | {'no' if pure else 'yes'} | {r['phase_steps']} | {reps} | "
              f"{1000 * r['env']:.2f} | {1000 * r['engine']:.2f} | {r['ratio']:.3f}x | {target} |")
    print("\n| env | steps/phase | episodes | env steps | seconds | env steps/s | env steps/min |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {DIGITS} | 10 | {args.episodes} | {tp['steps']} | {tp['seconds']:.2f} | "
          f"{tp['per_second']:.1f} | {60 * tp['per_second']:.0f} |")
    if not with_text:
        print("\n(TextKD-v0 not measured: pass --text; its teacher is fine-tuned and cached once.)")


if __name__ == "__main__":
    main()
