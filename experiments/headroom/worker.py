"""What is the best any knowledge-selection policy could do on an env?

``python -m experiments.headroom --env kd_env/DigitsKD-Instances-v0`` measures, before any agent
is judged, how much room an env leaves a learned selector:

* **every fixed mask** (2^K) and the **single best fixed mask**, chosen by the mean dev-split
  metric on the *selection seeds* of the *train instances*;
* the **per-instance oracle**: on each held-out instance, the fixed mask with the best dev metric
  on that instance's selection seeds (a policy that knows the instance);
* **two-stage schedules** (mask A for the first k phases, then B), A and B among the best fixed
  masks and k among a few switch points, the best chosen on the selection seeds by dev;
* **greedy oracles** that branch from the env state every phase, try every mask and keep the
  best by the env's reward (``greedy:reward``) or by the dev-probe metric (``greedy:probe``);
* the literature's **dynamic baselines** (``dynamic_kd``, ``eskd``, ``two_stage``, ``anneal``);
* **reward alignment**: over random-mask policies on the train instances, the correlation of an
  episode's return under each registered reward with the final dev and test metric.

Every choice uses selection seeds and the dev split; held-out instances and *test seeds* are
only scored, on the test split.  Results go to ``runs/headroom-<env>/`` (``results.json``,
``results.md``, ``headroom.png``); finished episodes are kept in ``units.jsonl`` so an
interrupted run resumes where it stopped.  ``--quick`` finishes within a few minutes on digits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from agents import agent_names, make_agent, run_episode
from kd_env.io import atomic_write_json, atomic_write_text
from kd_env.rewards import BUILTIN_REWARDS, reward_names

from .cli import SEEDS_HELP, load_plugins, parse_seeds
from .report import markdown_table
from .stats import mean_std, paired_difference

DYNAMIC_BASELINES = ("dynamic_kd", "eskd", "two_stage", "anneal")


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass
class HeadroomSettings:
    """What to measure, and on how many seeds."""

    env: str = "kd_env/DigitsKD-Instances-v0"
    """env id (an instance env, or a plain env = one instance)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra ``gym.make`` keywords (e.g. ``{"total_steps": 60}``)"""
    selection_seeds: list[int] = field(default_factory=lambda: list(range(0, 5)))
    """reset seeds on which every choice is made (dev metric)"""
    test_seeds: list[int] = field(default_factory=lambda: list(range(1000, 1010)))
    """reset seeds on which held-out results are scored (test metric)"""
    greedy_seeds: int = 5
    """how many of the test seeds the (16x costlier) greedy oracles run on"""
    top_masks: int = 3
    """two-stage schedules combine the best this-many fixed masks"""
    switch_points: tuple[float, ...] = (1 / 3, 1 / 2, 2 / 3)
    """fractions of the phases after which a two-stage schedule switches"""
    random_episodes: int = 40
    """random-mask episodes for the reward-alignment check"""
    rewards: tuple[str, ...] = ()
    """rewards checked for alignment (default: every registered one that needs no parameters)"""
    workers: int = 1
    batch: int = 32
    """open-loop episodes (fixed masks, schedules, random masks) run this many at a time on the
    env's batched vector env, where it has one (the digits ids); 1: one at a time on the single env"""
    out: str | None = None
    plugins: list[str] = field(default_factory=list)
    """user files imported first in every process (rewards, knowledge, instance sets)"""

    @classmethod
    def quick(cls, **changes: Any) -> "HeadroomSettings":
        base = dict(selection_seeds=[0, 1], test_seeds=[1000, 1001, 1002], greedy_seeds=1, top_masks=3,
                    switch_points=(1 / 2,), random_episodes=12)
        base.update(changes)
        return cls(**base)


# --------------------------------------------------------------------------------------------
# Policies and one episode (a unit)
# --------------------------------------------------------------------------------------------


def mask_bits(mask: Sequence[int]) -> str:
    return "".join(str(int(b)) for b in mask)


