"""``ac``: our actor-critic selector, advantage actor-critic (A2C) with optional PPO-clip epochs.

The method, from top to bottom of this file:

* **Acting.**  Mask mode (``MultiBinary(K)``): the actor outputs K Bernoulli logits; each bit is
  sampled (``deterministic=True``: bit = logit > 0).  Weights mode (``Box(0, 1, (K,))``): a
  *sigmoid-squashed Gaussian*: the actor outputs K means ``mu``, ``u ~ N(mu, exp(log_std))``
  (state-independent, learned ``log_std``), action ``sigmoid(u)``; ``deterministic=True`` gives
  ``sigmoid(mu)``.  The log-probability of the pre-squash sample ``u`` is used for the policy
  gradient (the squash's Jacobian does not depend on the parameters), the Gaussian's entropy for
  the bonus.
* **Collecting.**  Each training episode keeps its normalised observations, raw samples (the mask
  or ``u``) and learning rewards; an episode is short (one distillation run of ``num_phases``
  phases).
* **Updating.**  Once per ``episodes_per_update`` episodes: a state-value critic ``V(s)`` gives
  GAE(lambda) advantages (:func:`gae`), normalised over the batch; the actor follows the policy
  gradient of the advantages plus an entropy bonus, the critic is fitted to the returns.  With
  ``update_epochs > 1`` each batch is reused for several epochs under PPO's clipped surrogate
  (:func:`clipped_surrogate`); with one epoch that is the plain A2C gradient.
* **Paired rollouts** (``group_size > 1``).  Training episodes come in groups that start from
  the same situation (the env's ``reset(options={"replay": True})``), and a step's advantage is
  its return-to-go minus the mean return-to-go of the group's other episodes at that phase
  (:func:`leave_one_out_baselines`).  On an instance env the instance and seed decide most of an
  episode's return (held-out accuracy 0.5-0.9 by instance; the action moves it by a few points),
  and a critic that must guess the instance from training statistics leaves that in the
  advantages; a partner that faced the same instance and seed removes it exactly.  Measured on
  ``DigitsKD-Instances-v0`` (see the README): this is what lets ``ac`` learn there in budget.

Defaults sized for the benchmark's budget (~12 episodes of 15 phases): a short horizon
(``gamma=0.5``), two episodes per update, and ``V(s)`` initialised near 0 -- see
``ActorCriticConfig.gamma`` (:mod:`agents.ac_config`) for why.

State encoders (:mod:`agents.networks`): flat observations (``summary``) go straight to the MLP.
With the paper's ``cls`` observation (the student's [CLS] vector, then the teacher's) each part has
its own 2-layer encoder (``encoder_sizes``) and the two codes are concatenated (the paper's state).
``dict`` observations combine both.  Observations are normalised with running mean/variance
statistics (updated while learning, saved with the agent).  The training loop, the exploration
reward and checkpoints are shared with ``ac_q`` (:mod:`agents.ac_base`).

Two stages, as in the paper: ``learn`` trains the selector over repeated distillation episodes,
then ``act(obs, deterministic=True)`` drives a fresh student::

    env = gym.make("kd_env/DigitsKD-v0", action_mode="weights", observation="cls")
    agent = make_agent("ac", env, seed=0).learn(env, total_episodes=30)
    result = run_episode(env, agent, deterministic=True, seed=123)  # a fresh student
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .ac_base import ActorCriticAgent
from .ac_config import AC_HYPERPARAMETERS
from .base import register_agent

__all__ = ["ValueActorCritic", "gae", "bernoulli_log_prob_entropy", "gaussian_log_prob_entropy",
           "clipped_surrogate", "returns_to_go", "leave_one_out_baselines", "group_baselines"]


# --------------------------------------------------------------------------------------------
# The maths, as small functions (unit-tested against values computed by hand)
# --------------------------------------------------------------------------------------------


def gae(rewards: np.ndarray, values: np.ndarray, last_value: float, gamma: float, lam: float) -> np.ndarray:
    """Generalised advantage estimates of one episode: ``A_t = sum_l (gamma lam)^l delta_{t+l}``
    with ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` and ``V(s_T) = last_value`` (0 when the
    episode terminated)."""
    adv = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else last_value
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


def bernoulli_log_prob_entropy(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of a 0/1 ``mask`` under independent Bernoulli(sigmoid(logits)) bits, and the
    distribution's entropy (both summed over the bits)."""
    logp = -F.binary_cross_entropy_with_logits(logits, mask, reduction="none").sum(-1)
    entropy = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(logits), reduction="none").sum(-1)
    return logp, entropy


def gaussian_log_prob_entropy(mean: torch.Tensor, log_std: torch.Tensor,
                              sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-density of ``sample`` under a diagonal Gaussian, and its entropy (summed over dims)."""
    log_std = log_std.expand_as(mean)
    logp = (-0.5 * ((sample - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
    return logp, entropy


def returns_to_go(rewards: np.ndarray, gamma: float, last_value: float = 0.0) -> np.ndarray:
    """``G_t = sum_l gamma^l r_{t+l}`` (+ ``gamma^(T-t) last_value``, the bootstrap of a truncated episode)."""
    out = np.zeros(len(rewards), dtype=np.float64)
    running = float(last_value)
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def leave_one_out_baselines(returns: list[np.ndarray]) -> list[np.ndarray | None]:
    """For episodes that started from the same situation: the baseline of episode ``i`` at phase
    ``t`` is the mean return-to-go at ``t`` of the *other* episodes that reached ``t`` (it does
    not depend on episode ``i``'s actions, so the policy gradient stays unbiased).  ``None`` for
    an episode with no partner; NaN at a phase no other episode reached."""
    out: list[np.ndarray | None] = []
    for i, own in enumerate(returns):
        others = [r for j, r in enumerate(returns) if j != i]
        if not others:
            out.append(None)
            continue
        baseline = np.full(len(own), np.nan)
        for t in range(len(own)):
            at_t = [r[t] for r in others if len(r) > t]
            if at_t:
                baseline[t] = float(np.mean(at_t))
        out.append(baseline)
    return out


def group_baselines(rollouts: list[dict[str, Any]], gamma: float) -> list[np.ndarray | None]:
    """:func:`leave_one_out_baselines` within each group of ``rollouts`` (by ``rollout["group"]``);
    ``None`` where an episode has no partner in this batch (it then uses the critic)."""
    groups: dict[Any, list[int]] = {}
    for i, ro in enumerate(rollouts):
        groups.setdefault(ro["group"], []).append(i)
    out: list[np.ndarray | None] = [None] * len(rollouts)
    for members in groups.values():
        g = [returns_to_go(rollouts[i]["rewards"].astype(np.float64), gamma) for i in members]
        for i, baseline in zip(members, leave_one_out_baselines(g)):
            out[i] = baseline
    return out


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's clipped policy objective (to maximise): ``mean(min(rho A, clip(rho, 1-c, 1+c) A))``."""
    ratio = torch.exp(logp - old_logp)
    return torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv).mean()


# --------------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------------


@register_agent("ac", description="our actor-critic selector: A2C (GAE, entropy bonus), own torch code",
                hyperparameters=AC_HYPERPARAMETERS)
class ValueActorCritic(ActorCriticAgent):
    """``ac``: advantage actor-critic with a state-value critic (see the module docstring).

    Args: those of :class:`agents.ac_base.ActorCriticAgent` (``critic`` may only be ``"value"``).
    """

    name = "ac"
    critic_kind = "value"
    default_activation = "tanh"
    # V(s) starts near 0 (its last layer scaled down, as the actor's): a freshly initialised
    # critic's O(1) state-dependent output is far larger than per-phase rewards such as
    # dev_loss_delta (~0.01-0.2) and would swamp the first advantages.
    critic_output_scale = 0.01

    def _trains_log_std(self) -> bool:
        return self.action_mode == "weights"

    # ---- acting -------------------------------------------------------------------------------
    @torch.no_grad()
    def _policy(self, x: torch.Tensor, deterministic: bool) -> tuple[np.ndarray, np.ndarray]:
        """(env action, raw sample kept for the update: the mask, or the pre-squash Gaussian u)."""
        out = self.actor(x)
        if self.action_mode == "mask":
            return self._sample_mask(out, deterministic)
        if deterministic:
            u = out
        else:
            std = self.actor.log_std.exp()
            u = out + std * torch.randn(out.shape, generator=self.generator).to(self.device)
        return torch.sigmoid(u).cpu().numpy().astype(np.float32), u.cpu().numpy().astype(np.float32)

    def _log_prob_entropy(self, out: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.action_mode == "mask":
            return bernoulli_log_prob_entropy(out, raw)
        return gaussian_log_prob_entropy(out, self.actor.log_std, raw)

    # ---- collecting ---------------------------------------------------------------------------
    def _prepare_learning(self, env: Any, total_episodes: int | None, total_steps: int | None) -> None:
        self._pending: list[dict[str, Any]] = []  # episodes awaiting an update (within one learn call)
        self._starts = 0  # training resets in this learn call (a vector env's reset counts once)
        self._member = 0  # episodes begun since the last reset (the sub-env index of a vector env)

    def _start_options(self) -> dict[str, Any] | None:
        """Paired rollouts: every reset but each group's first replays the previous start."""
        position = self._starts % self.config.group_size
        self._starts += 1
        self._member = 0
        return {"replay": True} if position else None

    def _new_rollout(self) -> dict[str, Any]:
        # the group: the same start (the k-th group of resets) in the same env (sub-env index)
        group = ((self._starts - 1) // self.config.group_size, self._member)
        self._member += 1
        return {"obs": [], "raw": [], "rewards": [], "group": group}

    def _store_transition(self, rollout: dict[str, Any], flat: np.ndarray, x: torch.Tensor, raw: np.ndarray,
                          reward: float, next_flat: np.ndarray, terminated: bool) -> None:
        rollout["obs"].append(x.cpu().numpy())
        rollout["raw"].append(raw)
        rollout["rewards"].append(reward)

    def _episode_rollout(self, rollout: dict[str, Any], bootstrap_flat: np.ndarray | None) -> dict[str, Any]:
        last_obs = None
        if bootstrap_flat is not None:  # truncated: V of the last observation bootstraps the returns
            if self.config.normalize_observations:
                self.obs_norm.update(self._tensor(bootstrap_flat))
            last_obs = self._normalized(bootstrap_flat).cpu().numpy()
        return {"obs": np.stack(rollout["obs"]), "raw": np.stack(rollout["raw"]),
                "rewards": np.asarray(rollout["rewards"], np.float32), "last_obs": last_obs,
                "group": rollout["group"]}

    # ---- updating -----------------------------------------------------------------------------
    def _after_episode(self, rollout: dict[str, Any], last: bool) -> dict[str, float]:
        self._pending.append(rollout)
        if len(self._pending) >= self.config.episodes_per_update or last:
            losses = self._update(self._pending)
            self._pending = []
            return losses
        return {}

    def _update(self, rollouts: list[dict[str, Any]]) -> dict[str, float]:
        """One actor-critic update over a batch of episodes (``update_epochs`` passes)."""
        cfg = self.config
        obs_all, raw_all, adv_all, ret_all = [], [], [], []
        paired = group_baselines(rollouts, cfg.gamma) if cfg.group_size > 1 else [None] * len(rollouts)
        with torch.no_grad():
            for ro, baseline in zip(rollouts, paired):
                obs = torch.as_tensor(ro["obs"], device=self.device)
                values = self.critic(obs).cpu().numpy().astype(np.float64)
                last = 0.0
                if ro["last_obs"] is not None:
                    last = float(self.critic(torch.as_tensor(ro["last_obs"], device=self.device)))
                if baseline is None:
                    adv = gae(ro["rewards"].astype(np.float64), values, last, cfg.gamma, cfg.gae_lambda)
                else:  # paired rollouts: return-to-go minus the group's leave-one-out mean
                    baseline = np.where(np.isnan(baseline), values, baseline)  # a phase no partner reached
                    adv = returns_to_go(ro["rewards"].astype(np.float64), cfg.gamma, last) - baseline
                obs_all.append(ro["obs"])
                raw_all.append(ro["raw"])
                adv_all.append(adv)
                ret_all.append(adv + values)
        obs = torch.as_tensor(np.concatenate(obs_all), device=self.device)
        raw = torch.as_tensor(np.concatenate(raw_all), device=self.device)
        adv = torch.as_tensor(np.concatenate(adv_all), dtype=torch.float32, device=self.device)
        returns = torch.as_tensor(np.concatenate(ret_all), dtype=torch.float32, device=self.device)
        if cfg.normalize_advantages and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        with torch.no_grad():
            old_logp, _ = self._log_prob_entropy(self.actor(obs), raw)
        for _ in range(cfg.update_epochs):
            out = self.actor(obs)
            logp, entropy = self._log_prob_entropy(out, raw)
            # the ratio is 1 on the first pass: the plain advantage actor-critic gradient
            actor_loss = -clipped_surrogate(logp, old_logp, adv, cfg.clip_range) - cfg.ent_coef * entropy.mean()
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm)
            self.actor_optimizer.step()
            critic_loss = 0.5 * F.mse_loss(self.critic(obs), returns)
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
            self.critic_optimizer.step()
        self.updates_done += 1
        return {"actor_loss": float(actor_loss.detach()), "critic_loss": float(critic_loss.detach()),
                "entropy": float(entropy.detach().mean())}
