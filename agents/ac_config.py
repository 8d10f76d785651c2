"""The hyperparameters of our actor-critic selectors, ``ac`` and ``ac_q``: one dataclass,
:class:`ActorCriticConfig`, whose ``critic`` field says which algorithm (``"value"``:
:mod:`agents.ac`; ``"q"``: :mod:`agents.ac_q`).  A field only one algorithm reads says so in its
docstring; checkpoints store every field (``to_dict``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from .networks import ACTIVATIONS

__all__ = ["ActorCriticConfig", "CRITICS", "DEFAULT_GAMMA"]

CRITICS = ("value", "q")
STATE_ENCODERS = ("auto", "mlp", "split")
EXPLORATION_MODES = ("auto", "hard", "soft")
#: the discount when ``gamma=None``, per critic (see ``ActorCriticConfig.gamma``)
DEFAULT_GAMMA = {"value": 0.5, "q": 0.99}


@dataclass
class ActorCriticConfig:
    """Hyperparameters of ``ac`` and ``ac_q`` (defaults sized for short, expensive
    episodes of 4-50 phases)."""

    critic: str = "value"
    """``"value"`` (A2C with GAE and an entropy bonus) or ``"q"`` (DDPG-style Q critic)"""
    lr: float = 3e-3
    """actor learning rate (Adam)"""
    critic_lr: float | None = None
    """critic learning rate (``None``: same as ``lr``)"""
    gamma: float | None = None
    """discount factor, in [0, 1] (``None``: 0.5 for the value critic, 0.99 for the q critic).
    The value critic's short horizon is deliberate: the per-phase rewards (``dev_loss_delta``)
    telescope, so with ``gamma`` near 1 a phase's action is credited only through its small
    effect on the *final* dev loss, and over a budget of ~12 episodes that signal is lost in the
    noise (and in the critic's errors); ``gamma=0.5`` credits a phase mostly for the loss decrease
    it and the next phase or two produce (the area under the dev-loss curve)."""
    gae_lambda: float = 0.95
    """GAE lambda (value critic), in [0, 1]"""
    ent_coef: float = 0.01
    """entropy bonus coefficient (>= 0; for the q critic in mask mode: the Bernoulli entropy)"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden widths of the actor and critic MLPs (two hidden layers = 3 linear layers)"""
    encoder_sizes: tuple[int, int] = (64, 64)
    """widths of the 2-layer encoders of the student and teacher [CLS] parts (``cls`` states)"""
    activation: str = "auto"
    """``"tanh"``, ``"relu"`` or ``"auto"`` (tanh for the value critic, relu for the q critic: a
    tanh Q-network stays nearly linear in the action for long and drives the actor to corners)"""
    state_encoder: str = "auto"
    """``"auto"`` (split encoders for ``cls`` observations, flat otherwise), ``"mlp"`` or ``"split"``"""
    cls_split: int | None = None
    """size of the student part of a ``cls`` vector (``None``: read from the env, else half)"""
    normalize_observations: bool = True
    """running mean/std normalisation of observations"""
    normalize_advantages: bool = True
    """normalise advantages per update (value critic)"""
    episodes_per_update: int = 2
    """episodes per actor-critic update (value critic).  Advantages are normalised over the
    update's batch: over a single short episode, mean-centring removes the whole episode's
    outcome (the main learning signal) and 15 noisy samples per step let the policy drift"""
    update_epochs: int = 1
    """passes over each batch of episodes (value critic).  With more than one, the actor's loss
    is PPO's clipped surrogate (``clip_range``), so several Adam steps can reuse the same
    expensive episodes without the policy moving too far from the one that collected them; with
    one it equals the plain advantage actor-critic gradient"""
    group_size: int = 1
    """paired rollouts (value critic): training episodes come in groups of ``group_size`` that
    start from the same situation (the env's ``reset(options={"replay": True})``: same instance,
    student initialisation and data order), and the advantage of a step is its return-to-go minus
    the mean return-to-go of the group's *other* episodes at the same phase (a leave-one-out
    baseline), so that it measures the actions, not how good the drawn instance or seed was.
    ``1``: GAE advantages from the critic.  Keep ``episodes_per_update`` a multiple of
    ``group_size`` x the number of vector sub-envs, so that every group is learnt from whole;
    a group member alone in its update falls back to the critic's GAE advantage.  An env that
    ignores the ``replay`` option (not a kd_env env) gets unpaired groups: the baseline stays
    unbiased but no longer removes the situation"""
    clip_range: float = 0.2
    """PPO ratio clip (value critic, ``update_epochs > 1``), in (0, 1)"""
    max_grad_norm: float = 0.5
    """gradient-norm clip of each update (> 0)"""
    init_log_std: float = -0.5
    """initial log std of the weights-mode Gaussian (value critic)"""
    buffer_size: int = 100_000
    """replay buffer capacity in transitions (q critic)"""
    batch_size: int = 64
    """replay minibatch size (q critic); <= buffer_size"""
    tau: float = 0.01
    """Polyak factor of the target networks (q critic), in (0, 1]"""
    learning_starts: int | None = None
    """transitions collected with uniformly random actions before the first q-critic update
    (``None``: sized to the budget of each ``learn`` call: a fifth of its env steps, at most 50).
    A budget that would end before the first update is an error naming both numbers"""
    gradient_steps: int = 4
    """q-critic/actor updates per env step (phases are expensive, gradient steps are cheap)"""
    action_noise: float = 0.2
    """std of the Gaussian exploration noise on weights (q critic)"""
    gumbel_temperature: float = 1.0
    """temperature of the straight-through Gumbel-sigmoid (q critic, mask mode), > 0"""
    exploration: str = "auto"
    """exploration reward: ``"hard"`` (penalise a repeated action), ``"soft"`` (cosine similarity
    to the previous action) or ``"auto"`` (hard for masks, soft for weights)"""
    exploration_coef: float = 0.0
    """exploration-reward coefficient (>= 0; 0 switches it off)"""
    example_weighting: str | None = None
    """a registered per-example weighting (:func:`kd_env.register_example_weighting`), e.g.
    ``"uncertainty"`` (Dynamic KD's supervision adjustment), switched on in every episode the agent
    runs, training and evaluation alike (through :meth:`agents.base.Agent.reset_options`): the
    selector then chooses the knowledge mix per phase while the weighting decides, inside each
    batch, how much each example counts.  ``None``: every example counts the same"""
    seed: int | None = 0
    """seed of network initialisation, action sampling, replay sampling and the env's first reset
    in each ``learn`` call (``None``: not reproducible)"""
    device: str = "cpu"
    """torch device of the networks"""

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        self.encoder_sizes = tuple(self.encoder_sizes)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        def positive_int(name: str, value: Any, minimum: int = 1) -> None:
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        def number(name: str, value: Any) -> float:
            if not isinstance(value, (int, float, np.number)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return float(value)

        if self.critic not in CRITICS:
            raise ValueError(f"critic must be one of {list(CRITICS)}, got {self.critic!r}")
        if number("lr", self.lr) <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.critic_lr is not None and number("critic_lr", self.critic_lr) <= 0:
            raise ValueError(f"critic_lr must be > 0 or None, got {self.critic_lr!r}")
        if self.gamma is None:
            self.gamma = DEFAULT_GAMMA[self.critic]
        for name in ("gamma", "gae_lambda"):
            v = number(name, getattr(self, name))
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        for name in ("ent_coef", "exploration_coef", "action_noise"):
            if number(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        number("init_log_std", self.init_log_std)
        if number("max_grad_norm", self.max_grad_norm) <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if number("gumbel_temperature", self.gumbel_temperature) <= 0:
            raise ValueError(f"gumbel_temperature must be > 0, got {self.gumbel_temperature!r}")
        tau = number("tau", self.tau)
        if not 0 < tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau!r}")
        if not self.hidden_sizes:
            raise ValueError("hidden_sizes must name at least one hidden width, e.g. (64, 64)")
        for i, h in enumerate(self.hidden_sizes):
            positive_int(f"hidden_sizes[{i}]", h)
        if len(self.encoder_sizes) != 2:
            raise ValueError(f"encoder_sizes must hold 2 widths (a 2-layer encoder), got {self.encoder_sizes!r}")
        for i, h in enumerate(self.encoder_sizes):
            positive_int(f"encoder_sizes[{i}]", h)
        if self.activation not in (*ACTIVATIONS, "auto"):
            raise ValueError(f"activation must be one of {[*ACTIVATIONS, 'auto']}, got {self.activation!r}")
        if self.state_encoder not in STATE_ENCODERS:
            raise ValueError(f"state_encoder must be one of {list(STATE_ENCODERS)}, got {self.state_encoder!r}")
        if self.cls_split is not None:
            positive_int("cls_split", self.cls_split)
        positive_int("episodes_per_update", self.episodes_per_update)
        positive_int("buffer_size", self.buffer_size)
        positive_int("batch_size", self.batch_size)
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be <= buffer_size ({self.buffer_size})")
        if self.learning_starts is not None:
            positive_int("learning_starts", self.learning_starts, minimum=0)
        positive_int("update_epochs", self.update_epochs)
        positive_int("group_size", self.group_size)
        if self.critic == "q" and self.group_size != 1:
            raise ValueError(f"group_size applies to the value critic (ac) only, got {self.group_size!r} for the q critic")
        if not 0 < number("clip_range", self.clip_range) < 1:
            raise ValueError(f"clip_range must be in (0, 1), got {self.clip_range!r}")
        positive_int("gradient_steps", self.gradient_steps)
        if self.example_weighting is not None and (not isinstance(self.example_weighting, str)
                                                   or not self.example_weighting):
            raise ValueError(f"example_weighting must be a registered example weighting's name or None, got "
                             f"{self.example_weighting!r}")
        if self.exploration not in EXPLORATION_MODES:
            raise ValueError(f"exploration must be one of {list(EXPLORATION_MODES)}, got {self.exploration!r}")
        if self.seed is not None:
            positive_int("seed", self.seed, minimum=0)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be a torch device name, got {self.device!r}") from None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        d["encoder_sizes"] = list(self.encoder_sizes)
        return d



def _declared_hyperparameters() -> dict[str, Any]:
    from .base import config_hyperparameters

    return config_hyperparameters(ActorCriticConfig, exclude=("critic",), log_dir=str | None, tensorboard=bool)


#: what ``ac`` and ``ac_q`` accept (declared at their registration): the config's fields, less
#: ``critic`` (fixed by the name), and the logging options
AC_HYPERPARAMETERS = _declared_hyperparameters()
