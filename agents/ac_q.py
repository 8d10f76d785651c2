"""``ac_q``: the paper's DDPG-style knowledge selector (Wang et al., 2022).

The method, from top to bottom of this file:

* **Acting.**  Mask mode (``MultiBinary(K)``): the actor outputs K Bernoulli logits; each bit is
  sampled (``deterministic=True``: bit = logit > 0).  Weights mode (``Box(0, 1, (K,))``): the
  actor is deterministic, ``sigmoid(mu)``, explored with Gaussian noise of std ``action_noise``
  clipped to [0, 1].  The first ``learning_starts`` transitions of a ``learn`` call use uniformly
  random actions (sized to the budget when ``None``; a budget that would end before the first
  update is an error).
* **Collecting.**  Every transition goes into a replay buffer (:class:`agents.networks.ReplayBuffer`),
  and after each env step come ``gradient_steps`` updates on replay minibatches (phases are
  expensive, gradient steps are cheap).
* **Updating.**  A critic ``Q(s, a)`` is trained by TD(0) (:func:`td_target`) against target
  networks (Polyak-averaged with ``tau``); the actor is trained *through* the critic (maximise
  ``Q(s, actor(s))``).  In mask mode the gradient of ``Q(s, a)`` reaches the logits through a
  *straight-through Gumbel-sigmoid*: ``soft = sigmoid((logit + L) / gumbel_temperature)`` with
  logistic noise ``L``, ``a = hard(soft) + soft - stop_grad(soft)`` (the forward pass sees a 0/1
  mask, the backward pass the relaxed one), plus a Bernoulli entropy bonus (``ent_coef``).

State encoders, observation normalisation, the training loop, the exploration reward and
checkpoints are shared with ``ac`` (:mod:`agents.networks`, :mod:`agents.ac_base`).  The paper's
state is the ``cls`` observation; the paper's action the soft one::

    env = gym.make("kd_env/DigitsKD-v0", action_mode="weights", observation="cls")
    agent = make_agent("ac_q", env, seed=0).learn(env, total_episodes=30)
    result = run_episode(env, agent, deterministic=True, seed=123)  # a fresh student
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .ac_base import ActorCriticAgent
from .ac_config import ActorCriticConfig
from .ac_config import AC_HYPERPARAMETERS
from .base import register_agent
from .networks import ReplayBuffer

__all__ = ["QActorCritic", "td_target"]


def td_target(rewards: torch.Tensor, next_q: torch.Tensor, terminated: torch.Tensor, gamma: float) -> torch.Tensor:
    """The TD(0) target ``r + gamma (1 - terminated) Q'(s', a')``."""
    return rewards + gamma * (1 - terminated) * next_q


@register_agent("ac_q", description="the paper's DDPG-style selector: Q(s,a) critic by TD, target nets, replay",
                hyperparameters=AC_HYPERPARAMETERS)