def all_masks(k: int) -> list[str]:
    return ["".join(bits) for bits in itertools.product("01", repeat=k)]


def _bits(s: str) -> np.ndarray:
    return np.asarray([int(c) for c in s], dtype=np.int8)


def schedule_name(first: str, second: str, switch: int) -> str:
    return f"schedule:{first}>{second}@{switch}"


def _actions_for(policy: str, phase: int) -> np.ndarray:
    """The action of a fixed mask (``fixed:1100``) or a two-stage schedule at ``phase`` (0-based)."""
    if policy.startswith("fixed:"):
        return _bits(policy[6:])
    if policy.startswith("schedule:"):
        body, switch = policy[9:].split("@")
        first, second = body.split(">")
        return _bits(first if phase < int(switch) else second)
    raise ValueError(f"not an open-loop policy: {policy!r}")


class _Worker:
    """One env (all instances built lazily and kept) that runs units."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], plugins: Sequence[str] = (), batch: int = 1):
        import gymnasium as gym
        import torch

        import kd_env  # noqa: F401 - registers the ids

        load_plugins(plugins)
        torch.set_num_threads(1)
        self.env_id, self.env_kwargs = env_id, {"record_time": False, **env_kwargs}
        self.env = gym.make(env_id, **self.env_kwargs).unwrapped
        self.reward = self.env.reward_fn.name
        self.batch = batch if batch > 1 and gym.spec(env_id).vector_entry_point is not None else 1
        self._venv = None

    def options(self, instance: str | None, reward: str | None = None) -> dict[str, Any]:
        """Reset options: the instance, and always the reward (a random-policy unit may have
        switched it)."""
        out: dict[str, Any] = {"reward": reward or self.reward}
        if instance is not None:
            out["instance"] = instance
        return out

    def finish(self, returns: float, length: int, splits: Sequence[str] = ("dev", "test"),
               env: Any = None) -> dict[str, Any]:
        """The episode's outcome: return, length, and the final student's metric on ``splits``
        (a selection unit needs only dev, a scoring unit only test; text evaluations are costly)."""
        env = env or self.env
        d = env.distiller
        out = {"return": float(returns), "length": int(length), "probe": float(env.last_probe["main"])}
        for split in ("dev", "test"):
            out[split] = float(d.evaluate(split)["main"]) if split in splits else None
        return out

    def run(self, unit: dict[str, Any]) -> dict[str, Any]:
        policy, instance, seed = unit["policy"], unit["instance"], int(unit["seed"])
        splits = unit.get("splits", ("dev", "test"))
        start = time.perf_counter()
        if policy.startswith("greedy:"):
            out = self._greedy(policy[7:], instance, seed, splits)
        elif policy.startswith("random:"):
            out = self._random(policy, instance, seed, unit["reward"])
        elif policy.startswith(("fixed:", "schedule:")):
            self.env.reset(seed=seed, options=self.options(instance))
            total, phase, done = 0.0, 0, False
            while not done:
                _, r, done, _, _ = self.env.step(_actions_for(policy, phase))
                total += r
                phase += 1
            out = self.finish(total, phase, splits)
        elif policy.startswith("agent:"):
            agent = make_agent(policy[6:], self.env, seed=seed)
            ep = run_episode(self.env, agent, seed=seed, options=self.options(instance))
            out = self.finish(ep["return"], ep["length"], splits)
        else:
            raise ValueError(f"unknown policy {policy!r}")
        out["seconds"] = time.perf_counter() - start
        return {**unit, **out}

    def _greedy(self, by: str, instance: str | None, seed: int, splits: Sequence[str]) -> dict[str, Any]:
        env = self.env
        env.reset(seed=seed, options=self.options(instance))
        masks = all_masks(len(env.knowledge_names))
        total, length, done, chosen = 0.0, 0, False, []
        while not done:
            state = env.state_dict()
            best = None
            for m in masks:
                env.load_state_dict(state)
                _, r, term, _, info = env.step(_bits(m))
                score = (r,) if by == "reward" else (info["probe_metric"], -info["probe_loss"])
                if best is None or score > best[0]:
                    best = (score, m, env.state_dict(), r, term)
            _, m, after, r, term = best
            env.load_state_dict(after)
            total, length, done = total + r, length + 1, term
            chosen.append(m)
        out = self.finish(total, length, splits)
        out["actions"] = chosen
        return out

    def _random(self, policy: str, instance: str | None, seed: int, reward: str) -> dict[str, Any]:
        env = self.env
        env.reset(seed=seed, options=self.options(instance, reward))
        rng = np.random.default_rng([int(policy.split(":")[1]), seed])
        total, length, done = 0.0, 0, False
        while not done:
            _, r, done, _, _ = env.step(rng.integers(0, 2, len(env.knowledge_names)).astype(np.int8))
            total, length = total + r, length + 1
        return self.finish(total, length)

    def run_many(self, units: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``units``, the open-loop ones ``batch`` at a time on the batched env (the same episodes
        as one by one, up to float rounding), the others one by one."""
        if self.batch <= 1:
            return [self.run(u) for u in units]
        batched = [u for u in units if u["policy"].startswith(OPEN_LOOP)]
        out = [self.run(u) for u in units if not u["policy"].startswith(OPEN_LOOP)]
        for start in range(0, len(batched), self.batch):
            out.extend(self._run_open_loop(batched[start:start + self.batch]))
        return out

    def _run_open_loop(self, units: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Open-loop units side by side, one copy of the batched env each."""
        import gymnasium as gym

        if self._venv is None:
            self._venv = gym.make_vec(self.env_id, num_envs=self.batch, vectorization_mode="vector_entry_point",
                                      **self.env_kwargs)
        venv = self._venv
        start = time.perf_counter()
        rngs = {i: np.random.default_rng([int(u["policy"].split(":")[1]), int(u["seed"])])
                for i, u in enumerate(units) if u["policy"].startswith("random:")}
        resets = {i: (int(u["seed"]), self.options(u["instance"], u.get("reward"))) for i, u in enumerate(units)}
        _raise_first(venv.advance({}, resets))
        k = len(self.env.knowledge_names)
        totals, lengths = np.zeros(len(units)), np.zeros(len(units), dtype=np.int64)
        live = set(range(len(units)))
        while live:
            steps = {i: rngs[i].integers(0, 2, k).astype(np.int8) if i in rngs
                     else _actions_for(units[i]["policy"], int(lengths[i])) for i in sorted(live)}
            results = _raise_first(venv.advance(steps, {}))
            for i in list(live):
                _, r, terminated, truncated, _ = results[i]
                totals[i] += r
                lengths[i] += 1
                if terminated or truncated:
                    live.discard(i)
        seconds = (time.perf_counter() - start) / len(units)
        out = []
        for i, u in enumerate(units):
            splits = ("dev", "test") if i in rngs else u.get("splits", ("dev", "test"))
            rec = self.finish(totals[i], int(lengths[i]), splits, env=venv.envs[i])
            rec["seconds"] = seconds
            out.append({**u, **rec})
        return out

    def close(self) -> None:
        self.env.close()
        if self._venv is not None:
            self._venv.close()


#: policies whose actions do not depend on the state: they run batched where the env allows
OPEN_LOOP = ("fixed:", "schedule:", "random:")


def _raise_first(results: dict[int, Any]) -> dict[int, Any]:
    for value in results.values():
        if isinstance(value, BaseException):
            raise value
    return results


_WORKER: _Worker | None = None


def _init_worker(env_id: str, env_kwargs: dict[str, Any], plugins: Sequence[str], batch: int = 1) -> None:
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER = _Worker(env_id, env_kwargs, plugins, batch)


def _run_units(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert _WORKER is not None
    return _WORKER.run_many(units)


def builtin_rewards() -> list[str]:
    """The rewards kd_env ships (plug-in rewards are checked only when named with ``--rewards``)."""
    return list(BUILTIN_REWARDS)


def unit_key(unit: dict[str, Any]) -> str:
    return f"{unit['policy']}|{unit['instance']}|{unit['seed']}|{unit.get('reward', '')}"


# --------------------------------------------------------------------------------------------
# The run: stages, resume, analysis
# --------------------------------------------------------------------------------------------


class HeadroomRun:
    """The stages of a headroom measurement over one env, resumable through ``units.jsonl``."""

    def __init__(self, settings: HeadroomSettings):
        import gymnasium as gym

        import kd_env  # noqa: F401

        self.settings = settings
        if settings.env not in gym.registry:
            ids = sorted(i for i in gym.registry if i.startswith("kd_env/"))
            raise ValueError(f"unknown env id {settings.env!r}; valid: {ids}")
        probe = gym.make(settings.env, **{"record_time": False, **settings.env_kwargs}).unwrapped
        try:
            self.knowledge = list(probe.knowledge_names)
            self.num_phases = probe.config.num_phases
            self.reward = probe.reward_fn.name
            iset = probe.instance_set
            self.train_instances: list[str | None] = iset.train_names if iset else [None]
            self.test_instances: list[str | None] = iset.test_names if iset else [None]
        finally:
            probe.close()
        name = settings.env.split("/")[-1]
        self.out = Path(settings.out or f"runs/headroom-{name}")
        self.units_path = self.out / "units.jsonl"
        self.done: dict[str, dict[str, Any]] = {}
        self.started = time.perf_counter()

    # ---- units on disk -------------------------------------------------------------------------
    def load(self) -> None:
        """Read finished units; a line cut short by a kill is dropped (and the file rewritten)."""
        if not self.units_path.exists():
            return
        good, bad = [], 0
        for line in self.units_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                good.append(rec)
            except json.JSONDecodeError:
                bad += 1
        self.done = {unit_key(r): r for r in good}
        if bad:
            atomic_write_text(self.units_path, "".join(json.dumps(r) + "\n" for r in good))

    def run_units(self, units: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
        todo = [u for u in units if unit_key(u) not in self.done]
        if todo:
            print(f"[headroom] {label}: {len(todo)} episodes to run ({len(units) - len(todo)} done before)",
                  flush=True)
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.units_path, "a", encoding="utf-8") as fh:
                for rec in self._execute(todo):
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                    self.done[unit_key(rec)] = rec
        return [self.done[unit_key(u)] for u in units]

    def _execute(self, units: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        s = self.settings
        units = sorted(units, key=lambda u: (str(u["instance"]), u["policy"]))  # keeps an instance's distiller warm
        # chunks of units: `batch` open-loop episodes run side by side on the batched env
        size = max(4, s.batch)
        chunks = [units[i:i + size] for i in range(0, len(units), size)]
        if s.workers <= 1:
            worker = _Worker(s.env, s.env_kwargs, s.plugins, s.batch)
            try:
                for chunk in chunks:
                    yield from worker.run_many(chunk)
            finally:
                worker.close()
            return
        ctx = mp.get_context("spawn")
        with ctx.Pool(s.workers, initializer=_init_worker, initargs=(s.env, s.env_kwargs, s.plugins, s.batch)) as pool:
            for done in pool.imap_unordered(_run_units, chunks):
                yield from done

    # ---- stages ----------------------------------------------------------------------------------
    def fixed_units(self, instances, seeds, split: str) -> list[dict[str, Any]]:
        return [{"policy": f"fixed:{m}", "instance": i, "seed": s, "splits": [split]}
                for m in all_masks(len(self.knowledge)) for i in instances for s in seeds]

    def execute(self) -> dict[str, Any]:
        s = self.settings
        self.load()
        instances = list(dict.fromkeys(self.train_instances + self.test_instances))
        # 1. selection: every fixed mask on every instance's selection seeds (dev metric)
        sel = self.run_units(self.fixed_units(instances, s.selection_seeds, "dev"), "fixed masks, selection seeds")
        masks = all_masks(len(self.knowledge))
        dev_train = {m: np.mean([r["dev"] for r in sel if r["policy"] == f"fixed:{m}"
                                 and r["instance"] in self.train_instances]) for m in masks}
        ranked = sorted(masks, key=lambda m: -dev_train[m])
        best_fixed = ranked[0]
        oracle = {}
        for inst in self.test_instances:
            dev_inst = {m: np.mean([r["dev"] for r in sel if r["policy"] == f"fixed:{m}" and r["instance"] == inst])
                        for m in masks}
            oracle[inst] = max(masks, key=lambda m: dev_inst[m])
        # 2. two-stage schedules among the best masks, chosen on the selection seeds (train instances)
        schedules = self.two_stage_schedules(ranked[: s.top_masks])
        sched_units = [{"policy": p, "instance": i, "seed": sd, "splits": ["dev"]} for p in schedules
                       for i in self.train_instances for sd in s.selection_seeds]
        sched_sel = self.run_units(sched_units, "two-stage schedules, selection seeds")
        sched_dev = {p: np.mean([r["dev"] for r in sched_sel if r["policy"] == p]) for p in schedules}
        best_schedule = max(schedules, key=lambda p: sched_dev[p]) if schedules else None
        # 3. scoring on held-out instances and test seeds
        test_units = self.fixed_units(self.test_instances, s.test_seeds, "test")
        if best_schedule:
            test_units += [{"policy": best_schedule, "instance": i, "seed": sd, "splits": ["test"]}
                           for i in self.test_instances for sd in s.test_seeds]
        available = set(agent_names())
        dynamic = [b for b in DYNAMIC_BASELINES if b in available]
        test_units += [{"policy": f"agent:{b}", "instance": i, "seed": sd, "splits": ["test"]}
                       for b in dynamic for i in self.test_instances for sd in s.test_seeds]
        scored = self.run_units(test_units, "scoring on held-out instances, test seeds")
        greedy_units = [{"policy": f"greedy:{by}", "instance": i, "seed": sd, "splits": ["test"]}
                        for by in ("reward", "probe")
                        for i in self.test_instances for sd in s.test_seeds[: s.greedy_seeds]]
        scored += self.run_units(greedy_units, "greedy oracles (branching every phase)")
        # 4. reward alignment over random policies on the train instances
        rewards = list(s.rewards) or builtin_rewards()
        rand_units = [{"policy": f"random:{e}", "instance": self.train_instances[e % len(self.train_instances)],
                       "seed": 5000 + e, "reward": rw} for e in range(s.random_episodes) for rw in rewards]
        rand = self.run_units(rand_units, "reward alignment (random policies)")
        return self.analyse(scored, best_fixed, oracle, best_schedule, sched_dev, dev_train, dynamic, rand, rewards)

    def two_stage_schedules(self, top: Sequence[str]) -> list[str]:
        """Every "A for k phases, then B" over the masks ``top`` and the switch points; none on an
        env with one phase per episode (one decision: a schedule would be a fixed mask)."""
        if self.num_phases < 2:
            return []
        n = self.num_phases
        switches = sorted({min(n - 1, max(1, int(round(f * n)))) for f in self.settings.switch_points})
        return [schedule_name(a, b, k) for a in top for b in top if a != b for k in switches]

    # ---- analysis --------------------------------------------------------------------------------
    def analyse(self, scored, best_fixed, oracle, best_schedule, sched_dev, dev_train, dynamic, rand,
                rewards) -> dict[str, Any]:
        def by_pair(policy_of: Any) -> dict[tuple, float]:
            out = {}
            for r in scored:
                want = policy_of(r["instance"]) if callable(policy_of) else policy_of
                if r["policy"] == want:
                    out[(str(r["instance"]), r["seed"])] = r["test"]
            return out

        reference = by_pair(f"fixed:{best_fixed}")
        rows = []

        def add(name: str, how: str, pairs: dict[tuple, float], kind: str) -> None:
            vals = list(pairs.values())
            m, sd = mean_std(vals)
            diff = paired_difference(pairs, reference)
            rows.append({"policy": name, "kind": kind, "chosen": how, "n": len(vals), "test_mean": m, "test_std": sd,
                         "diff_vs_best_fixed": diff})

        for m in all_masks(len(self.knowledge)):
            add(f"fixed:{m}", f"dev {dev_train[m]:.4f} (train instances, selection seeds)",
                by_pair(f"fixed:{m}"), "best fixed" if m == best_fixed else "fixed")
        if self.test_instances != [None]:  # one instance: the oracle is the best fixed mask itself
            add("per-instance oracle", "per instance: " + ", ".join(f"{i}={oracle[i]}" for i in self.test_instances),
                by_pair(lambda inst: f"fixed:{oracle[inst]}"), "instance-aware")
        if best_schedule:
            add(best_schedule, f"best of {len(sched_dev)} two-stage schedules by dev", by_pair(best_schedule),
                "dynamic")
        for b in dynamic:
            add(b, "literature baseline (no choice)", by_pair(f"agent:{b}"), "dynamic")
        for by in ("reward", "probe"):
            add(f"greedy:{by}", f"branches every phase, keeps the best by {by}", by_pair(f"greedy:{by}"), "oracle")
        candidates = [r for r in rows if r["kind"] in ("instance-aware", "dynamic", "oracle") and r["n"]]
        best_candidate = max(candidates, key=lambda r: r["diff_vs_best_fixed"]["mean"]) if candidates else None
        # which mask wins each held-out instance on test (to show that the best mask moves)
        per_instance = {}
        for inst in self.test_instances:
            means = {m: np.mean([r["test"] for r in scored if r["policy"] == f"fixed:{m}" and r["instance"] == inst])
                     for m in all_masks(len(self.knowledge))}
            per_instance[str(inst)] = {"best_on_test": max(means, key=means.get), "chosen_on_dev": oracle[inst],
                                       "test_by_mask": means}
        alignment = self.alignment(rand, rewards)
        return {"env": self.settings.env, "env_kwargs": self.settings.env_kwargs, "knowledge": self.knowledge,
                "env_reward": self.reward, "train_instances": [str(i) for i in self.train_instances],
                "held_out_instances": [str(i) for i in self.test_instances],
                "selection_seeds": self.settings.selection_seeds, "test_seeds": self.settings.test_seeds,
                "greedy_seeds": self.settings.test_seeds[: self.settings.greedy_seeds],
                "best_fixed": best_fixed, "per_instance_oracle": {str(k): v for k, v in oracle.items()},
                "best_schedule": best_schedule, "policies": rows, "per_instance": per_instance,
                "headroom": None if best_candidate is None else {"policy": best_candidate["policy"],
                                                                 **best_candidate["diff_vs_best_fixed"]},
                "reward_alignment": alignment, "wall_seconds": time.perf_counter() - self.started}

    @staticmethod
    def alignment(rand: list[dict[str, Any]], rewards: Sequence[str]) -> list[dict[str, Any]]:
        from scipy import stats

        out = []
        for rw in rewards:
            recs = [r for r in rand if r["reward"] == rw]
            ret = np.asarray([r["return"] for r in recs])
            row: dict[str, Any] = {"reward": rw, "episodes": len(recs)}
            for split in ("dev", "test"):
                y = np.asarray([r[split] for r in recs])
                ok = len(recs) > 2 and ret.std() > 0 and y.std() > 0
                row[f"pearson_{split}"] = float(stats.pearsonr(ret, y)[0]) if ok else None
                row[f"spearman_{split}"] = float(stats.spearmanr(ret, y)[0]) if ok else None
                within = []
                for inst in sorted({str(r["instance"]) for r in recs}):
                    sub = [r for r in recs if str(r["instance"]) == inst]
                    a, b = np.asarray([r["return"] for r in sub]), np.asarray([r[split] for r in sub])
                    if len(sub) > 2 and a.std() > 0 and b.std() > 0:
                        within.append(float(stats.spearmanr(a, b)[0]))
                row[f"within_instance_spearman_{split}"] = float(np.mean(within)) if within else None
            out.append(row)
        return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ci(d: dict[str, Any]) -> str:
    if not d or d.get("n", 0) == 0 or d.get("mean") is None or not math.isfinite(d["mean"]):
        return "n/a"
    if d.get("low") is None or not math.isfinite(d["low"]):
        return f"{d['mean']:+.4f} (CI n/a: 1 pair)"
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def render_markdown(res: dict[str, Any]) -> str:
    lines = [f"# Headroom on `{res['env']}`", ""]
    one = res["held_out_instances"] == ["None"]
    where = ("One instance (the env as made): choices and scores differ in seeds and splits only. " if one else
             f"Train instances: {', '.join(res['train_instances'])}. Held-out instances: "
             f"{', '.join(res['held_out_instances'])}. ")
    lines.append(f"Knowledge (bit order): {', '.join(res['knowledge'])}. Env reward: `{res['env_reward']}`. "
                 f"{where}Choices on selection seeds {res['selection_seeds']} "
                 f"by the dev-split metric; scores on test seeds {res['test_seeds']} (greedy oracles: "
                 f"{res['greedy_seeds']}) by the test-split metric, on the held-out instances.")
    lines.append("")
    h = res["headroom"]
    if h:
        lines.append(f"**Headroom** (best instance-aware or dynamic policy minus the single best fixed mask "
                     f"`{res['best_fixed']}`): `{h['policy']}` {_ci(h)}, {h['wins']} of {h['n']} pairs won.")
        lines.append("")
    ordered = sorted(res["policies"], key=lambda r: -(r["test_mean"] if r["n"] else -1e9))
    lines.append(markdown_table(
        ["policy", "kind", "held-out test metric (mean ± std)", "n", "paired diff vs best fixed (95% CI)",
         "how chosen"],
        [[f"`{r['policy']}`", r["kind"], f"{r['test_mean']:.4f} ± {r['test_std']:.4f}" if r["n"] else "n/a",
          r["n"], _ci(r["diff_vs_best_fixed"]) if r["policy"] != f"fixed:{res['best_fixed']}" else "(reference)",
          r["chosen"]] for r in ordered]))
    lines.append("## The best mask per held-out instance")
    lines.append("")
    lines.append(markdown_table(["instance", "chosen on dev (selection seeds)", "best on test (test seeds)"],
                                [[i, f"`{v['chosen_on_dev']}`", f"`{v['best_on_test']}`"]
                                 for i, v in res["per_instance"].items()]))
    lines.append("## Reward alignment (random-mask policies on the train instances)")
    lines.append("")
    lines.append(markdown_table(
        ["reward", "episodes", "Pearson (return, dev)", "Spearman (return, dev)", "within-instance Spearman (dev)",
         "Pearson (return, test)", "Spearman (return, test)", "within-instance Spearman (test)"],
        [[f"`{a['reward']}`", a["episodes"], _num(a["pearson_dev"]), _num(a["spearman_dev"]),
          _num(a["within_instance_spearman_dev"]), _num(a["pearson_test"]), _num(a["spearman_test"]),
          _num(a["within_instance_spearman_test"])] for a in res["reward_alignment"]]))
    lines.append(f"Wall time: {res['wall_seconds']:.0f} s (this invocation).")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    from .report import _figure, _save

    plt = _figure()
    rows = [r for r in res["policies"] if r["n"]]
    fixed = sorted([r for r in rows if r["policy"].startswith("fixed:")], key=lambda r: -r["test_mean"])
    others = [r for r in rows if not r["policy"].startswith("fixed:")]
    show = others + fixed[:6]
    show.sort(key=lambda r: r["test_mean"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4, 0.35 * len(show) + 1)))
    colours = {"best fixed": "tab:blue", "fixed": "tab:gray", "instance-aware": "tab:green", "dynamic": "tab:orange",
               "oracle": "tab:purple"}
    ax1.barh([r["policy"] for r in show], [r["test_mean"] for r in show],
             xerr=[r["test_std"] for r in show], color=[colours[r["kind"]] for r in show])
    lo = min(r["test_mean"] - r["test_std"] for r in show)
    ax1.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax1.set_xlabel("held-out test metric (mean ± std)")
    ax1.set_title("policies (6 best fixed masks shown)")
    insts = list(res["per_instance"])
    masks = [r["policy"][6:] for r in sorted([r for r in rows if r["policy"].startswith("fixed:")],
                                            key=lambda r: r["policy"])]
    grid = np.asarray([[res["per_instance"][i]["test_by_mask"][m] for m in masks] for i in insts])
    im = ax2.imshow(grid, aspect="auto", cmap="viridis")
    ax2.set_xticks(range(len(masks)), masks, rotation=90, fontsize=7)
    ax2.set_yticks(range(len(insts)), insts, fontsize=8)
    ax2.set_title(f"test metric of each fixed mask ({''.join(k[0] for k in res['knowledge'])} bits)")
    fig.colorbar(im, ax=ax2)
    fig.suptitle(f"headroom on {res['env']}")
    _save(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _kwarg(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--env-kwarg takes key=value, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.headroom", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default=HeadroomSettings.env, help="env id (default %(default)s)")
    p.add_argument("--env-kwarg", action="append", type=_kwarg, default=[], metavar="KEY=VALUE",
                   help="extra gym.make keyword (JSON value), repeatable, e.g. total_steps=60")
    p.add_argument("--quick", action="store_true", help="few seeds and schedules: minutes on digits")
    p.add_argument("--selection-seeds", type=parse_seeds, help="reset seeds for every choice; " + SEEDS_HELP)
    p.add_argument("--test-seeds", type=parse_seeds, help="reset seeds for scoring; " + SEEDS_HELP)
    p.add_argument("--greedy-seeds", type=int, help="test seeds the greedy oracles run on")
    p.add_argument("--top-masks", type=int, help="two-stage schedules combine this many best fixed masks")
    p.add_argument("--random-episodes", type=int, help="random-policy episodes for reward alignment")
    p.add_argument("--rewards", help="comma-separated rewards to check for alignment (default: the built-in "
                                     "ones; plug-in rewards load with --plugin)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import a Python file first (registers rewards, knowledge, instance sets)")
    p.add_argument("--workers", type=int, default=1, help="processes (one torch thread each)")
    p.add_argument("--batch", type=int, default=HeadroomSettings.batch,
                   help="open-loop episodes run side by side on the batched env, where the env has one "
                        "(the digits ids); 1: one at a time on the single env (default %(default)s)")
    p.add_argument("--out", help="output folder (default runs/headroom-<env name>)")
    args = p.parse_args(argv)
    changes: dict[str, Any] = {"env": args.env, "env_kwargs": dict(args.env_kwarg), "workers": args.workers,
                               "batch": args.batch, "out": args.out}
    for name in ("selection_seeds", "test_seeds", "greedy_seeds", "random_episodes", "top_masks"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.batch < 1:
        p.error(f"--batch must be >= 1 (1: the single env), got {args.batch}")
    try:
        load_plugins(args.plugin)
    except FileNotFoundError as exc:
        p.error(str(exc))
    changes["plugins"] = list(args.plugin)
    if args.rewards:
        changes["rewards"] = tuple(r.strip() for r in args.rewards.split(",") if r.strip())
        unknown = [r for r in changes["rewards"] if r not in reward_names()]
        if unknown:
            p.error(f"unknown reward(s) {unknown}; valid: {reward_names()}")
    settings = HeadroomSettings.quick(**changes) if args.quick else HeadroomSettings(**changes)
    if set(settings.selection_seeds) & set(settings.test_seeds):
        p.error("selection and test seeds must not overlap")
    try:
        run = HeadroomRun(settings)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = run.execute()
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.out / "results.json", res)
    text = render_markdown(res)
    atomic_write_text(run.out / "results.md", text)
    plot(res, run.out / "headroom.png")
    print(text)
    print(f"[headroom] wrote {run.out}/results.json, results.md, headroom.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
