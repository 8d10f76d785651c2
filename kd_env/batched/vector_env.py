"""The batched vector env: N knowledge-selection envs whose students train as one batched model,
behind Gymnasium's :class:`~gymnasium.vector.VectorEnv` API."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, create_empty_array

from ..engine import Distiller
from ..env import KnowledgeSelectionEnv
from ..phase_stats import PhaseStats
from .copies import CopyPhases
from .students import StudentBatch, _checked_device

__all__ = ["BatchedKDVectorEnv"]


class BatchedKDVectorEnv(VectorEnv):
    """``num_envs`` knowledge-selection envs whose students train as one batched model.

    Observations, rewards, ``terminated``/``truncated`` and infos are those of ``num_envs``
    :class:`~kd_env.env.KnowledgeSelectionEnv` made with the same arguments and reset with seeds
    ``seed, seed + 1, ...`` (Gymnasium's vector seeding); infos are batched as
    :class:`~gymnasium.vector.SyncVectorEnv` batches them (``info[key][i]`` with mask
    ``info["_" + key]``).  Reset ``options`` go to every copy (``replay``, ``instance``,
    ``example_weighting``, ``reward``), or per copy as a list of ``num_envs`` dicts (``None``
    for a copy: no options).  ``reset(options=..., ...)`` may also hold ``"reset_mask"`` (a
    boolean array): only those copies are reset.

    Autoreset: ``autoreset_mode`` ``"next_step"`` (Gymnasium's default: the step after an
    episode's last resets that copy, returning its first observation with reward 0) or
    ``"same_step"`` (the last step returns the next episode's first observation; the final one is
    in ``info["final_obs"]``, its info in ``info["final_info"]``).

    Args:
        num_envs: number of copies (students).
        *args, **kwargs: those of :class:`~kd_env.env.KnowledgeSelectionEnv` (config, preset
            and overrides, ``instances``, ``observation``, ``reward``, ...).
        device: where the students train: ``"cpu"`` (default) or ``"cuda"``.
        autoreset_mode: ``"next_step"`` or ``"same_step"``.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, *args: Any, device: str = "cpu", autoreset_mode: str = "next_step",
                 **kwargs: Any):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        modes = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP,
                 AutoresetMode.NEXT_STEP: AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP: AutoresetMode.SAME_STEP}
        if autoreset_mode not in modes:
            raise ValueError(f"autoreset_mode must be 'next_step' or 'same_step', got {autoreset_mode!r}")
        self.autoreset_mode = modes[autoreset_mode]
        torch_device = _checked_device(device)
        kwargs.pop("max_episode_steps", None)  # from gymnasium.make_vec; episodes end with the budget
        if kwargs.get("render_mode") is not None:
            raise ValueError("the batched env does not render; make single envs with render_mode='ansi'")
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.num_envs = int(num_envs)
        self.envs: list[KnowledgeSelectionEnv] = []
        self._prototypes: dict[str, Distiller] = {}  # one distiller per config, shared by the copies
        #: each copy's phase runner (:class:`~kd_env.batched.copies.CopyPhases`)
        self._runners = [CopyPhases(self._prototypes) for _ in range(self.num_envs)]
        try:
            for runner in self._runners:
                self.envs.append(KnowledgeSelectionEnv(*args, phase_runner=runner, **kwargs))
            self.batch = StudentBatch([e.distiller for e in self.envs], device=torch_device)
        except Exception:
            for e in self.envs:
                e.close()
            for d in self._prototypes.values():
                d.close()
            raise
        first = self.envs[0]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.knowledge_names = list(first.knowledge_names)
        self.device = self.batch.device
        self._needs_reset = np.ones(self.num_envs, dtype=bool)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._observations = create_empty_array(self.single_observation_space, n=self.num_envs)
        self._closed = False
        self.last_phase_seconds = 0.0

    # ---- reset ------------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: Any = None):
        self._check_open()
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)  # type: ignore[arg-type]  # a sequence: an int or None is handled above
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset seed must be an int, None or a list of {self.num_envs} seeds, got {len(seeds)}")
        options = dict(options) if isinstance(options, dict) else options
        mask = np.ones(self.num_envs, dtype=bool)
        if isinstance(options, dict) and "reset_mask" in options:
            mask = np.asarray(options.pop("reset_mask"), dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        per_copy = self._per_copy_options(options)
        indices = [int(i) for i in np.flatnonzero(mask)]
        self._begin_resets(indices, seeds, per_copy)
        infos: dict[str, Any] = {}
        for i, (obs, info) in self._finish_resets(indices).items():
            self._observations = _set_row(self._observations, i, obs, self.single_observation_space)
            infos = self._add_info(infos, info, i)
        self._autoreset[mask] = False
        return self._copy_obs(), infos

    def _per_copy_options(self, options: Any) -> list[dict[str, Any] | None]:
        if options is None or isinstance(options, dict):
            return [options or None] * self.num_envs
        if isinstance(options, (list, tuple)) and len(options) == self.num_envs:
            return [None if o is None else dict(o) for o in options]
        raise ValueError(f"reset options must be a dict, None or a list of {self.num_envs} dicts (one per copy), "
                         f"got {type(options).__name__}")

    def _begin_resets(self, indices: Sequence[int], seeds: Any, options: Any) -> None:
        """Reset the copies' distillers (options, instance, seed) and load their fresh students."""
        self._needs_reset[list(indices)] = True  # until the reset completes
        for i in indices:
            env = self.envs[i]
            self._runners[i].pending = None
            env.begin_reset(seeds[i], options[i])
            self.batch.load(i, env.distiller)

    def _finish_resets(self, indices: Sequence[int]) -> dict[int, tuple[Any, dict[str, Any]]]:
        """The first observation and info of each copy in ``indices`` (after
        :meth:`_begin_resets`), their first batch measured and dev probe evaluated at once."""
        if not indices:
            return {}
        measured = self.batch.measure(indices)
        probes = self.batch.evaluate_probe()
        out = {}
        for i in indices:
            out[i] = self.envs[i].finish_reset(measured[i], probes[i])
            self._needs_reset[i] = False
        return out

    # ---- step -------------------------------------------------------------------------------
    def step(self, actions: Any):
        """One phase in every copy: the students of copies whose episode goes on train together;
        copies that ended an episode on the last step are reset instead (``next_step`` mode)."""
        self._check_open()
        start = time.perf_counter()
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(f"actions must have a leading dimension of num_envs={self.num_envs}, got shape "
                             f"{actions.shape}; expected {self.action_space}")
        resetting = self._autoreset.copy()
        if self._needs_reset[~resetting].any():
            raise RuntimeError("step() before reset(): call reset() first")
        stepping = {int(i): actions[i] for i in np.flatnonzero(~resetting)}
        restarting = {int(i): (None, None) for i in np.flatnonzero(resetting)}
        results = self.advance(stepping, restarting, strict=True)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        for i in stepping:
            _, rewards[i], terminated[i], truncated[i], _ = results[i]
        ended = [i for i in stepping if terminated[i] or truncated[i]]
        final = {}
        if self.autoreset_mode == AutoresetMode.SAME_STEP and ended:
            final = self.advance({}, {i: (None, None) for i in ended}, strict=True)
        infos: dict[str, Any] = {}
        for i in range(self.num_envs):
            if i in final:
                obs, info = final[i]
                step = results[i]
                info = {**info, "final_obs": step[0], "final_info": step[4]}
            elif i in stepping:
                obs, info = results[i][0], results[i][4]
            else:
                obs, info = results[i]
            self._observations = _set_row(self._observations, i, obs, self.single_observation_space)
            infos = self._add_info(infos, info, i)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = terminated | truncated
        self.last_phase_seconds = time.perf_counter() - start
        return self._copy_obs(), rewards, terminated, truncated, infos

    def advance(self, steps: Mapping[int, Any], resets: Mapping[int, tuple[int | None, dict[str, Any] | None]],
                strict: bool = False) -> dict[int, Any]:
        """Step some copies and reset others, in one batched phase (the rest wait): what
        :class:`Lockstep` drives, one copy per independent driver.

        Args:
            steps: ``{copy: action}``: these copies take one phase; each result is the copy's
                ``(obs, reward, terminated, truncated, info)``, as its single env's ``step``.
            resets: ``{copy: (seed, options)}``: these copies start an episode; each result is
                ``(obs, info)``, as its single env's ``reset``.
            strict: raise the first copy's error (a bad action, a step after the episode's end)
                before anything runs; otherwise that copy's result is the exception and the other
                copies go on.

        Returns:
            ``{copy: result or exception}``.
        """
        self._check_open()
        out: dict[int, Any] = {}
        weights = np.zeros((self.num_envs, len(self.knowledge_names)))
        stepping = []
        for i, action in steps.items():  # every action checked before any student trains
            try:
                if self._needs_reset[i]:
                    raise RuntimeError("step() before reset(): call reset() first")
                weights[i] = self.envs[i].check_action(action)
                stepping.append(i)
            except (ValueError, RuntimeError) as exc:
                if strict:
                    raise type(exc)(f"copy {i}: {exc}") from None
                out[i] = exc
        restarting = []
        for i, (seed, options) in resets.items():
            try:
                self._begin_resets([i], {i: seed}, {i: options})
                restarting.append(i)
            except (ValueError, RuntimeError) as exc:
                if strict:
                    raise
                out[i] = exc
        budget = np.zeros(self.num_envs, dtype=np.int64)
        for i in stepping:
            d = self.envs[i].distiller
            budget[i] = max(0, min(d.config.steps_per_action, d.budget_left))
        finite = np.ones(self.num_envs, dtype=bool)
        phases: list[PhaseStats] = []
        if stepping:
            snapshot = self.batch.snapshot()
            phases = self.batch.train_phase(weights, budget)
            finite = self.batch.finite()
            broken = [i for i in stepping if not finite[i]]
            if broken:
                self.batch.restore(snapshot, broken)  # as the single env: back to the state before the phase
            self.batch.store(stepping)
        out.update(self._finish_resets(restarting))
        probes = self.batch.evaluate_probe() if stepping else []
        for i in stepping:
            env = self.envs[i]
            crashed = phases[i].crashed or not finite[i]
            self._runners[i].pending = (phases[i], crashed, None if crashed else probes[i])
            try:
                out[i] = env.step(steps[i])
            finally:
                self._runners[i].pending = None
        return out

    # ---- helpers ------------------------------------------------------------------------------
    def _copy_obs(self):
        return _copy_tree(self._observations)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the vector env is closed")

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """``getattr(copy, name)(*args, **kwargs)`` (or the attribute) of every copy."""
        out = []
        for env in self.envs:
            attr = getattr(env, name)
            out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(out)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return tuple(getattr(env, name) for env in self.envs)

    def set_attr(self, name: str, values: Any) -> None:
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr needs one value or {self.num_envs} values, got {len(values)}")
        for env, value in zip(self.envs, values):
            setattr(env, name, value)

    def close_extras(self, **kwargs: Any) -> None:
        if self._closed:
            return
        self._closed = True
        for env in self.envs:
            env.close()
        for d in self._prototypes.values():
            d.close()

    def __repr__(self) -> str:
        return f"BatchedKDVectorEnv(num_envs={self.num_envs}, device={self.device}, knowledge={self.knowledge_names})"


def _set_row(batched: Any, i: int, value: Any, space: gym.Space) -> Any:
    """Row ``i`` of a batched observation set to ``value`` (``concatenate``'s layout)."""
    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            batched[key] = _set_row(batched[key], i, value[key], sub)
        return batched
    batched[i] = value
    return batched


def _copy_tree(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy_tree(v) for k, v in x.items()}
    return np.array(x, copy=True)
