"""stable-baselines3 algorithms behind the :class:`~agents.base.Agent` protocol.

======  =================  =================================================================
name    action mode        how
======  =================  =================================================================
ppo     mask or weights    natively (``MultiBinary``; weights through
                           :class:`kd_env.wrappers.SymmetricWeights`, a ``RescaleAction`` to
                           ``Box(-1, 1)``, so the initial Gaussian is centred on 0.5)
a2c     mask or weights    as ppo
dqn     mask or weights    through :class:`kd_env.wrappers.MaskIndexWrapper`:
                           ``Discrete(2^K)``, bit k of the index = knowledge k (in weights
                           mode the mask is sent as 0.0/1.0)
sac     weights only       natively (``Box``); a mask env raises ``ValueError`` (make the env
td3     weights only       with ``action_mode="weights"``: a continuous policy on a mask would
ddpg    weights only       need a threshold the critic never sees)
======  =================  =================================================================

Defaults are sized for an expensive env, where one step is a training phase (``n`` =
``num_phases``, the episode length):

* PPO: ``n_steps = 4 n`` (four episodes per rollout), ``batch_size = 2 n`` (divides it),
  ``n_epochs = 10``, ``ent_coef = 0.01``.
* A2C: ``n_steps = n`` (one update per episode), ``ent_coef = 0.01``.
* DQN: ``learning_starts = 2 n``, ``train_freq = 1`` (a gradient step per phase),
  ``target_update_interval = 4 n``, ``exploration_fraction = 0.5``, ``buffer_size = 10000``,
  ``batch_size = 32``.
* SAC / TD3 / DDPG: ``learning_starts = 2 n``, ``train_freq = 1``, ``buffer_size = 10000``,
  ``batch_size = 64``; TD3/DDPG explore with Gaussian noise of std ``action_noise_std = 0.1``.
* all: ``device = "cpu"``, ``policy = "MultiInputPolicy"`` for ``Dict`` observations else
  ``"MlpPolicy"``.

Parallel episodes: ``n_envs=N`` (SB3's own name) runs N copies of the env, rebuilt from its
``gym.make`` spec: on the digits ids, N students trained as one batched model in this process
(:class:`BatchedVecEnv` over :class:`kd_env.batched.BatchedKDVectorEnv`), otherwise N spawned
processes with one torch thread each (an SB3 ``SubprocVecEnv``), so N episodes run at once; every finished episode is logged and counts
towards the budget (``total_episodes * num_phases`` env steps over all copies).  PPO's
``n_steps`` is then per copy, ``4 n / N``, so a rollout still holds four episodes.  The copies
are made from the spec, so wrappers applied around the env passed in are not in them; call
``agent.close()`` to stop the workers.

Any other keyword goes to the SB3 constructor unchanged (``learning_rate``, ``policy_kwargs``,
``tensorboard_log`` ...).  ``learn(total_episodes=N)`` runs ``N * num_phases`` timesteps.
Checkpoints keep SB3's own ``model.zip``; loading rebuilds the model from the header and reads
the parameters only (``set_parameters``: ``torch.load(weights_only=True)``, no pickled objects).
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from kd_env.checks import matches, type_hints
from kd_env.io import atomic_write_bytes
from kd_env.wrappers import MaskIndexWrapper, SymmetricWeights, index_to_mask, mask_to_index

from .base import Agent, CheckpointError, EpisodeCallback, register_agent
from .episode_log import EpisodeLogger, selection_frequencies

__all__ = ["SB3Agent", "MaskIndexWrapper", "ALGORITHMS", "sb3_defaults", "mask_to_index", "index_to_mask"]

#: name -> (SB3 class name, action modes it handles)
ALGORITHMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ppo": ("PPO", ("mask", "weights")),
    "a2c": ("A2C", ("mask", "weights")),
    "dqn": ("DQN", ("mask", "weights")),
    "sac": ("SAC", ("weights",)),
    "td3": ("TD3", ("weights",)),
    "ddpg": ("DDPG", ("weights",)),
}
MODEL_FILE = "model.zip"


def sb3_defaults(algo: str, num_phases: int, n_envs: int = 1) -> dict[str, Any]:
    """The default SB3 keyword arguments of ``algo`` for episodes of ``num_phases`` steps (PPO's
    rollout holds four episodes in all, whatever the number of parallel envs ``n_envs``)."""
    n = max(1, int(num_phases))
    if algo == "ppo":
        return {"n_steps": max(n, 4 * n // max(1, n_envs)), "batch_size": 2 * n, "n_epochs": 10, "ent_coef": 0.01,
                "device": "cpu"}
    if algo == "a2c":
        return {"n_steps": n, "ent_coef": 0.01, "device": "cpu"}
    if algo == "dqn":
        return {"learning_starts": 2 * n, "train_freq": 1, "gradient_steps": 1, "target_update_interval": 4 * n,
                "exploration_fraction": 0.5, "exploration_final_eps": 0.05, "buffer_size": 10_000,
                "batch_size": 32, "device": "cpu"}
    if algo in ("sac", "td3", "ddpg"):
        return {"learning_starts": 2 * n, "train_freq": 1, "gradient_steps": 1, "buffer_size": 10_000,
                "batch_size": 64, "device": "cpu"}
    raise ValueError(f"unknown SB3 algorithm {algo!r}; valid: {sorted(ALGORITHMS)}")


# ---- JSON-safe hyperparameters (policy_kwargs may name torch.nn classes) ---------------------

def _encode(value: Any) -> Any:
    if isinstance(value, type) and issubclass(value, torch.nn.Module) and getattr(torch.nn, value.__name__, None) is value:
        return {"__torch_nn__": value.__name__}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"hyperparameter value {value!r} ({type(value).__name__}) cannot be written to a JSON checkpoint "
                    f"header; pass plain values (e.g. action_noise_std instead of an action_noise object)")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__torch_nn__"}:
            cls = getattr(torch.nn, str(value["__torch_nn__"]), None)
            if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
                raise CheckpointError(f"unknown torch.nn class {value['__torch_nn__']!r} in a checkpoint header")
            return cls
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class SB3Agent(Agent):
    """A stable-baselines3 algorithm as an :class:`~agents.base.Agent`.

    Args:
        env: the env (a kd_env env or any env with a MultiBinary/Box action space).
        algo: ``ppo``, ``a2c``, ``dqn``, ``sac``, ``td3`` or ``ddpg``.
        seed: SB3's seed (network init, sampling, the env's first reset).
        policy: SB3 policy name (default: ``MultiInputPolicy`` for Dict observations, else
            ``MlpPolicy``).
        log_dir: folder for our per-episode ``episodes.csv`` and TensorBoard scalars.
        action_noise_std: TD3/DDPG Gaussian exploration noise std (ignored by the others).
        **sb3_kwargs: passed to the SB3 constructor, over :func:`sb3_defaults`.

    Raises:
        ValueError: an action mode the algorithm cannot handle, or bad SB3 arguments.
    """

    def __init__(self, env: Any, algo: str, seed: int | None = 0, policy: str | None = None,
                 log_dir: str | None = None, tensorboard: bool = True, action_noise_std: float = 0.1,
                 n_envs: int = 1, **sb3_kwargs: Any):
        super().__init__(env)
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown SB3 algorithm {algo!r}; valid: {sorted(ALGORITHMS)}")
        class_name, modes = ALGORITHMS[algo]
        if self.action_mode not in modes:
            raise ValueError(f"{algo} handles action_mode {list(modes)}, not {self.action_mode!r}: create the env "
                             f"with gym.make(..., action_mode='weights') (or use ppo, a2c or dqn on masks)")
        if not matches(seed, int | None) or (seed is not None and seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        if not isinstance(action_noise_std, (int, float)) or not action_noise_std >= 0:
            raise ValueError(f"action_noise_std must be >= 0, got {action_noise_std!r}")
        if not matches(n_envs, int) or n_envs < 1:
            raise ValueError(f"n_envs must be an integer >= 1, got {n_envs!r}")
        self.n_envs = int(n_envs)
        import stable_baselines3 as sb3

        self.name = algo
        self.algo = algo
        self.seed = None if seed is None else int(seed)
        self.policy = policy or ("MultiInputPolicy" if isinstance(self.observation_space, spaces.Dict) else "MlpPolicy")
        self.log_dir = log_dir
        self.tensorboard = tensorboard
        self.action_noise_std = float(action_noise_std)
        self.sb3_kwargs = dict(sb3_kwargs)
        _encode(self.sb3_kwargs)  # fail early on values a checkpoint could not hold
        params = {**sb3_defaults(algo, self.spec.num_phases, self.n_envs), **self.sb3_kwargs}
        if algo in ("td3", "ddpg") and "action_noise" not in params and self.action_noise_std > 0:
            from stable_baselines3.common.noise import NormalActionNoise

            k = len(self.knowledge_names)
            params["action_noise"] = NormalActionNoise(np.zeros(k), self.action_noise_std * np.ones(k))
        self._env = env
        self._vec_env = self._parallel_copies(env) if self.n_envs > 1 else None
        cls = getattr(sb3, class_name)
        try:
            self.model = cls(self.policy, self._vec_env or self._wrap(env), seed=self.seed, verbose=0, **params)
        except (TypeError, AssertionError) as exc:
            raise ValueError(f"bad arguments for {class_name}: {exc}") from None

    @property
    def _rescaled(self) -> bool:
        """PPO/A2C on weights see ``Box(-1, 1)`` (their Gaussian starts at mean 0, which on
        ``Box(0, 1)`` would clip half the weights to 0)."""
        return self.algo in ("ppo", "a2c") and self.action_mode == "weights"

    def _wrap(self, env: gym.Env) -> gym.Env:
        return _adapt(env, self.algo, self._rescaled)

    def _parallel_copies(self, env: Any) -> Any:
        """``n_envs`` copies of ``env`` (rebuilt from its ``gym.make`` spec): for an id with a
        batched vector env (the digits ids), its N students trained as one batched model in this
        process (:class:`BatchedVecEnv`); otherwise N spawned processes with one torch thread
        each, as an SB3 ``SubprocVecEnv``.  Either way their episodes run at once."""
        from stable_baselines3.common.vec_env import SubprocVecEnv

        spec = getattr(env, "spec", None)
        if spec is None or spec.id is None:
            raise ValueError(f"n_envs={self.n_envs} needs an env made with gym.make (its spec builds the copies); "
                             f"got {type(env).__name__} without a spec")
        kwargs = dict(spec.kwargs or {})
        if spec.vector_entry_point is not None:
            venv = gym.make_vec(spec.id, num_envs=self.n_envs, vectorization_mode="vector_entry_point",
                                autoreset_mode="same_step", **kwargs)
            return BatchedVecEnv(venv, self.algo, self._rescaled)
        fns = [_CopyFactory(spec.id, kwargs, self.algo, self._rescaled) for _ in range(self.n_envs)]
        return SubprocVecEnv(fns, start_method="spawn")

    def close(self) -> None:
        """Stop the worker processes of ``n_envs > 1`` (a no-op otherwise)."""
        if self._vec_env is not None:
            self._vec_env.close()
            self._vec_env = None

    # ---- acting -----------------------------------------------------------------------------
    def _to_env_action(self, action: Any) -> np.ndarray:
        if self.algo == "dqn":
            return self._format_action(index_to_mask(int(np.asarray(action).reshape(-1)[0]), len(self.knowledge_names)))
        arr = np.asarray(action, dtype=np.float64).reshape(-1)
        if self._rescaled:
            arr = SymmetricWeights.to_weights(arr)
        if self.action_mode == "mask":
            return (arr > 0.5).astype(np.int8)
        return np.clip(arr, 0.0, 1.0).astype(np.float32)

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        action, _ = self.model.predict(obs, deterministic=deterministic)
        return self._to_env_action(action)

    # ---- learning ---------------------------------------------------------------------------
    def learn(self, env: Any, total_episodes: int | None = None, total_steps: int | None = None,
              callback: EpisodeCallback | Any = None) -> "SB3Agent":
        """Train for ``total_steps`` timesteps, or ``total_episodes * num_phases`` (the smaller
        when both are given).  Every call starts on a freshly reset env; on-policy algorithms
        collect whole rollouts (``n_steps``), so PPO may run a few more steps than asked.

        Args:
            env: the env (same spaces as at construction).
            total_episodes: episodes to run.
            total_steps: env steps (phases) to run.
            callback: ``callback(agent, record)`` after each finished episode (``False`` stops),
                or an SB3 ``BaseCallback`` (passed through).
        """
        from stable_baselines3.common.callbacks import BaseCallback, CallbackList

        if total_episodes is None and total_steps is None:
            raise ValueError("learn needs total_episodes or total_steps")
        budgets = []
        if total_episodes is not None:
            budgets.append(int(total_episodes) * self.spec.num_phases)
        if total_steps is not None:
            budgets.append(int(total_steps))
        timesteps = min(budgets)
        if timesteps < 0:
            raise ValueError(f"learn needs a non-negative budget, got {timesteps}")
        if env is not self._env:
            if env.action_space != self.action_space:
                raise ValueError(f"env action space {env.action_space} differs from the agent's {self.action_space}")
            if self.n_envs > 1:
                self.close()
                self._vec_env = self._parallel_copies(env)
            self.model.set_env(self._vec_env or self._wrap(env))
            if self.seed is not None:
                self.model.get_env().seed(self.seed + len(self.episode_log))
            self._env = env
        if timesteps == 0:
            return self
        # Start on a fresh episode: the env may have been stepped (run_episode) since the last call.
        self.model._last_obs = None
        logger = EpisodeLogger(self.log_dir, self.episode_log, tensorboard=self.tensorboard)
        recorder = _EpisodeRecorder(self, logger, callback if not isinstance(callback, BaseCallback) else None)
        callbacks: Any = recorder
        if isinstance(callback, BaseCallback):
            callbacks = CallbackList([recorder, callback])
        try:
            self.model.learn(total_timesteps=timesteps, callback=callbacks, reset_num_timesteps=False,
                             progress_bar=False)
        finally:
            logger.close()
        return self

    # ---- persistence ------------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        hp = {"seed": self.seed, "policy": self.policy, "action_noise_std": self.action_noise_std}
        if self.n_envs != 1:
            hp["n_envs"] = self.n_envs
        hp.update(_encode(self.sb3_kwargs))
        return hp

    def save(self, path: Any) -> None:
        super().save(path)
        buffer = io.BytesIO()  # SB3 writes the zip in place; an atomic write keeps the old one until done
        self.model.save(buffer)
        atomic_write_bytes(Path(path) / MODEL_FILE, buffer.getvalue())

    def load(self, path: Any) -> "SB3Agent":
        super().load(path)
        file = Path(path) / MODEL_FILE
        if not file.is_file():
            raise CheckpointError(f"{str(path)!r} holds no {MODEL_FILE} for {self.algo!r}")
        try:
            self.model.set_parameters(str(file), exact_match=True, device=self.model.device)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, KeyError, RuntimeError, BadZipFile
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"refusing to load {str(file)!r}: not a weights-only {self.algo} archive for this "
                                  f"env ({first})") from None
        return self


class _EpisodeRecorder:
    """An SB3 callback (built lazily as a BaseCallback subclass) that logs one record per
    finished episode and calls the user's ``callback(agent, record)``."""

    def __new__(cls, agent: SB3Agent, logger: EpisodeLogger, user_callback: EpisodeCallback | None):
        from stable_baselines3.common.callbacks import BaseCallback

        class Recorder(BaseCallback):
            def __init__(self):
                super().__init__(verbose=0)
                self._start()

            def _start(self):
                n = agent.n_envs
                self.env_return = [0.0] * n
                self.actions: list[list[np.ndarray]] = [[] for _ in range(n)]
                self.started = [time.perf_counter()] * n

            def _on_step(self) -> bool:
                rewards = np.asarray(self.locals.get("rewards")).reshape(-1)
                dones = self.locals.get("dones")
                dones = np.zeros(len(rewards), bool) if dones is None else np.asarray(dones).reshape(-1)
                infos = self.locals.get("infos") or [{}] * len(rewards)
                actions = self.locals.get("actions")
                stop = False
                for i in range(len(rewards)):  # each env of the vec env: its own episode
                    info = infos[i]
                    if "action" in info:
                        applied = np.asarray(info["action"], np.float32)
                    else:
                        applied = agent._to_env_action(actions[i]).astype(np.float32)
                    self.actions[i].append(applied)
                    self.env_return[i] += float(rewards[i])
                    if bool(dones[i]):
                        record = {"episode": len(agent.episode_log) + 1, "steps": int(self.num_timesteps),
                                  "length": len(self.actions[i]), "return": self.env_return[i],
                                  **selection_frequencies(self.actions[i], agent.knowledge_names),
                                  "final_probe_metric": float(info.get("probe_metric", math.nan)),
                                  "seconds": time.perf_counter() - self.started[i]}
                        logger.log(record)
                        self.env_return[i], self.actions[i], self.started[i] = 0.0, [], time.perf_counter()
                        if user_callback is not None and user_callback(agent, record) is False:
                            stop = True
                return not stop

        return Recorder()


