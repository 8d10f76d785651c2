"""The knowledge-selection environment."""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from .config import DistillConfig, get_preset
from .engine import Distiller, PhaseStats
from .env_inputs import ACTION_MODES, action_space, check_reset_options, validate_action
from .instances import InstanceSet, get_instance_set
from .observations import Observation, make_observation
from .phase_runner import PhaseRunner
from .rewards import Reward, make_reward
from .situation import observable_situation_v2
from .state import StateSpec, TrainingState

__all__ = ["KnowledgeSelectionEnv", "ACTION_MODES"]


class _PhaseResult(NamedTuple):
    """A phase as the env saw it: the states before and after, the engine's statistics (a crashed
    phase's too) and the weights applied."""

    previous: TrainingState
    state: TrainingState
    phase: PhaseStats
    weights: np.ndarray


class KnowledgeSelectionEnv(gym.Env):
    """Choose, phase by phase, which kinds of teacher knowledge a student distils from.

    ## Description
    An episode is one distillation run of a freshly initialised student over a fixed budget of
    optimizer steps (``config.total_steps``).  Each step is one *phase*: ``steps_per_action``
    optimizer steps with loss ``sum_k a_k L_k`` over the configured knowledge types (default, in
    bit order: ``finetune, response, feature, relation``; ``attention`` can be added).  The
    observation and the reward are computed once per phase (the multi-phase refinement of Wang
    et al., 2022).  The teacher is fine-tuned once and its outputs cached on disk, so a phase
    costs only the student's training.

    ## Action Space
    * ``action_mode="mask"`` (default): ``MultiBinary(K)``; bit k = learn from knowledge k in this
      phase.  An all-zero mask is legal: the phase trains nothing, the budget still advances.
      Integer, boolean or float arrays are accepted if every entry is exactly 0 or 1.
    * ``action_mode="weights"``: ``Box(0, 1, (K,), float32)``, the paper's soft action.
    Anything else (wrong shape or dtype, NaN/inf, out of range, non-binary mask) raises
    ``ValueError`` naming the expected space, and leaves the env unchanged.

    ## Observation Space
    ``observation="summary"`` (default): ``Box`` of ``2K + 9`` float32 values: the budget share
    used; each knowledge loss, the student's CE, accuracy and entropy, its KL to and argmax
    agreement with the teacher (means over the phase's optimizer steps, the student in train mode);
    the latest dev-probe CE and metric; the mean gradient norm; the last action (the table, with
    bounds: docs/env.md).  The first observation, after ``reset``, is measured the same way on the
    first training batch without an update (gradient norm 0, last action all zeros).  A non-finite
    loss reads as the cap 10 (the worst value), never 0.  Values are clipped into the bounds;
    ``env.observation_fn.unclipped(env.state)`` gives them before clipping.

    Also (docs/env.md): ``"cls"`` (the paper's state: the student's then the teacher's mean
    final-layer [CLS] vector, ``Box(-100, 100)``), ``"dict"`` (``Dict(summary=..., cls=...)``),
    ``"observable"`` and ``"observable_only"`` (with what a user can compute about their own
    situation: :data:`kd_env.situation.SITUATION_FEATURES`, each in [0, 1]), ``"portable"``;
    **privileged**, for oracles only (instance envs; never a learner's input in a headline,
    default or demo): ``"oracle_situation"`` and ``"oracle_situation_only"``, the situation's *true*
    configuration.  Users add observations with :func:`kd_env.register_observation`.

    ## State
    After every reset and phase the env publishes a frozen :class:`~kd_env.state.TrainingState`
    (``env.unwrapped.state``; its fixed part is ``env.unwrapped.state_spec``, a
    :class:`~kd_env.state.StateSpec`).  Observations are computed from it
    (``space(spec)``, ``obs(state)``), rewards from the states before and after a phase
    (``reward(previous, state)``), and ``env.unwrapped.observation_parts`` declares the layout an
    agent's encoder reads.

    ## Rewards
    ``reward="dev_loss_delta"`` (default, the paper's): the decrease of the student's CE on a
    fixed, seeded dev probe (``config.dev_probe_size`` examples of the dev split) since the
    previous phase.  Also ``dev_metric_delta``, ``final_metric``, ``train_loss_delta`` and
    ``cost_penalized``; users add their own with :func:`kd_env.register_reward`.  Every part goes
    to ``info["rewards"]``.  The test split is never touched by the env.

    ## Starting State
    ``reset(seed=...)`` re-initialises the student (pre-trained layers with a new head for text;
    every weight for MLPs), the optimizer, the schedule and the data order, all drawn from the
    env's ``np_random``.  ``options`` may hold ``reward`` (name), ``reward_params`` and
    ``config`` (a dict of :class:`~kd_env.config.DistillConfig` overrides; rebuilds the
    distiller when it changes, e.g. another task or seed).  ``replay=True`` starts the episode
    from exactly the same situation as the previous reset (the same instance, the same student
    initialisation and data order), so that episodes that differ only in their actions can be
    compared: paired rollouts, common random numbers.

    ## Episode End
    ``terminated`` when the budget is spent (``ceil(total_steps / steps_per_action)`` phases) or
    when a phase crashes (non-finite loss or gradient): then the reward is ``crash_penalty``,
    ``info["crashed"]`` is True and the student is restored to its last finite state.
    ``step()`` after either end raises ``RuntimeError``: call ``reset()``.
    ``truncated`` only comes from an external ``TimeLimit``.

    ## Arguments
    * ``config``: a :class:`DistillConfig`, a preset name or a dict; ``preset`` + ``**overrides``
      also work (``gym.make("kd_env/DigitsKD-v0", total_steps=100)``).
    * ``action_mode``: ``"mask"`` or ``"weights"``.
    * ``observation``: a registered observation name or instance.
    * ``reward`` / ``reward_params``: a registered reward name (or instance) and its parameters.
    * ``crash_penalty``: reward of a crashed phase (default: the reward's ``crash_value``).
    * ``probe_every``: evaluate the dev probe every N phases when the reward does not need it.
    * ``render_mode``: ``None`` or ``"ansi"``.
    * ``record_time``: also put the phase's wall time in ``info["phase_seconds"]``.  Off by
      default, so that identical runs give identical infos (as ``check_env`` demands); the wall
      time of the last step is always in ``env.unwrapped.last_phase_seconds``.
    * ``phase_runner``: how distillers are built, phases trained and the dev set probed
      (:class:`~kd_env.phase_runner.PhaseRunner`; default: in the env's own distiller).  The
      batched env (:mod:`kd_env.batched`) gives its copies one that hands over the phases it
      trains for every copy at once.

    ## Version History
    * v0: initial version.  Amended (issue 13) without a new id, since no action, reward or
      digits observation changed: ``info`` has no ``phase_seconds`` unless ``record_time=True``;
      the first observation is measured in train mode like every later one (text students
      only: MLPs have no dropout); a non-finite loss reads as the cap instead of 0.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, config: DistillConfig | str | dict | None = None, *, preset: str | None = None,
                 action_mode: str = "mask", observation: str | Observation = "summary",
                 reward: str | Reward = "dev_loss_delta", reward_params: dict | None = None,
                 crash_penalty: float | None = None, probe_every: int = 1, render_mode: str | None = None,
                 record_time: bool = False, distiller: Distiller | None = None,
                 instances: str | InstanceSet | None = None, instance_split: str = "train",
                 phase_runner: PhaseRunner | None = None, **overrides: Any):
        super().__init__()
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {list(ACTION_MODES)}, got {action_mode!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if not isinstance(probe_every, int) or probe_every < 1:
            raise ValueError(f"probe_every must be a positive integer, got {probe_every!r}")
        self.config = self._resolve_config(config, preset, overrides) if distiller is None else distiller.config
        self.phase_runner = phase_runner if phase_runner is not None else PhaseRunner()
        self.instance_set = get_instance_set(instances) if instances is not None else None
        self.instance_split = instance_split
        self.instance: str | None = None
        self._last_start: tuple[str | None, int] | None = None  # (instance, episode seed) of the last reset
        self._distillers: dict[str, Distiller] = {}
        if self.instance_set is not None:
            if distiller is not None:
                raise ValueError("pass either instances or a distiller, not both")
            self.instance_set.split(instance_split)  # ValueError naming the valid splits
            self._base_config = self.config
            self.instance = self.instance_set.split(instance_split)[0]
            self.config = self.instance_set.config(self.instance, self._base_config)
        self._init_args = dict(action_mode=action_mode, observation=observation, reward=reward,
                               reward_params=reward_params, crash_penalty=crash_penalty,
                               probe_every=probe_every, render_mode=render_mode, record_time=record_time,
                               instances=instances, instance_split=instance_split, phase_runner=phase_runner)
        self.record_time = bool(record_time)
        self.action_mode = action_mode
        self.render_mode = render_mode
        self.probe_every = probe_every
        self.crash_penalty = crash_penalty
        self.reward_fn = make_reward(reward, **(reward_params or {}))
        self._reward_spec = (reward if isinstance(reward, str) else self.reward_fn, dict(reward_params or {}))
        self.observation_fn = make_observation(observation)
        self.distiller = distiller if distiller is not None else self.phase_runner.build_distiller(self.config)
        if self.instance is not None:
            self._distillers[self.instance] = self.distiller
        k = self.distiller.num_knowledge
        self.knowledge_names = list(self.distiller.knowledge_names)
        self.action_space = action_space(action_mode, k)
        self._specs: dict[int, StateSpec] = {}
        self._oracle_cache: dict[str, np.ndarray] = {}
        self._start_episode_state()
        self.state_spec = self._spec_of(self.distiller)
        self.state = self._publish(probe_fresh=True)
        self.observation_space = self.observation_fn.space(self.state_spec)
        self.observation_parts = self.observation_fn.parts(self.state_spec)
        self._closed = False

    # ---- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _resolve_config(config, preset, overrides) -> DistillConfig:
        if isinstance(config, DistillConfig):
            base = config
        elif isinstance(config, str):
            base = get_preset(config)
        elif isinstance(config, dict):
            base = DistillConfig.from_dict(config)
        elif config is None:
            base = get_preset(preset or "text")
        else:
            raise TypeError(f"config must be a DistillConfig, a preset name or a dict, got {type(config).__name__}")
        if preset is not None and config is not None:
            raise ValueError("pass either config or preset, not both")
        return base.replace(**overrides) if overrides else base

    def _spec_of(self, distiller: Distiller) -> StateSpec:
        """The :class:`StateSpec` of ``distiller`` (worked out once per distiller)."""
        key = id(distiller)
        if key not in self._specs:
            from .instances import FEATURE_FIELDS

            task = distiller.task
            student, teacher = distiller.cls_embeddings()
            self._specs[key] = StateSpec(
                knowledge_names=tuple(distiller.knowledge_names),
                knowledge_costs=tuple(float(k.cost) for k in distiller.knowledge),
                num_classes=1 if task.is_regression else max(2, int(task.num_labels)),
                metric=str(task.metric), cls_sizes=(len(student), len(teacher)),
                oracle_fields=tuple(FEATURE_FIELDS) if self.instance_set is not None else ())
        return self._specs[key]

    def _oracle_features(self, instance: str) -> np.ndarray:
        """Privileged: instance ``instance``'s true configuration, clipped to [0, 1] (once per instance)."""
        if instance not in self._oracle_cache:
            assert self.instance_set is not None  # only published for instance envs
            self._oracle_cache[instance] = np.clip(self.instance_set.features(instance, self._base_config), 0.0, 1.0)
        return self._oracle_cache[instance]

    def _publish(self, probe_fresh: bool, terminated: bool = False, crashed: bool = False) -> TrainingState:
        """The :class:`TrainingState` of the env's current bookkeeping."""
        d = self.distiller
        oracle = (partial(self._oracle_features, self.instance)
                  if self.instance_set is not None and self.instance is not None else None)
        return TrainingState(spec=self.state_spec, step=int(d.step),
                             total_steps=int(d.total_steps), phase_index=int(self.phase_index),
                             phase=self.last_phase, probe=self.last_probe, probe_fresh=probe_fresh,
                             action=self.last_action, terminated=terminated, crashed=crashed,
                             instance=self.instance, situation_fn=partial(observable_situation_v2, d),
                             cls_fn=d.cls_embeddings, oracle_fn=oracle)

    def _use_instance(self, name: str) -> None:
        """Make instance ``name`` current, building its distiller the first time."""
        if name == self.instance:
            return
        if name not in self._distillers:
            config = self.instance_set.config(name, self._base_config)  # type: ignore[union-attr]  # instance envs only
            distiller = self.phase_runner.build_distiller(config)
            if distiller.knowledge_names != self.knowledge_names:
                distiller.close()
                raise ValueError(f"instance {name!r} changes the knowledge types: {self.knowledge_names} -> "
                                 f"{distiller.knowledge_names}")
            self._distillers[name] = distiller
        self.distiller = self._distillers[name]
        self.config = self.distiller.config
        self.instance = name

    def _start_episode_state(self, measured: PhaseStats | None = None, probe: dict[str, float] | None = None) -> None:
        """The episode bookkeeping of a freshly reset student; ``measured`` and ``probe`` (the
        first batch's statistics and the dev probe) are computed here unless given."""
        k = self.distiller.num_knowledge
        self.phase_index = 0
        self.last_action = np.zeros(k, dtype=np.float32)
        self.last_phase: PhaseStats = measured if measured is not None else self.distiller.measure()
        self.last_probe: dict[str, float] | None = probe if probe is not None else self.distiller.evaluate("probe")
        self.episode_return = 0.0
        self.history: list[dict[str, Any]] = []
        self.last_phase_seconds = 0.0  # wall time of the last step (kept out of info by default)

    # ---- gymnasium API ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.begin_reset(seed, options)
        return self.finish_reset()

    # ---- reset in two parts (a batched env measures and probes all its copies between them) ------
    def begin_reset(self, seed: int | None, options: dict[str, Any] | None) -> None:
        """The first part of :meth:`reset`: options checked and applied, the instance chosen, the
        distiller reset with the episode's seed.  :meth:`finish_reset` must follow; ``reset`` is
        the two together.  A batched env (:class:`kd_env.batched.BatchedKDVectorEnv`) calls them
        apart, so that it measures every copy's first batch and dev probe at once."""
        super().reset(seed=seed)
        options, replay = check_reset_options(options, self._last_start)
        if self.instance_set is not None:
            if options.get("config"):
                raise ValueError("reset option 'config' is not available on an instance env (each instance "
                                 "fixes its config); make the env with the overrides instead")
            name = options.get("instance")
            if name is None:
                pool = self.instance_set.split(self.instance_split)
                name = pool[int(self.np_random.integers(len(pool)))]
            else:
                self.instance_set.instance(name)  # ValueError naming the valid instances
            self._use_instance(name)
        elif options.get("instance") is not None:
            raise ValueError("reset option 'instance' needs an env made with instances=<set name>")
        if "config" in options and options["config"]:
            new_config = self.config.replace(**options["config"])
            if new_config != self.config:
                old_names = self.knowledge_names
                new_distiller = self.phase_runner.build_distiller(new_config)
                if new_distiller.knowledge_names != old_names:
                    new_distiller.close()
                    raise ValueError(f"reset options cannot change the knowledge types (the action space): "
                                     f"{old_names} -> {list(new_config.knowledge)}")
                self.distiller.close()
                self.distiller, self.config = new_distiller, new_config
        if "reward" in options or "reward_params" in options:
            name = options.get("reward", self.reward_fn.name)
            params = dict(options.get("reward_params") or {})
            self.reward_fn = make_reward(name, **params)
            self._reward_spec = (name, params)
        self.distiller.set_example_weighting(options.get("example_weighting"))
        episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        if replay:
            episode_seed = self._last_start[1]  # type: ignore[index]  # replay follows a reset
        self._last_start = (self.instance, episode_seed)
        self.distiller.reset(episode_seed)

    def finish_reset(self, measured: PhaseStats | None = None, probe: dict[str, float] | None = None):
        """The rest of :meth:`reset` after :meth:`begin_reset`: the episode state, the reward's
        reset, the first observation and info.  ``measured`` and ``probe`` (the first batch's
        statistics and the dev probe of the fresh student) are computed here unless given."""
        self._start_episode_state(measured, probe)
        spec = self._spec_of(self.distiller)
        if spec != self.state_spec and self.observation_fn.space(spec) != self.observation_space:
            raise ValueError(f"this reset changes the observation space: {self.observation_space} -> "
                             f"{self.observation_fn.space(spec)}; make a new env for this config")
        self.state_spec = spec
        self.state = self._publish(probe_fresh=True)
        self.reward_fn.reset(self.state)
        obs = self.observation_fn(self.state)
        return obs, self._info(None, {}, crashed=False, seconds=0.0)

    def step(self, action: Any):
        """One phase: train with the action's knowledge weights, then observe and reward.

        Raises:
            ValueError: an action outside the action space (the env is left unchanged).
            RuntimeError: the env is closed, or its episode has ended (call ``reset()``).
        """
        w = self.check_action(action)
        start = time.perf_counter()
        outcome = self._apply(w)
        reward, reward_parts = self._reward(outcome)
        self.episode_return += reward
        obs = self.observation_fn(outcome.state)
        terminated = outcome.state.terminated
        truncated = False  # the budget ends an episode by termination; only a TimeLimit truncates
        self.last_phase_seconds = time.perf_counter() - start
        info = self._info(outcome.phase, reward_parts, crashed=outcome.state.crashed, seconds=self.last_phase_seconds)
        self._record(outcome, reward, info)
        return obs, reward, terminated, truncated, info

    # ---- the parts of a step ----------------------------------------------------------------
    def check_action(self, action: Any) -> np.ndarray:
        """The action as float64 weights, once the env can take a step: ``ValueError`` naming the
        action space for a bad action, ``RuntimeError`` on a closed env or an ended episode."""
        if self._closed:
            raise RuntimeError("step() called on a closed env")
        w = validate_action(action, self.action_space, self.action_mode, self.knowledge_names)
        if self.phase_runner.phase_ready:  # trained before this step, the episode's end checked first
            return w
        if self.distiller.budget_left <= 0 or (self.history and self.history[-1]["crashed"]):
            raise RuntimeError("step() after the episode ended; call reset()")
        return w

    def _apply(self, w: np.ndarray) -> _PhaseResult:
        """Train one phase with knowledge weights ``w``, probe the dev set when due, move the
        episode state (last phase, action and probe) on and publish the new state."""
        phase, crashed = self.phase_runner.train_phase(self.distiller, w)
        terminated = self._is_terminated(crashed)
        self.phase_index += 1
        probe = None
        if not crashed and (self.reward_fn.needs_probe or self.phase_index % self.probe_every == 0 or terminated):
            probe = self.phase_runner.probe(self.distiller)
        previous = self.state
        if not crashed:
            self.last_phase = phase
        self.last_action = w.astype(np.float32)
        if probe is not None:
            self.last_probe = probe
        self.state = self._publish(probe_fresh=probe is not None, terminated=terminated, crashed=crashed)
        return _PhaseResult(previous=previous, state=self.state, phase=phase, weights=w)

    def _is_terminated(self, crashed: bool) -> bool:
        """A crash or a spent budget ends the episode."""
        return crashed or self.distiller.budget_left <= 0

    def _reward(self, outcome: _PhaseResult) -> tuple[float, dict[str, float]]:
        """The reward and its parts (``info["rewards"]``); a crashed phase earns the crash penalty."""
        if outcome.state.crashed:
            penalty = float(self.crash_penalty if self.crash_penalty is not None else self.reward_fn.crash_value)
            return penalty, {"crash_penalty": penalty}
        reward = float(self.reward_fn(outcome.previous, outcome.state))
        if not math.isfinite(reward):
            raise RuntimeError(f"reward {self.reward_fn.name!r} returned {reward}")
        return reward, {self.reward_fn.name: reward, **self.reward_fn.parts}

    def _record(self, outcome: _PhaseResult, reward: float, info: dict[str, Any]) -> None:
        """The phase in ``history`` (for ``render`` and ``state_dict``)."""
        self.history.append({"phase": self.phase_index, "action": outcome.weights.tolist(), "reward": reward,
                             "probe_loss": info["probe_loss"], "probe_metric": info["probe_metric"],
                             "losses": info["losses"], "crashed": outcome.state.crashed})

    def _info(self, phase: PhaseStats | None, rewards: dict[str, float], crashed: bool, seconds: float) -> dict:
        d = self.distiller
        phase = phase or self.last_phase
        probe = self.last_probe or {}
        return {
            "losses": {n: float(v) for n, v in zip(self.knowledge_names, phase.losses)},
            "action": self.last_action.copy(),
            "probe_loss": float(probe.get("loss", math.nan)),
            "probe_metric": float(probe.get("main", math.nan)),
            "optimizer_steps": int(d.step),
            "phase": int(self.phase_index),
            "crashed": bool(crashed),
            "rewards": dict(rewards),
            "instance": self.instance,
            **({"phase_seconds": float(seconds)} if self.record_time else {}),
        }

    def render(self):
        if self.render_mode != "ansi":
            return None
        if not self.history:
            return f"phase 0 | steps 0/{self.distiller.total_steps} | probe metric {self.last_probe['main']:.4f}\n"
        h = self.history[-1]
        chosen = [f"{n}={a:g}" for n, a in zip(self.knowledge_names, h["action"]) if a > 0] or ["(none)"]
        losses = " ".join(f"{n}={v:.3f}" for n, v in h["losses"].items())
        return (f"phase {h['phase']:3d} | steps {self.distiller.step}/{self.distiller.total_steps} | "
                f"knowledge {','.join(chosen)} | losses {losses} | probe loss {h['probe_loss']:.4f} "
                f"metric {h['probe_metric']:.4f} | reward {h['reward']:+.4f}\n")

    def close(self):
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for distiller in {id(d): d for d in [self.distiller, *self._distillers.values()]}.values():
            distiller.close()
        super().close()

    # ---- state and pickling -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full state of the env: distiller, episode bookkeeping and RNG."""
        import copy

        return {
            "distiller": self.distiller.state_dict(),
            "phase_index": self.phase_index,
            "last_action": self.last_action.copy(),
            "last_phase": copy.deepcopy(self.last_phase),
            "last_probe": copy.deepcopy(self.last_probe),
            "episode_return": self.episode_return,
            "history": copy.deepcopy(self.history),
            "np_random": copy.deepcopy(self.np_random.bit_generator.state) if self._np_random is not None else None,
            "reward": self.reward_fn.name,
            "instance": self.instance,
            "example_weighting": self.distiller.example_weighting,
            "last_start": self._last_start,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import copy

        if state.get("instance") is not None:
            self._use_instance(state["instance"])
        self.distiller.set_example_weighting(state.get("example_weighting"))
        self.distiller.load_state_dict(state["distiller"])
        self.phase_index = state["phase_index"]
        self.last_action = state["last_action"].copy()
        self.last_phase = copy.deepcopy(state["last_phase"])
        self.last_probe = copy.deepcopy(state["last_probe"])
        self.episode_return = state["episode_return"]
        self.history = copy.deepcopy(state["history"])
        if state["np_random"] is not None:
            self.np_random.bit_generator.state = copy.deepcopy(state["np_random"])
        last_start = state.get("last_start")  # absent in states saved before replay existed
        self._last_start = None if last_start is None else (last_start[0], int(last_start[1]))
        ended = self.distiller.budget_left <= 0 or bool(self.history and self.history[-1]["crashed"])
        self.state_spec = self._spec_of(self.distiller)
        self.state = self._publish(probe_fresh=True, terminated=ended,
                                   crashed=bool(self.history and self.history[-1]["crashed"]))

    def __getstate__(self) -> dict[str, Any]:
        # the reward instance itself (not its name): it carries per-episode state
        args = {**self._init_args, "reward": self.reward_fn, "reward_params": None}
        config = self._base_config if self.instance_set is not None else self.config
        return {"config": config, "init_args": args, "state": self.state_dict()}

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__init__(data["config"], **data["init_args"])  # type: ignore[misc]  # unpickling: this very class
        _ = self.np_random  # materialise the generator before restoring its state
        self.load_state_dict(data["state"])
