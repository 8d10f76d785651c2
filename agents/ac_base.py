"""What our two actor-critic selectors share: the agent machinery.

The two algorithms live in their own modules, each readable on its own:

* :mod:`agents.ac` (``ac``): advantage actor-critic with a state-value critic, GAE and an
  entropy bonus; optional PPO-style clipped epochs (on-policy).
* :mod:`agents.ac_q` (``ac_q``): the paper's DDPG-style selector, a ``Q(s, a)`` critic trained
  by TD(0) with target networks and a replay buffer (off-policy).

Both take one hyperparameter set, :class:`agents.ac_config.ActorCriticConfig` (its ``critic``
field says which algorithm), and both are an :class:`ActorCriticAgent`.  This base builds the
networks (:mod:`agents.networks`), normalises and flattens observations, adds the paper's
exploration reward, runs training episodes (one env or a vector env of N copies in lockstep) and
saves/loads checkpoints.  What the algorithms differ in is a handful of methods each defines:
how it acts while training (:meth:`_training_action`), what it keeps of a step
(:meth:`_store_transition`) and of an episode (:meth:`_episode_rollout`), and when and how it
updates (:meth:`_after_episode`).

Exploration reward (the paper's; ``exploration_coef > 0``): added to the *learning* reward only,
never to the env's reported return.  ``hard``: ``-exploration_coef`` when the action equals the
previous phase's action; ``soft``: ``-exploration_coef * cos(a_t, a_{t-1})``.  ``auto`` picks
hard for masks and soft for weights.

Logs: one record per training episode in ``agent.episode_log`` (return, learning return, mean
selection frequency per knowledge type ``freq_<name>``, actor/critic losses, entropy, final
probe metric, seconds), and with ``log_dir`` a CSV (``episodes.csv``) and TensorBoard scalars.
"""

from __future__ import annotations

import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from .ac_config import CRITICS, ActorCriticConfig
from .base import Agent, CheckpointError, EpisodeCallback, check_env_example_weighting
from .episode_log import EpisodeLogger, selection_frequencies
from .networks import ACTIVATIONS, Actor, Critic, ObservationEncoder, RunningNorm, observation_layout

__all__ = ["ActorCriticAgent"]