class _CopyFactory:
    """Builds one copy of an env in an SB3 worker process (picklable for ``spawn``): one torch
    thread, the env from its id and keyword arguments, the adapter's action wrapper."""

    def __init__(self, env_id: str, kwargs: dict[str, Any], algo: str, rescaled: bool):
        self.env_id, self.kwargs, self.algo, self.rescaled = env_id, kwargs, algo, rescaled

    def __call__(self) -> gym.Env:
        torch.set_num_threads(1)
        import kd_env  # noqa: F401 - registers the env ids in the fresh process

        return _adapt(gym.make(self.env_id, **self.kwargs), self.algo, self.rescaled)


class BatchedVecEnv:
    """A :class:`kd_env.batched.BatchedKDVectorEnv` (made with ``autoreset_mode="same_step"``) as
    an SB3 ``VecEnv``: N copies whose students train as one batched model, stepped and reset as
    SB3 expects (an ended episode is reset at once, its last observation in
    ``info["terminal_observation"]``), actions translated as :func:`_adapt`'s wrapper would.

    Built lazily as a subclass of SB3's ``VecEnv`` (SB3 is imported on first use).
    """

    def __new__(cls, venv: Any, algo: str, rescaled: bool):
        from stable_baselines3.common.vec_env import VecEnv

        class _BatchedVecEnv(VecEnv):
            def __init__(self):
                self.venv = venv
                # the adapter's wrapper around the first copy: never stepped, it translates actions
                self.template = _adapt(venv.envs[0], algo, rescaled)
                super().__init__(venv.num_envs, venv.single_observation_space, self.template.action_space)
                self._actions: Any = None
                self._seeds: list[int | None] = [None] * venv.num_envs

            def reset(self):
                seeds = self._seeds
                self._seeds = [None] * self.num_envs
                obs, _ = self.venv.reset(seed=seeds if any(s is not None for s in seeds) else None)
                return obs

            def step_async(self, actions):
                convert = getattr(self.template, "action", None)  # an ActionWrapper's, or none
                self._actions = np.stack([convert(a) if convert else np.asarray(a) for a in actions])

            def step_wait(self):
                obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
                infos = []
                for i in range(self.num_envs):
                    item = _info_row(info, i)
                    if terminated[i] or truncated[i]:  # SB3 wants the ended episode's info
                        item = _info_row(info["final_info"], i)
                        item["terminal_observation"] = info["final_obs"][i]
                        item["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                    infos.append(item)
                return obs, rewards.astype(np.float32), terminated | truncated, infos

            def close(self):
                self.venv.close()

            def seed(self, seed=None):
                self._seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
                return self._seeds

            def get_attr(self, attr_name, indices=None):
                return [getattr(self.venv.envs[i], attr_name) for i in self._get_indices(indices)]

            def set_attr(self, attr_name, value, indices=None):
                for i in self._get_indices(indices):
                    setattr(self.venv.envs[i], attr_name, value)

            def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
                return [getattr(self.venv.envs[i], method_name)(*method_args, **method_kwargs)
                        for i in self._get_indices(indices)]

            def env_is_wrapped(self, wrapper_class, indices=None):
                return [isinstance(self.template, wrapper_class) for _ in self._get_indices(indices)]

        return _BatchedVecEnv()


def _info_row(info: dict[str, Any], i: int) -> dict[str, Any]:
    """Copy ``i``'s info out of a Gymnasium vector env's batched info (``key``/``_key`` pairs,
    nested dicts batched the same way)."""
    row = {}
    for key, value in info.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        if isinstance(value, dict):
            row[key] = _info_row(value, i)
        elif info.get("_" + key, None) is None or info["_" + key][i]:
            row[key] = value[i]
    return row


def _adapt(env: gym.Env, algo: str, rescaled: bool) -> gym.Env:
    """The env as the SB3 algorithm sees it: DQN through :class:`MaskIndexWrapper`, PPO/A2C on
    weights through :class:`SymmetricWeights`, the rest as it is."""
    if algo == "dqn":
        return MaskIndexWrapper(env)
    return SymmetricWeights(env) if rescaled else env


def _sb3_factory(algo: str):
    def factory(env: Any, **hyperparameters: Any) -> SB3Agent:
        return SB3Agent(env, algo, **{k: _decode(v) for k, v in hyperparameters.items()})

    factory.__name__ = f"make_{algo}"
    return factory


_DESCRIPTIONS = {
    "ppo": "stable-baselines3 PPO on the mask (MultiBinary) or the weights (Box)",
    "a2c": "stable-baselines3 A2C on the mask or the weights",
    "dqn": "stable-baselines3 DQN over Discrete(2^K) masks (bit k = knowledge k)",
    "sac": "stable-baselines3 SAC on the weights (weights mode only)",
    "td3": "stable-baselines3 TD3 on the weights (weights mode only)",
    "ddpg": "stable-baselines3 DDPG on the weights (weights mode only)",
}


def sb3_hyperparameters(algo: str) -> dict[str, Any]:
    """What the SB3 agent ``algo`` accepts: its SB3 class's constructor arguments (less those
    :class:`SB3Agent` sets itself) and :class:`SB3Agent`'s own options."""
    import inspect

    import stable_baselines3

    cls = getattr(stable_baselines3, ALGORITHMS[algo][0])
    hints = type_hints(cls.__init__)
    out = {name: hints.get(name, p.annotation) for name, p in inspect.signature(cls.__init__).parameters.items()
           if name not in ("self", "policy", "env", "seed", "verbose", "_init_setup_model")}
    out.update({"policy": str, "log_dir": str | None, "tensorboard": bool, "action_noise_std": float, "n_envs": int})
    return {name: Any if hint is inspect.Parameter.empty else hint for name, hint in out.items()}


for _algo in ALGORITHMS:
    register_agent(_algo, description=_DESCRIPTIONS[_algo],
                   hyperparameters=lambda algo=_algo: sb3_hyperparameters(algo))(_sb3_factory(_algo))