class QActorCritic(ActorCriticAgent):
    """``ac_q``: a ``Q(s, a)`` critic by TD(0) with target networks and replay; the actor trained
    through the critic (see the module docstring).

    Args: those of :class:`agents.ac_base.ActorCriticAgent` (``critic`` may only be ``"q"``).
    """

    name = "ac_q"
    critic_kind = "q"
    # a tanh Q-network stays nearly linear in the action for long and drives the actor to corners
    default_activation = "relu"
    critic_output_scale = 1.0
    critic_sees_action = True

    def __init__(self, env: Any, config: ActorCriticConfig | None = None, log_dir: str | None = None, tensorboard: bool = True,
                 **hyperparameters: Any):
        super().__init__(env, config, log_dir, tensorboard, **hyperparameters)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.buffer = ReplayBuffer(self.config.buffer_size, self.obs_size, self.k)

    def _target_networks(self) -> dict[str, nn.Module]:
        return {"actor_target": self.actor_target, "critic_target": self.critic_target}

    # ---- acting -------------------------------------------------------------------------------
    @torch.no_grad()
    def _policy(self, x: torch.Tensor, deterministic: bool) -> tuple[np.ndarray, np.ndarray]:
        """(env action, the same action as stored in the replay buffer)."""
        out = self.actor(x)
        if self.action_mode == "mask":
            return self._sample_mask(out, deterministic)
        cfg = self.config
        w = torch.sigmoid(out)
        if not deterministic and cfg.action_noise > 0:
            w = (w + cfg.action_noise * torch.randn(w.shape, generator=self.generator).to(self.device)).clamp(0, 1)
        w = w.cpu().numpy().astype(np.float32)
        return w, w

    def _random_action(self) -> tuple[np.ndarray, np.ndarray]:
        """A uniformly random action (each bit 1 with p=0.5, or weights uniform in [0, 1])."""
        u = torch.rand((self.k,), generator=self.generator).numpy()
        if self.action_mode == "mask":
            bits = (u < 0.5).astype(np.float32)
            return bits.astype(np.int8), bits
        return u.astype(np.float32), u.astype(np.float32)

    def _training_action(self, x: torch.Tensor, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        if self.buffer.size >= self._learning_starts:
            return self._policy(x, deterministic=False)
        if n is None:
            return self._random_action()
        pairs = [self._random_action() for _ in range(n)]
        return np.stack([a for a, _ in pairs]), np.stack([r for _, r in pairs])

    # ---- collecting ---------------------------------------------------------------------------
    def _prepare_learning(self, env: Any, total_episodes: int | None, total_steps: int | None) -> None:
        """The random-action warm-up for this ``learn`` call, checked against the budget."""
        if isinstance(env, gym.vector.VectorEnv):
            try:
                config = env.get_attr("config")[0]
            except (AttributeError, IndexError):
                config = None
        else:
            config = getattr(getattr(env, "unwrapped", env), "config", None)
        phases = getattr(config, "num_phases", None)
        budget = [b for b in (total_steps, total_episodes * phases if total_episodes is not None and phases else None)
                  if b is not None]
        planned = min(budget) if budget else None
        starts = self.config.learning_starts
        if starts is None:
            starts = 50 if planned is None else max(1, min(50, planned // 5))
        if planned is not None and self.buffer.size + planned <= starts:
            how = f" ({total_episodes} episodes x {phases} phases)" if total_episodes is not None and phases else ""
            raise ValueError(f"ac_q would never update: this learn call runs {planned} env steps{how}, but "
                             f"learning_starts={starts} random transitions come before the first update (the "
                             f"buffer holds {self.buffer.size}); lower learning_starts or raise the budget")
        self._learning_starts = starts

    def _new_rollout(self) -> dict[str, Any]:
        return {"losses": []}

    def _store_transition(self, rollout: dict[str, Any], flat: np.ndarray, x: torch.Tensor, raw: np.ndarray,
                          reward: float, next_flat: np.ndarray, terminated: bool) -> None:
        self.buffer.add(flat, raw, reward, next_flat, terminated)
        if self.buffer.size >= max(self._learning_starts, 1):
            rollout["losses"] += [self._update() for _ in range(self.config.gradient_steps)]

    def _episode_rollout(self, rollout: dict[str, Any], bootstrap_flat: np.ndarray | None) -> dict[str, Any]:
        losses = rollout["losses"]  # the replay buffer holds the transitions: only the mean losses remain
        return {"losses": {k: float(np.mean([d[k] for d in losses])) for k in losses[0]} if losses else {}}

    # ---- updating -----------------------------------------------------------------------------
    def _after_episode(self, rollout: dict[str, Any], last: bool) -> dict[str, float]:
        return rollout["losses"]  # learnt while collecting

    def _relaxed_action(self, out: torch.Tensor) -> torch.Tensor:
        """The actor's action with a gradient path to its outputs (see the module docstring)."""
        if self.action_mode == "weights":
            return torch.sigmoid(out)
        u = torch.rand(out.shape, generator=self.generator).to(self.device).clamp(1e-6, 1 - 1e-6)
        logistic = torch.log(u) - torch.log1p(-u)
        soft = torch.sigmoid((out + logistic) / self.config.gumbel_temperature)
        hard = (soft > 0.5).float()
        return hard + soft - soft.detach()

    def _update(self) -> dict[str, float]:
        """One critic and one actor step on a replay minibatch, then the target networks."""
        cfg = self.config
        obs, actions, rewards, next_obs, terminated = self.buffer.sample(self.np_rng, cfg.batch_size)
        norm = self.obs_norm if cfg.normalize_observations else (lambda t: t)
        obs = norm(self._tensor(obs))
        next_obs = norm(self._tensor(next_obs))
        actions, rewards, terminated = self._tensor(actions), self._tensor(rewards), self._tensor(terminated)
        with torch.no_grad():
            target_out = self.actor_target(next_obs)
            next_action = (target_out > 0).float() if self.action_mode == "mask" else torch.sigmoid(target_out)
            target = td_target(rewards, self.critic_target(next_obs, next_action), terminated, cfg.gamma)
        critic_loss = F.mse_loss(self.critic(obs, actions), target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
        self.critic_optimizer.step()
        out = self.actor(obs)
        q = self.critic(obs, self._relaxed_action(out))
        actor_loss = -q.mean()
        entropy = torch.zeros(())
        if self.action_mode == "mask":  # the Bernoulli entropy of the logits
            entropy = F.binary_cross_entropy_with_logits(out, torch.sigmoid(out), reduction="none").sum(-1).mean()
            actor_loss = actor_loss - cfg.ent_coef * entropy
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm)
        self.actor_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)  # the actor's pass left gradients in the critic
        with torch.no_grad():
            for net, target_net in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, tp in zip(net.parameters(), target_net.parameters()):
                    tp.mul_(1 - cfg.tau).add_(p, alpha=cfg.tau)
        self.updates_done += 1
        return {"actor_loss": float(actor_loss.detach()), "critic_loss": float(critic_loss.detach()),
                "entropy": float(entropy.detach())}