class ActorCriticAgent(Agent):
    """The shared base of ``ac`` (:class:`agents.ac.ValueActorCritic`) and ``ac_q``
    (:class:`agents.ac_q.QActorCritic`); build those (or use ``make_agent``), not this class.

    Args:
        env: the env (mask or weights mode; ``summary``, ``cls``, ``dict`` or any Box
            observation).
        config: an :class:`agents.ac_config.ActorCriticConfig`; or pass its fields as keyword arguments.
        log_dir: folder for ``episodes.csv`` and TensorBoard event files (not saved with the agent).
        tensorboard: write TensorBoard scalars when ``log_dir`` is set.
        **hyperparameters: :class:`ActorCriticConfig` fields.

    Raises:
        ValueError: unknown or invalid hyperparameters, a ``critic`` other than the algorithm's,
            or an env the agent cannot handle.
    """

    #: ``"value"`` or ``"q"``: the value of ``ActorCriticConfig.critic`` this algorithm runs
    critic_kind: str = ""
    #: the activation of ``activation="auto"``
    default_activation: str = "tanh"
    #: scale of the critic's initial last layer
    critic_output_scale: float = 1.0
    #: the critic reads the action too: ``Q(s, a)`` rather than ``V(s)``
    critic_sees_action: bool = False

    def __init__(self, env: Any, config: ActorCriticConfig | None = None, log_dir: str | None = None,
                 tensorboard: bool = True, **hyperparameters: Any):
        if self.critic_kind not in CRITICS:
            raise TypeError("ActorCriticAgent is the shared base: build agents.ac.ValueActorCritic ('ac') or "
                            "agents.ac_q.QActorCritic ('ac_q'), e.g. with agents.make_agent")
        other = {"value": "ac_q", "q": "ac"}[self.critic_kind]
        critic = config.critic if config is not None else hyperparameters.get("critic", self.critic_kind)
        if critic != self.critic_kind:
            raise ValueError(f"agent {self.name!r} has critic={self.critic_kind!r}; got critic={critic!r} "
                             f"(use {other!r})")
        super().__init__(env)
        unknown = sorted(set(hyperparameters) - set(ActorCriticConfig.field_names()))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown} for {self.name!r}; valid: "
                             f"{ActorCriticConfig.field_names() + ['log_dir', 'tensorboard']}")
        if config is not None and hyperparameters:
            raise ValueError("pass either config or keyword hyperparameters, not both")
        self.config = config if config is not None else ActorCriticConfig(**{**hyperparameters,
                                                                             "critic": self.critic_kind})
        cfg = self.config
        self.example_weighting = check_env_example_weighting(env, cfg.example_weighting)
        self.log_dir = log_dir
        self.tensorboard = tensorboard
        self.device = torch.device(cfg.device)
        self.k = len(self.knowledge_names)
        self.layout, self.obs_size, cfg.cls_split = observation_layout(env, cfg.state_encoder, cfg.cls_split)
        self._obs_keys = list(self.observation_space.spaces) if isinstance(self.observation_space, spaces.Dict) else None
        self.exploration = cfg.exploration if cfg.exploration != "auto" else (
            "hard" if self.action_mode == "mask" else "soft")
        activation = ACTIVATIONS[cfg.activation if cfg.activation != "auto" else self.default_activation]
        seed = cfg.seed if cfg.seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.obs_norm = RunningNorm(self.obs_size)
            self.actor = Actor(ObservationEncoder(self.layout, cfg.encoder_sizes, activation), cfg.hidden_sizes,
                               self.k, activation, cfg.init_log_std)
            self.critic = Critic(ObservationEncoder(self.layout, cfg.encoder_sizes, activation), cfg.hidden_sizes,
                                 self.k if self.critic_sees_action else 0, activation,
                                 out_scale=self.critic_output_scale)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.obs_norm.to(self.device)
        actor_params = [p for n, p in self.actor.named_parameters() if n != "log_std" or self._trains_log_std()]
        self.actor_optimizer = torch.optim.Adam(actor_params, lr=cfg.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr or cfg.lr)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.np_rng = np.random.default_rng(seed + 2)
        self.episodes_done = 0
        self.steps_done = 0
        self.updates_done = 0
        self.discarded_episodes = 0
        self._logger: EpisodeLogger | None = None

    # ---- what each algorithm defines ---------------------------------------------------------
    def _trains_log_std(self) -> bool:
        """Whether the actor's ``log_std`` (the weights-mode Gaussian's) is a trained parameter."""
        return False

    def _policy(self, x: torch.Tensor, deterministic: bool) -> tuple[np.ndarray, np.ndarray]:
        """(env action, raw sample kept for learning) for a normalised observation (or a batch)."""
        raise NotImplementedError

    def _prepare_learning(self, env: Any, total_episodes: int | None, total_steps: int | None) -> None:
        """Called once at the start of each :meth:`learn` call (default: nothing)."""

    def _training_action(self, x: torch.Tensor, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The exploring action while learning, for one observation (``n=None``) or ``n`` of them."""
        return self._policy(x, deterministic=False)

    def _start_options(self) -> dict[str, Any] | None:
        """Reset options of the next training reset (one call per ``reset``, of one env or of a
        whole vector env); ``None``: a plain reset."""
        return None

    def _training_reset_options(self) -> dict[str, Any] | None:
        """The options of the next training reset: the agent's own (:meth:`reset_options`) and
        the algorithm's (:meth:`_start_options`, e.g. a replay)."""
        options = {**self.reset_options(), **(self._start_options() or {})}
        return options or None

    def _new_rollout(self) -> dict[str, Any]:
        """The algorithm's per-episode storage, filled by :meth:`_store_transition`."""
        return {}

    def _store_transition(self, rollout: dict[str, Any], flat: np.ndarray, x: torch.Tensor, raw: np.ndarray,
                          reward: float, next_flat: np.ndarray, terminated: bool) -> None:
        """Keep one step (``flat``/``next_flat`` raw, ``x`` normalised, ``reward`` the learning reward)."""
        raise NotImplementedError

    def _episode_rollout(self, rollout: dict[str, Any], bootstrap_flat: np.ndarray | None) -> dict[str, Any]:
        """What the update needs of a finished episode (``bootstrap_flat``: the last observation
        of an episode cut short by truncation, else ``None``)."""
        raise NotImplementedError

    def _after_episode(self, rollout: dict[str, Any], last: bool) -> dict[str, float]:
        """Learn from a finished episode (``last``: the budget's last); the losses to log."""
        raise NotImplementedError

    def _target_networks(self) -> dict[str, nn.Module]:
        """Networks saved beside the actor and critic (default: none)."""
        return {}

    # ---- observations ------------------------------------------------------------------------
    def _flatten(self, obs: Any) -> np.ndarray:
        if self._obs_keys is not None:
            return np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in self._obs_keys])
        return np.asarray(obs, np.float32).reshape(-1)

    def _flatten_batch(self, obs: Any, n: int) -> np.ndarray:
        if self._obs_keys is not None:
            return np.concatenate([np.asarray(obs[k], np.float32).reshape(n, -1) for k in self._obs_keys], axis=1)
        return np.asarray(obs, np.float32).reshape(n, -1)

    def _tensor(self, flat: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(flat, dtype=torch.float32, device=self.device)

    def _normalized(self, flat: np.ndarray) -> torch.Tensor:
        x = self._tensor(flat)
        return self.obs_norm(x) if self.config.normalize_observations else x

    # ---- acting ------------------------------------------------------------------------------
    def _sample_mask(self, logits: torch.Tensor, deterministic: bool) -> tuple[np.ndarray, np.ndarray]:
        """A mask from Bernoulli ``logits`` (``deterministic``: bit = logit > 0): (int8 action, float32 raw)."""
        if deterministic:
            bits = (logits > 0).float()
        else:
            u = torch.rand(logits.shape, generator=self.generator).to(self.device)
            bits = (u < torch.sigmoid(logits)).float()
        raw = bits.cpu().numpy()
        return raw.astype(np.int8), raw.astype(np.float32)

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        x = self._normalized(self._flatten(obs))
        action, _ = self._policy(x, deterministic)
        return action

    # ---- learning ----------------------------------------------------------------------------
    def _exploration_term(self, action: np.ndarray, previous: np.ndarray | None) -> float:
        coef = self.config.exploration_coef
        if coef == 0 or previous is None:
            return 0.0
        a = np.asarray(action, np.float64)
        b = np.asarray(previous, np.float64)
        if self.exploration == "hard":
            return -coef if np.array_equal(a, b) else 0.0
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 or nb == 0:
            return 0.0
        return -coef * float(a @ b / (na * nb))

    def learn(self, env: Any, total_episodes: int | None = None, total_steps: int | None = None,
              callback: EpisodeCallback | None = None) -> "ActorCriticAgent":
        """Train over repeated episodes of ``env``.

        Runs whole episodes until ``total_episodes`` episodes or at least ``total_steps`` env
        steps are done (whichever comes first).  The env's first reset in this call is seeded
        with ``seed + episodes done so far`` (when ``seed`` is set), later ones continue its RNG.

        ``env`` may be a Gymnasium vector env (``gymnasium.make_vec(id, num_envs=N,
        vectorization_mode="async")`` runs N episodes at once in N processes; see
        :func:`agents.make_vector_env`; on the digits ids ``"batched"`` trains the N students as one
        batched model in this process): the N episodes of a batch run in lockstep, the policy acts
        on all N observations at once, and each finished episode is then learnt from and counted
        as one episode of the budget, in sub-env order.  Episodes of the last batch beyond the
        budget are discarded unused (their count is in ``agent.discarded_episodes``).

        Args:
            env: the env (same spaces as at construction), or a vector env of N copies.
            total_episodes: episodes to run.
            total_steps: env steps (phases) to run, rounded up to whole episodes.
            callback: ``callback(agent, record)`` after each episode; ``False`` stops.

        Returns:
            ``self``.
        """
        if total_episodes is None and total_steps is None:
            raise ValueError("learn needs total_episodes or total_steps")
        for name, value in (("total_episodes", total_episodes), ("total_steps", total_steps)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        vector = isinstance(env, gym.vector.VectorEnv)
        space = env.single_action_space if vector else env.action_space
        if space != self.action_space:
            raise ValueError(f"env action space {space} differs from the agent's {self.action_space}")
        if self._logger is None:
            self._logger = EpisodeLogger(self.log_dir, self.episode_log, tensorboard=self.tensorboard)
        cfg = self.config
        self._prepare_learning(env, total_episodes, total_steps)
        episodes = steps = 0
        first = True
        batch: list[tuple[dict[str, Any], dict[str, Any]]] = []  # vector env: finished, not yet consumed
        try:
            while (total_episodes is None or episodes < total_episodes) and (total_steps is None or steps < total_steps):
                seed = cfg.seed + self.episodes_done if (first and cfg.seed is not None) else None
                first = False
                if vector:
                    if not batch:
                        batch = self._run_vector_episodes(env, seed)
                    record, rollout = batch.pop(0)
                else:
                    record, rollout = self._run_training_episode(env, seed)
                episodes += 1
                steps += record["length"]
                last = (total_episodes is not None and episodes >= total_episodes) or (
                    total_steps is not None and steps >= total_steps)
                losses = self._after_episode(rollout, last)
                record.update({"actor_loss": losses.get("actor_loss", math.nan),
                               "critic_loss": losses.get("critic_loss", math.nan),
                               "entropy": losses.get("entropy", math.nan)})
                self._logger.log(record)
                if callback is not None and callback(self, record) is False:
                    break
        finally:
            self.discarded_episodes += len(batch)
            if self._logger is not None:
                self._logger.close()
                self._logger = None
        return self

    def _new_trajectory(self) -> dict[str, Any]:
        return {"actions": [], "return": 0.0, "learning_return": 0.0, "previous": None, "probe": math.nan,
                "rollout": self._new_rollout()}

    def _count_step(self, trajectory: dict[str, Any], action: np.ndarray, reward: float) -> float:
        """Book one env step of an episode; returns the learning reward (with the exploration term)."""
        learning_reward = reward + self._exploration_term(action, trajectory["previous"])
        trajectory["return"] += reward
        trajectory["learning_return"] += learning_reward
        trajectory["previous"] = np.asarray(action, np.float32)
        trajectory["actions"].append(trajectory["previous"])
        self.steps_done += 1
        return learning_reward

    def _episode_record(self, trajectory: dict[str, Any], seconds: float) -> dict[str, Any]:
        return {"episode": self.episodes_done, "steps": self.steps_done, "length": len(trajectory["actions"]),
                "return": trajectory["return"], "learning_return": trajectory["learning_return"],
                **selection_frequencies(trajectory["actions"], self.knowledge_names),
                "final_probe_metric": trajectory["probe"], "seconds": seconds}

    def _run_training_episode(self, env: Any, seed: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """One training episode in ``env``: its log record and what the update needs of it."""
        start = time.perf_counter()
        self.reset()
        options = self._training_reset_options()
        obs, info = env.reset(seed=None if options and options.get("replay") else seed, options=options)
        flat = self._flatten(obs)
        trajectory = self._new_trajectory()
        terminated = truncated = False
        while not (terminated or truncated):
            if self.config.normalize_observations:
                self.obs_norm.update(self._tensor(flat))
            x = self._normalized(flat)
            action, raw = self._training_action(x, None)
            next_obs, reward, terminated, truncated, info = env.step(action)
            next_flat = self._flatten(next_obs)
            learning_reward = self._count_step(trajectory, action, float(reward))
            self._store_transition(trajectory["rollout"], flat, x, raw, learning_reward, next_flat, bool(terminated))
            flat = next_flat
        self.episodes_done += 1
        rollout = self._episode_rollout(trajectory["rollout"], flat if truncated and not terminated else None)
        trajectory["probe"] = float(info.get("probe_metric", math.nan))
        return self._episode_record(trajectory, time.perf_counter() - start), rollout

    def _run_vector_episodes(self, venv: Any, seed: int | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """One episode in each sub-env of ``venv``, in lockstep; ``(record, rollout)`` per sub-env,
        as :meth:`_run_training_episode` gives for one env."""
        n = venv.num_envs
        start = time.perf_counter()
        self.reset()
        options = self._training_reset_options()
        obs, _ = venv.reset(seed=None if options and options.get("replay") else seed, options=options)
        flats = self._flatten_batch(obs, n)
        trajectories = [self._new_trajectory() for _ in range(n)]
        done = np.zeros(n, dtype=bool)
        while not done.all():
            active = np.flatnonzero(~done)
            if self.config.normalize_observations:
                self.obs_norm.update(self._tensor(flats[active]))
            x = self._normalized(flats)
            actions, raws = self._training_action(x, n)
            next_obs, rewards, terminated, truncated, info = venv.step(actions)
            next_flats = self._flatten_batch(next_obs, n)
            for i in active:
                t = trajectories[i]
                learning_reward = self._count_step(t, actions[i], float(rewards[i]))
                self._store_transition(t["rollout"], flats[i], x[i], raws[i], learning_reward, next_flats[i],
                                       bool(terminated[i]))
                if terminated[i] or truncated[i]:
                    done[i] = True
                    if "probe_metric" in info and info.get("_probe_metric", np.ones(n, bool))[i]:
                        t["probe"] = float(info["probe_metric"][i])
            flats = next_flats
        seconds = (time.perf_counter() - start) / n
        out = []
        for t in trajectories:
            self.episodes_done += 1
            rollout = self._episode_rollout(t["rollout"], None)
            out.append((self._episode_record(t, seconds), rollout))
        return out

    # ---- persistence -------------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        return self.config.to_dict()

    def _state_dict(self) -> dict[str, Any]:
        state = {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                 "obs_norm": self.obs_norm.state_dict(), "actor_optimizer": self.actor_optimizer.state_dict(),
                 "critic_optimizer": self.critic_optimizer.state_dict(), "generator": self.generator.get_state(),
                 "counters": {"episodes": self.episodes_done, "steps": self.steps_done, "updates": self.updates_done}}
        state.update({key: net.state_dict() for key, net in self._target_networks().items()})
        return state

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.actor.load_state_dict(state["actor"])
            self.critic.load_state_dict(state["critic"])
            self.obs_norm.load_state_dict(state["obs_norm"])
            self.actor_optimizer.load_state_dict(state["actor_optimizer"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.generator.set_state(state["generator"])
            for key, net in self._target_networks().items():
                net.load_state_dict(state[key])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not fit this {self.name!r} agent: {exc}") from None
        counters = state.get("counters", {})
        self.episodes_done = int(counters.get("episodes", 0))
        self.steps_done = int(counters.get("steps", 0))
        self.updates_done = int(counters.get("updates", 0))

    def _extra_header(self) -> dict[str, Any]:
        return {"np_rng_state": self.np_rng.bit_generator.state}

    def _load_extra_header(self, extra: dict[str, Any]) -> None:
        if "np_rng_state" in extra:
            self.np_rng.bit_generator.state = extra["np_rng_state"]
