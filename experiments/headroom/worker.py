"""The process that runs headroom units: :class:`_Worker` holds one env (and, for open-loop
units, the env's batched vector env) and plays episodes; :func:`setup_worker` and
:func:`run_chunk` are the ``setup`` and ``runner`` handed to :func:`experiments.executors.execute`;
:func:`write_tensorboard` writes the finished episodes to TensorBoard."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agents import make_agent, run_episode
from agents.episode_log import TensorBoardRun, run_name
from kd_env.situation import observable_situation

from ..cli import load_plugins
from .settings import OPEN_LOOP, _bits, all_masks


def _situation(distiller: Any) -> list[float] | None:
    """The instance's observable situation (:func:`kd_env.situation.observable_situation`, cached
    per distiller) as floats; None for a regression task or where it cannot be computed."""
    try:
        if distiller.task.is_regression:
            return None
        return [float(x) for x in observable_situation(distiller)]
    except Exception:  # noqa: BLE001 - a unit must not fail for its situation: the baselines then skip it
        return None


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
        out["situation"] = _situation(d)
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


def _raise_first(results: dict[int, Any]) -> dict[int, Any]:
    """The batched env's step results; the first unit that raised raises here (the chunk fails)."""
    for value in results.values():
        if isinstance(value, BaseException):
            raise value
    return results


#: this process's worker (built by :func:`setup_worker`, once per executor worker)
_WORKER: _Worker | None = None


def setup_worker(env_id: str, env_kwargs: dict[str, Any], plugins: Sequence[str] = (), batch: int = 1) -> None:
    """The executor's ``setup``: build this process's worker."""
    global _WORKER
    _WORKER = _Worker(env_id, env_kwargs, plugins, batch)


def close_worker() -> None:
    global _WORKER
    if _WORKER is not None:
        _WORKER.close()
        _WORKER = None


def run_chunk(units: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The executor's ``runner``: one chunk of units on this process's worker."""
    if _WORKER is None:
        raise RuntimeError("setup_worker was not called in this process")
    return _WORKER.run_many(units)


def _unit_actions(unit: dict[str, Any], k: int) -> np.ndarray:
    """The masks a finished unit played, ``(phases, k)``: a fixed mask's or a schedule's from its
    name, a greedy oracle's as recorded; NaN where they are not recorded (agents, random masks)."""
    length, policy = int(unit.get("length") or 0), str(unit["policy"])
    if policy.startswith(("fixed:", "schedule:")) and length:
        return np.stack([_actions_for(policy, p) for p in range(length)]).astype(np.float64)
    if unit.get("actions"):
        return np.stack([_bits(m) for m in unit["actions"]]).astype(np.float64)
    return np.full((length, k), np.nan)


def write_tensorboard(folder: Path, units: Sequence[dict[str, Any]], knowledge: Sequence[str]) -> None:
    """The finished units as TensorBoard runs (:class:`agents.episode_log.TensorBoardRun`), one
    run folder per policy and reset seed, ``<folder>/<policy>_<seed>/`` (a random-mask unit's policy
    named by its reward, ``random-<reward>``), each holding one evaluation at step 0 over the
    seed's episodes (its instances): mean return and length, final probe, dev and test metric
    where measured, and the masks played per phase.  Written by the driver once the units are
    done (each run folder replaced), so that no two processes write one folder."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for u in units:
        policy = str(u["policy"])
        name = f"random-{u.get('reward')}" if policy.startswith("random:") else policy
        groups.setdefault(run_name(name, u["seed"]), []).append(u)
    k = len(knowledge)
    for run, group in sorted(groups.items()):
        played = [_unit_actions(u, k) for u in group]
        actions = np.full((len(group), max(len(a) for a in played), k), np.nan)
        for j, a in enumerate(played):
            actions[j, :len(a)] = a
        metrics = {split: [u[split] for u in group if u.get(split) is not None] for split in ("dev", "test")}
        with TensorBoardRun(folder / run, knowledge, fresh=True) as board:
            board.evaluation(0, [u.get("return", np.nan) for u in group], [u.get("length", np.nan) for u in group],
                             metrics={split: v for split, v in metrics.items() if v},
                             probe=[u.get("probe", np.nan) for u in group], actions=actions)
