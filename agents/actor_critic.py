"""Compatibility names: our actor-critic selector now lives in four modules.

* :mod:`agents.ac`: ``ac``, :class:`ValueActorCritic` (A2C / PPO-clip) and its maths (:func:`gae`,
  :func:`bernoulli_log_prob_entropy`, :func:`gaussian_log_prob_entropy`, :func:`clipped_surrogate`);
* :mod:`agents.ac_q`: ``ac_q``, :class:`QActorCritic` (DDPG-style) and :func:`td_target`;
* :mod:`agents.ac_base` and :mod:`agents.ac_config`: what both share (:class:`ActorCriticAgent`,
  :class:`ActorCriticConfig`);
* :mod:`agents.networks`: :class:`RunningNorm`, :class:`ObservationEncoder`, :class:`ReplayBuffer`.

``from agents.actor_critic import ...`` keeps working for the names below; new code imports from
those modules.
"""

from __future__ import annotations

from .ac import ValueActorCritic, bernoulli_log_prob_entropy, clipped_surrogate, gae, gaussian_log_prob_entropy
from .ac_base import ActorCriticAgent
from .ac_config import ActorCriticConfig
from .ac_q import QActorCritic, td_target
from .networks import ObservationEncoder, ReplayBuffer, RunningNorm

__all__ = ["ActorCriticConfig", "ActorCriticAgent", "ValueActorCritic", "QActorCritic", "RunningNorm",
           "ObservationEncoder", "ReplayBuffer", "gae", "bernoulli_log_prob_entropy", "gaussian_log_prob_entropy",
           "td_target", "clipped_surrogate"]
