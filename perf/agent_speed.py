"""Speed of the agents on DigitsKD: env steps per second while learning, and where the time goes.

Each algorithm learns for ``--episodes`` episodes from scratch, with the hyperparameters and
action mode of its ``experiments/configs/<algo>.yml``.  The env is wrapped in a timer that adds
up the wall time spent inside ``env.step`` and ``env.reset`` (the distillation itself: the
student's optimizer steps and the dev probe).  Everything else inside ``agent.learn`` is the
agent's time: acting, updates, replay and rollout bookkeeping (SB3's vec-env layer included).

Columns: steps/s = env steps per wall second while learning; env % and agent % = shares of the
learning wall time; overhead = agent time / env time.  Target: ``ac`` overhead < 20% of the env
time.

Usage::

    python perf/agent_speed.py                               # ac ac_q ppo a2c dqn sac td3 random_hard
    python perf/agent_speed.py --algos ac,ppo --episodes 10 --threads 1
    python perf/agent_speed.py --workers 1,2 --env kd_env/TextKD-v0 --episodes 4

``--workers 1,2`` instead measures selector-training episodes per hour of ``ac`` learning from
one env and from a vector env of N copies in N spawned processes (one torch thread each;
``agents.make_vector_env``), interleaved over ``--repeats`` rounds, and prints the median and
range of each and of the speed-up.

Prints a markdown table.  Not a test: timings depend on the machine and its load; the env is
built (and its teacher cached) and one warm-up episode run before any timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

import kd_env  # noqa: E402,F401  (registers the ids)
from agents import make_agent, run_episode  # noqa: E402
from experiments.benchmark import load_algo_config, resolve_settings  # noqa: E402
from experiments.report import markdown_table  # noqa: E402

DIGITS = "kd_env/DigitsKD-v0"
DEFAULT_ALGOS = ("ac", "ac_q", "ppo", "a2c", "dqn", "sac", "td3", "random_hard")
TARGET_OVERHEAD = {"ac": 0.20}


class EnvTimer(gym.Wrapper):
    """Adds up the wall time spent in the wrapped env's ``step`` and ``reset``."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.seconds = 0.0
        self.steps = 0

    def reset(self, **kwargs):
        start = time.perf_counter()
        try:
            return self.env.reset(**kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def step(self, action):
        start = time.perf_counter()
        try:
            return self.env.step(action)
        finally:
            self.seconds += time.perf_counter() - start
            self.steps += 1


def measure(algo: str, env_id: str, episodes: int) -> dict:
    """Learn ``episodes`` episodes of ``algo`` from scratch; time env and agent."""
    settings = resolve_settings(algo, env_id, load_algo_config(algo))
    env = EnvTimer(gym.make(env_id, action_mode=settings.action_mode, **settings.env_kwargs))
    try:
        agent = make_agent(algo, env, seed=0, **settings.hyperparams)
        run_episode(env, agent, deterministic=True, seed=10**9)  # warm-up: first-call costs out of the timing
        env.seconds, env.steps = 0.0, 0
        start = time.perf_counter()
        if settings.episodes > 0:
            agent.learn(env, total_episodes=episodes)
        else:  # a baseline does not learn: time the same number of acting episodes
            for i in range(episodes):
                run_episode(env, agent, deterministic=False, seed=i)
        wall = time.perf_counter() - start
    finally:
        env.close()
    agent_seconds = max(0.0, wall - env.seconds)
    return {"algo": algo, "mode": settings.action_mode, "steps": env.steps, "wall": wall, "env": env.seconds,
            "agent": agent_seconds, "steps_per_second": env.steps / wall if wall else float("nan"),
            "overhead": agent_seconds / env.seconds if env.seconds else float("nan")}


def episodes_per_hour(env_id: str, workers: int, episodes: int) -> float:
    """``ac`` learning ``episodes`` episodes from one env (``workers=1``) or from a vector env of
    ``workers`` copies in spawned processes; episodes per wall hour (env building excluded)."""
    from agents import make_vector_env

    settings = resolve_settings("ac", env_id, load_algo_config("ac"))
    kwargs = {"action_mode": settings.action_mode, "threads": 1, **settings.env_kwargs}
    probe = gym.make(env_id, **kwargs)
    env = probe if workers == 1 else make_vector_env(env_id, workers, **kwargs)
    try:
        env.reset(seed=0)
        agent = make_agent("ac", probe, seed=0, **settings.hyperparams)
        start = time.perf_counter()
        agent.learn(env, total_episodes=episodes)
        wall = time.perf_counter() - start
    finally:
        env.close()
        if env is not probe:
            probe.close()
    return 3600.0 * episodes / wall


def workers_table(env_id: str, counts: list[int], episodes: int, repeats: int) -> str:
    import numpy as np

    rates: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(repeats):  # interleaved: the machine's load drifts over minutes
        for n in counts:
            rates[n].append(episodes_per_hour(env_id, n, episodes))
            print(f"  {n} worker(s): {rates[n][-1]:.0f} episodes/h", file=sys.stderr)
    base = np.asarray(rates[counts[0]])
    rows = []
    for n in counts:
        r = np.asarray(rates[n])
        ratio = r / base
        rows.append([n, f"{np.median(r):.0f} [{r.min():.0f}, {r.max():.0f}]",
                     f"{np.median(ratio):.2f} [{ratio.min():.2f}, {ratio.max():.2f}]"])
    return markdown_table(["workers", "selector-training episodes/h (median [range])",
                           f"speed-up vs {counts[0]} (median [range])"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", default=",".join(DEFAULT_ALGOS), help="comma-separated agent names")
    p.add_argument("--env", default=DIGITS)
    p.add_argument("--episodes", type=int, default=4, help="learning episodes per algorithm")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--workers", default=None, help="e.g. 1,2: episodes/hour of ac with 1 and 2 parallel envs")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the --workers measurement")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.workers:
        counts = [int(w) for w in args.workers.split(",")]
        gym.make(args.env).close()  # fine-tune and cache the teacher once, outside the timings
        table = workers_table(args.env, counts, args.episodes, args.repeats)
        print(f"\n{args.env}, ac learning {args.episodes} episodes per measurement, {args.repeats} interleaved "
              f"rounds, {os.cpu_count()} CPUs (load: {os.getloadavg()[0]:.1f})\n")
        print(table)
        return 0
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    gym.make(args.env).close()  # fine-tune and cache the teacher once, outside the timings
    rows = []
    for algo in algos:
        r = measure(algo, args.env, args.episodes)
        target = TARGET_OVERHEAD.get(algo)
        verdict = "" if target is None else ("ok" if r["overhead"] < target else "OVER")
        rows.append([algo, r["mode"], r["steps"], f"{r['wall']:.2f}", f"{r['steps_per_second']:.1f}",
                     f"{100 * r['env'] / r['wall']:.0f}%", f"{100 * r['agent'] / r['wall']:.0f}%",
                     f"{100 * r['overhead']:.1f}%" + (f" (target < {100 * target:.0f}%: {verdict})" if target else "")])
        print(f"  {algo}: {r['steps_per_second']:.1f} steps/s, overhead {100 * r['overhead']:.1f}%", file=sys.stderr)
    print(f"\n{args.env}, {args.episodes} learning episodes per algorithm, torch threads {args.threads}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (load: {os.getloadavg()[0]:.1f})\n")
    print(markdown_table(["algorithm", "mode", "env steps", "wall s", "steps/s", "env %", "agent %",
                          "agent overhead / env"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
