"""Our knowledge selector: an actor-critic in plain torch (the paper's agent, Wang et al. 2022).

Two critics, chosen with ``critic=``:

* ``"value"`` (registered as ``ac``; the default): advantage actor-critic.  A state-value critic
  ``V(s)`` fitted to GAE(lambda) returns; the actor follows the policy gradient of the
  normalised advantages plus an entropy bonus.  One update per ``episodes_per_update`` episodes
  (an episode is short: one distillation run of ``num_phases`` phases).  Defaults sized for the
  benchmark's budget (~12 episodes of 15 phases): a short horizon (``gamma=0.5``), two episodes
  per update, and ``V(s)`` initialised near 0 -- see ``ActorCriticConfig.gamma`` for why.
* ``"q"`` (registered as ``ac_q``): the paper's description, DDPG-style.  A critic ``Q(s, a)``
  trained by TD(0) against target networks (Polyak-averaged with ``tau``) on minibatches from a
  replay buffer; the actor is trained *through* the critic (maximise ``Q(s, actor(s))``).

Actions:

* mask mode (``MultiBinary(K)``): the actor outputs K Bernoulli logits.  Acting samples each bit
  (``deterministic=True``: bit = logit > 0).  For ``critic="q"`` the gradient of ``Q(s, a)``
  reaches the logits through a *straight-through Gumbel-sigmoid*: ``soft = sigmoid((logit + L) /
  gumbel_temperature)`` with logistic noise ``L``, ``a = hard(soft) + soft - stop_grad(soft)``
  (the forward pass sees a 0/1 mask, the backward pass the relaxed one).
* weights mode (``Box(0, 1, (K,))``): a *sigmoid-squashed Gaussian*.  The actor outputs K means
  ``mu``; ``u ~ N(mu, exp(log_std))`` (state-independent, learned ``log_std``), action
  ``sigmoid(u)``; ``deterministic=True`` gives ``sigmoid(mu)``.  The log-probability of the
  pre-squash sample is used for the policy gradient (the squash's Jacobian does not depend on
  the parameters), and the Gaussian's entropy for the bonus.  For ``critic="q"`` the actor is
  deterministic, ``sigmoid(mu)``, explored with Gaussian noise of std ``action_noise`` clipped
  to [0, 1].

State encoders: flat observations (``summary``) go straight to the MLP.  With the paper's
``cls`` observation (the student's [CLS] vector, then the teacher's) each part has its own
2-layer encoder (``encoder_sizes``) and the two codes are concatenated (the paper's state).
``dict`` observations combine both (``summary`` flat, ``cls`` split).  Observations are
normalised with running mean/variance statistics (updated while learning, saved with the agent).

Exploration reward (the paper's; ``exploration_coef > 0``): added to the *learning* reward only,
never to the env's reported return.  ``hard``: ``-exploration_coef`` when the action equals the
previous phase's action; ``soft``: ``-exploration_coef * cos(a_t, a_{t-1})``.  ``auto`` picks
hard for masks and soft for weights.

Two stages, as in the paper: ``learn`` trains the selector over repeated distillation episodes,
then ``act(obs, deterministic=True)`` drives a fresh student::

    env = gym.make("kd_env/DigitsKD-v0", action_mode="weights", observation="cls")
    agent = make_agent("ac_q", env, seed=0).learn(env, total_episodes=30)
    result = run_episode(env, agent, deterministic=True, seed=123)  # a fresh student

Logs: one record per training episode in ``agent.episode_log`` (return, learning return, mean
selection frequency per knowledge type ``freq_<name>``, actor/critic losses, entropy, final
probe metric, seconds), and with ``log_dir`` a CSV (``episodes.csv``) and TensorBoard scalars.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch
import gymnasium as gym
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from .base import Agent, EpisodeCallback, EpisodeLogger, config_hyperparameters, register_agent, \
    selection_frequencies

__all__ = ["ActorCriticConfig", "ActorCriticAgent", "RunningNorm", "ObservationEncoder", "ReplayBuffer", "gae",
           "bernoulli_log_prob_entropy", "gaussian_log_prob_entropy", "td_target", "clipped_surrogate"]

CRITICS = ("value", "q")
STATE_ENCODERS = ("auto", "mlp", "split")
EXPLORATION_MODES = ("auto", "hard", "soft")
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
#: the discount when ``gamma=None``, per critic (see ``ActorCriticConfig.gamma``)
DEFAULT_GAMMA = {"value": 0.5, "q": 0.99}


@dataclass
class ActorCriticConfig:
    """Hyperparameters of :class:`ActorCriticAgent` (defaults sized for short, expensive
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
        if not 0 < number("clip_range", self.clip_range) < 1:
            raise ValueError(f"clip_range must be in (0, 1), got {self.clip_range!r}")
        positive_int("gradient_steps", self.gradient_steps)
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


def td_target(rewards: torch.Tensor, next_q: torch.Tensor, terminated: torch.Tensor, gamma: float) -> torch.Tensor:
    """The TD(0) target ``r + gamma (1 - terminated) Q'(s', a')``."""
    return rewards + gamma * (1 - terminated) * next_q


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's clipped policy objective (to maximise): ``mean(min(rho A, clip(rho, 1-c, 1+c) A))``."""
    ratio = torch.exp(logp - old_logp)
    return torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv).mean()


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


class RunningNorm(nn.Module):
    """Running mean/variance normaliser (buffers, so it is saved with the state_dict);
    outputs are clipped to +-``clip``."""

    def __init__(self, size: int, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("var", torch.ones(size, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0.0, dtype=torch.float64))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.mean.numel()).to(torch.float64)
        n = x.shape[0]
        mean, var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + var * n + delta**2 * self.count * n / total) / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(self.count) == 0:
            return x
        out = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + self.eps)
        return out.clamp(-self.clip, self.clip)


class ObservationEncoder(nn.Module):
    """Flat observation vector -> features.

    ``layout`` is a list of ``(kind, start, end, split)``: ``kind="flat"`` slices pass through,
    ``kind="cls"`` slices are split at ``start + split`` into the student and teacher parts,
    each through its own 2-layer MLP (``encoder_sizes``), codes concatenated.
    """

    def __init__(self, layout: Sequence[tuple[str, int, int, int]], encoder_sizes: Sequence[int],
                 activation: type[nn.Module]):
        super().__init__()
        self.layout = [tuple(p) for p in layout]
        self.encoders = nn.ModuleList()
        size = 0
        for kind, start, end, split in self.layout:
            if kind == "flat":
                size += end - start
            else:
                for width in (split, end - start - split):
                    self.encoders.append(nn.Sequential(nn.Linear(width, encoder_sizes[0]), activation(),
                                                       nn.Linear(encoder_sizes[0], encoder_sizes[1]), activation()))
                size += 2 * encoder_sizes[1]
        self.out_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        e = 0
        for kind, start, end, split in self.layout:
            if kind == "flat":
                parts.append(x[..., start:end])
            else:
                parts.append(self.encoders[e](x[..., start:start + split]))
                parts.append(self.encoders[e + 1](x[..., start + split:end]))
                e += 2
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def mlp(sizes: Sequence[int], activation: type[nn.Module], out_scale: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    last = layers[-1]
    with torch.no_grad():
        last.weight.mul_(out_scale)
        last.bias.zero_()
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Encoder + MLP -> K outputs (Bernoulli logits or Gaussian means); ``log_std`` for the
    weights-mode Gaussian."""

    def __init__(self, encoder: ObservationEncoder, hidden: Sequence[int], k: int, activation: type[nn.Module],
                 init_log_std: float):
        super().__init__()
        self.encoder = encoder
        self.body = mlp([encoder.out_size, *hidden, k], activation, out_scale=0.01)
        self.log_std = nn.Parameter(torch.full((k,), float(init_log_std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.encoder(x))


class Critic(nn.Module):
    """Encoder + MLP -> a scalar; ``V(s)`` (``action_size=0``) or ``Q(s, a)``."""

    def __init__(self, encoder: ObservationEncoder, hidden: Sequence[int], action_size: int,
                 activation: type[nn.Module], out_scale: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.action_size = action_size
        self.body = mlp([encoder.out_size + action_size, *hidden, 1], activation, out_scale=out_scale)

    def forward(self, x: torch.Tensor, action: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encoder(x)
        if self.action_size:
            h = torch.cat([h, action], dim=-1)
        return self.body(h).squeeze(-1)


class ReplayBuffer:
    """A ring buffer of ``(obs, action, reward, next_obs, terminated)`` (raw observations;
    normalised when sampled)."""

    def __init__(self, capacity: int, obs_size: int, action_size: int):
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_size), np.float32)
        self.next_obs = np.zeros((capacity, obs_size), np.float32)
        self.actions = np.zeros((capacity, action_size), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.size = 0
        self.position = 0

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        i = self.position
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_obs[i], self.terminated[i] = next_obs, float(terminated)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, ...]:
        idx = rng.integers(0, self.size, size=batch_size)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx]


# --------------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------------


class ActorCriticAgent(Agent):
    """The paper's knowledge selector (see the module docstring for the method).

    Args:
        env: the env (mask or weights mode; ``summary``, ``cls``, ``dict`` or any Box
            observation).
        config: an :class:`ActorCriticConfig`; or pass its fields as keyword arguments.
        log_dir: folder for ``episodes.csv`` and TensorBoard event files (not saved with the agent).
        tensorboard: write TensorBoard scalars when ``log_dir`` is set.
        **hyperparameters: :class:`ActorCriticConfig` fields.

    Raises:
        ValueError: unknown or invalid hyperparameters, or an env the agent cannot handle.
    """

    name = "ac"

    def __init__(self, env: Any, config: ActorCriticConfig | None = None, log_dir: str | None = None,
                 tensorboard: bool = True, **hyperparameters: Any):
        super().__init__(env)
        unknown = sorted(set(hyperparameters) - set(ActorCriticConfig.field_names()))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown} for {self.name!r}; valid: "
                             f"{ActorCriticConfig.field_names() + ['log_dir', 'tensorboard']}")
        if config is not None and hyperparameters:
            raise ValueError("pass either config or keyword hyperparameters, not both")
        self.config = config if config is not None else ActorCriticConfig(**hyperparameters)
        self.name = "ac" if self.config.critic == "value" else "ac_q"
        cfg = self.config
        self.log_dir = log_dir
        self.tensorboard = tensorboard
        self.device = torch.device(cfg.device)
        self.k = len(self.knowledge_names)
        self.layout, self.obs_size, cfg.cls_split = self._layout(env, cfg)
        self._obs_keys = list(self.observation_space.spaces) if isinstance(self.observation_space, spaces.Dict) else None
        self.exploration = cfg.exploration if cfg.exploration != "auto" else (
            "hard" if self.action_mode == "mask" else "soft")
        activation = ACTIVATIONS[cfg.activation if cfg.activation != "auto" else
                                 ("tanh" if cfg.critic == "value" else "relu")]
        seed = cfg.seed if cfg.seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.obs_norm = RunningNorm(self.obs_size)
            self.actor = Actor(ObservationEncoder(self.layout, cfg.encoder_sizes, activation), cfg.hidden_sizes,
                               self.k, activation, cfg.init_log_std)
            action_size = self.k if cfg.critic == "q" else 0
            # V(s) starts near 0 (its last layer scaled down, as the actor's): a freshly initialised
            # critic's O(1) state-dependent output is far larger than per-phase rewards such as
            # dev_loss_delta (~0.01-0.2) and would swamp the first advantages.  The q critic keeps
            # the default initialisation.
            self.critic = Critic(ObservationEncoder(self.layout, cfg.encoder_sizes, activation), cfg.hidden_sizes,
                                 action_size, activation, out_scale=0.01 if cfg.critic == "value" else 1.0)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.obs_norm.to(self.device)
        actor_params = [p for n, p in self.actor.named_parameters()
                        if n != "log_std" or (self.action_mode == "weights" and cfg.critic == "value")]
        self.actor_optimizer = torch.optim.Adam(actor_params, lr=cfg.lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr or cfg.lr)
        if cfg.critic == "q":
            import copy

            self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
            self.buffer = ReplayBuffer(cfg.buffer_size, self.obs_size, self.k)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.np_rng = np.random.default_rng(seed + 2)
        self.episodes_done = 0
        self.steps_done = 0
        self.updates_done = 0
        self.discarded_episodes = 0
        self._logger: EpisodeLogger | None = None

    # ---- construction helpers ---------------------------------------------------------------
    @staticmethod
    def _layout(env: Any, cfg: ActorCriticConfig) -> tuple[list[tuple[str, int, int, int]], int, int | None]:
        """The encoder layout, the flat observation size and the resolved ``cls_split``."""
        space = env.observation_space
        obs_name = getattr(getattr(getattr(env, "unwrapped", env), "observation_fn", None), "name", None)
        if isinstance(space, spaces.Dict):
            items = list(space.spaces.items())
        elif isinstance(space, spaces.Box):
            items = [("cls" if obs_name == "cls" else "", space)]
        else:
            raise ValueError(f"observation space {space} is not supported: use a Box or a Dict of Boxes")
        layout = []
        offset = 0
        split_used = None
        has_cls = any(key == "cls" for key, _ in items)
        if cfg.state_encoder == "split" and not has_cls and len(items) != 1:
            raise ValueError("state_encoder='split' needs a 'cls' observation (or a single Box to split)")
        for key, sub in items:
            if not isinstance(sub, spaces.Box):
                raise ValueError(f"observation part {key!r} is {sub}; only Box parts are supported")
            size = int(np.prod(sub.shape))
            split_this = cfg.state_encoder == "split" and (key == "cls" or not has_cls)
            split_this = split_this or (cfg.state_encoder == "auto" and key == "cls")
            if split_this:
                split = cfg.cls_split if cfg.cls_split is not None else _detect_cls_split(env, size)
                if not 0 < split < size:
                    raise ValueError(f"cls_split must be in (0, {size}) for a {size}-long cls vector, got {split}")
                layout.append(("cls", offset, offset + size, int(split)))
                split_used = int(split)
            else:
                layout.append(("flat", offset, offset + size, 0))
            offset += size
        return layout, offset, split_used

    def _flatten(self, obs: Any) -> np.ndarray:
        if self._obs_keys is not None:
            return np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in self._obs_keys])
        return np.asarray(obs, np.float32).reshape(-1)

    def _tensor(self, flat: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(flat, dtype=torch.float32, device=self.device)

    def _normalized(self, flat: np.ndarray) -> torch.Tensor:
        x = self._tensor(flat)
        return self.obs_norm(x) if self.config.normalize_observations else x

    # ---- acting -----------------------------------------------------------------------------
    @torch.no_grad()
    def _policy(self, x: torch.Tensor, deterministic: bool) -> tuple[np.ndarray, np.ndarray]:
        """(env action, raw sample kept for the update: the mask, or the pre-squash Gaussian u)."""
        out = self.actor(x)
        cfg = self.config
        if self.action_mode == "mask":
            if deterministic:
                bits = (out > 0).float()
            else:
                u = torch.rand(out.shape, generator=self.generator).to(self.device)
                bits = (u < torch.sigmoid(out)).float()
            raw = bits.cpu().numpy()
            return raw.astype(np.int8), raw.astype(np.float32)
        if cfg.critic == "q":
            w = torch.sigmoid(out)
            if not deterministic and cfg.action_noise > 0:
                w = (w + cfg.action_noise * torch.randn(w.shape, generator=self.generator).to(self.device)).clamp(0, 1)
            w = w.cpu().numpy().astype(np.float32)
            return w, w
        if deterministic:
            u = out
        else:
            std = self.actor.log_std.exp()
            u = out + std * torch.randn(out.shape, generator=self.generator).to(self.device)
        return torch.sigmoid(u).cpu().numpy().astype(np.float32), u.cpu().numpy().astype(np.float32)

    def _random_action(self) -> tuple[np.ndarray, np.ndarray]:
        """A uniformly random action (each bit 1 with p=0.5, or weights uniform in [0, 1])."""
        u = torch.rand((self.k,), generator=self.generator).numpy()
        if self.action_mode == "mask":
            bits = (u < 0.5).astype(np.float32)
            return bits.astype(np.int8), bits
        return u.astype(np.float32), u.astype(np.float32)

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        x = self._normalized(self._flatten(obs))
        action, _ = self._policy(x, deterministic)
        return action

    # ---- learning ---------------------------------------------------------------------------
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
        :func:`agents.make_vector_env`): the N episodes of a batch run in lockstep, the policy acts
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
        if cfg.critic == "q":
            self._learning_starts = self._plan_learning_starts(env, total_episodes, total_steps)
        episodes = steps = 0
        pending: list[dict[str, Any]] = []  # value critic: episodes awaiting an update
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
                losses: dict[str, float] = {}
                if cfg.critic == "value":
                    pending.append(rollout)
                    last = (total_episodes is not None and episodes >= total_episodes) or (
                        total_steps is not None and steps >= total_steps)
                    if len(pending) >= cfg.episodes_per_update or last:
                        losses = self._value_update(pending)
                        pending = []
                else:
                    losses = rollout["losses"]
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

    def _flatten_batch(self, obs: Any, n: int) -> np.ndarray:
        if self._obs_keys is not None:
            return np.concatenate([np.asarray(obs[k], np.float32).reshape(n, -1) for k in self._obs_keys], axis=1)
        return np.asarray(obs, np.float32).reshape(n, -1)

    def _run_vector_episodes(self, venv: Any, seed: int | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """One episode in each sub-env of ``venv``, in lockstep; ``(record, rollout)`` per sub-env,
        as :meth:`_run_training_episode` gives for one env."""
        cfg = self.config
        n = venv.num_envs
        start = time.perf_counter()
        self.reset()
        obs, _ = venv.reset(seed=seed)
        flats = self._flatten_batch(obs, n)
        traj = [{"obs": [], "raw": [], "rewards": [], "actions": [], "return": 0.0, "learning_return": 0.0,
                 "previous": None, "probe": math.nan, "q_losses": []} for _ in range(n)]
        done = np.zeros(n, dtype=bool)
        while not done.all():
            active = np.flatnonzero(~done)
            if cfg.normalize_observations:
                self.obs_norm.update(self._tensor(flats[active]))
            x = self._normalized(flats)
            if cfg.critic == "q" and self.buffer.size < self._learning_starts:
                pairs = [self._random_action() for _ in range(n)]
                actions, raws = np.stack([a for a, _ in pairs]), np.stack([r for _, r in pairs])
            else:
                actions, raws = self._policy(x, deterministic=False)
            next_obs, rewards, terminated, truncated, info = venv.step(actions)
            next_flats = self._flatten_batch(next_obs, n)
            for i in active:
                t = traj[i]
                r_learn = float(rewards[i]) + self._exploration_term(actions[i], t["previous"])
                t["return"] += float(rewards[i])
                t["learning_return"] += r_learn
                t["previous"] = np.asarray(actions[i], np.float32)
                t["actions"].append(t["previous"])
                self.steps_done += 1
                if cfg.critic == "q":
                    self.buffer.add(flats[i], raws[i], r_learn, next_flats[i], bool(terminated[i]))
                    if self.buffer.size >= max(self._learning_starts, 1):
                        t["q_losses"] += [self._q_update() for _ in range(cfg.gradient_steps)]
                else:
                    t["obs"].append(x[i].cpu().numpy())
                    t["raw"].append(raws[i])
                    t["rewards"].append(r_learn)
                if terminated[i] or truncated[i]:
                    done[i] = True
                    if "probe_metric" in info and info.get("_probe_metric", np.ones(n, bool))[i]:
                        t["probe"] = float(info["probe_metric"][i])
            flats = next_flats
        seconds = (time.perf_counter() - start) / n
        out = []
        for t in traj:
            self.episodes_done += 1
            if cfg.critic == "value":
                rollout = {"obs": np.stack(t["obs"]), "raw": np.stack(t["raw"]),
                           "rewards": np.asarray(t["rewards"], np.float32), "last_obs": None}
            else:
                q = t["q_losses"]
                rollout = {"losses": {k: float(np.mean([d[k] for d in q])) for k in q[0]} if q else {}}
            record = {"episode": self.episodes_done, "steps": self.steps_done, "length": len(t["actions"]),
                      "return": t["return"], "learning_return": t["learning_return"],
                      **selection_frequencies(t["actions"], self.knowledge_names),
                      "final_probe_metric": t["probe"], "seconds": seconds}
            out.append((record, rollout))
        return out

    def _plan_learning_starts(self, env: Any, total_episodes: int | None, total_steps: int | None) -> int:
        """The q critic's random-action warm-up for this ``learn`` call, checked against the budget."""
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
        return starts

    def _run_training_episode(self, env: Any, seed: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
        cfg = self.config
        start = time.perf_counter()
        self.reset()
        obs, info = env.reset(seed=seed)
        flat = self._flatten(obs)
        observations, raws, rewards, actions = [], [], [], []
        previous = None
        env_return = learn_return = 0.0
        terminated = truncated = False
        q_losses: list[dict[str, float]] = []
        while not (terminated or truncated):
            if cfg.normalize_observations:
                self.obs_norm.update(self._tensor(flat))
            x = self._normalized(flat)
            if cfg.critic == "q" and self.buffer.size < self._learning_starts:
                action, raw = self._random_action()
            else:
                action, raw = self._policy(x, deterministic=False)
            next_obs, reward, terminated, truncated, info = env.step(action)
            next_flat = self._flatten(next_obs)
            r_learn = float(reward) + self._exploration_term(action, previous)
            env_return += float(reward)
            learn_return += r_learn
            previous = np.asarray(action, np.float32)
            actions.append(previous)
            self.steps_done += 1
            if cfg.critic == "q":
                self.buffer.add(flat, raw, r_learn, next_flat, bool(terminated))
                if self.buffer.size >= max(self._learning_starts, 1):
                    for _ in range(cfg.gradient_steps):
                        q_losses.append(self._q_update())
            else:
                observations.append(x.cpu().numpy())
                raws.append(raw)
                rewards.append(r_learn)
            flat = next_flat
        self.episodes_done += 1
        rollout: dict[str, Any] = {}
        if cfg.critic == "value":
            last_value_obs = None
            if truncated and not terminated:
                if cfg.normalize_observations:
                    self.obs_norm.update(self._tensor(flat))
                last_value_obs = self._normalized(flat).cpu().numpy()
            rollout = {"obs": np.stack(observations), "raw": np.stack(raws), "rewards": np.asarray(rewards, np.float32),
                       "last_obs": last_value_obs}
        else:
            rollout = {"losses": {k: float(np.mean([d[k] for d in q_losses])) for k in q_losses[0]} if q_losses else {}}
        record = {"episode": self.episodes_done, "steps": self.steps_done, "length": len(actions),
                  "return": env_return, "learning_return": learn_return,
                  **selection_frequencies(actions, self.knowledge_names),
                  "final_probe_metric": float(info.get("probe_metric", math.nan)),
                  "seconds": time.perf_counter() - start}
        return record, rollout

    def _log_prob_entropy(self, out: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.action_mode == "mask":
            return bernoulli_log_prob_entropy(out, raw)
        return gaussian_log_prob_entropy(out, self.actor.log_std, raw)

    def _value_update(self, rollouts: list[dict[str, Any]]) -> dict[str, float]:
        cfg = self.config
        obs_all, raw_all, adv_all, ret_all = [], [], [], []
        with torch.no_grad():
            for ro in rollouts:
                obs = torch.as_tensor(ro["obs"], device=self.device)
                values = self.critic(obs).cpu().numpy().astype(np.float64)
                last = 0.0
                if ro["last_obs"] is not None:
                    last = float(self.critic(torch.as_tensor(ro["last_obs"], device=self.device)))
                adv = gae(ro["rewards"].astype(np.float64), values, last, cfg.gamma, cfg.gae_lambda)
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

    def _relaxed_action(self, out: torch.Tensor) -> torch.Tensor:
        """The actor's action with a gradient path to its outputs (see the module docstring)."""
        if self.action_mode == "weights":
            return torch.sigmoid(out)
        u = torch.rand(out.shape, generator=self.generator).to(self.device).clamp(1e-6, 1 - 1e-6)
        logistic = torch.log(u) - torch.log1p(-u)
        soft = torch.sigmoid((out + logistic) / self.config.gumbel_temperature)
        hard = (soft > 0.5).float()
        return hard + soft - soft.detach()

    def _q_update(self) -> dict[str, float]:
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
        if self.action_mode == "mask":
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

    # ---- persistence ------------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        return self.config.to_dict()

    def _state_dict(self) -> dict[str, Any]:
        state = {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                 "obs_norm": self.obs_norm.state_dict(), "actor_optimizer": self.actor_optimizer.state_dict(),
                 "critic_optimizer": self.critic_optimizer.state_dict(), "generator": self.generator.get_state(),
                 "counters": {"episodes": self.episodes_done, "steps": self.steps_done, "updates": self.updates_done}}
        if self.config.critic == "q":
            state["actor_target"] = self.actor_target.state_dict()
            state["critic_target"] = self.critic_target.state_dict()
        return state

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.actor.load_state_dict(state["actor"])
            self.critic.load_state_dict(state["critic"])
            self.obs_norm.load_state_dict(state["obs_norm"])
            self.actor_optimizer.load_state_dict(state["actor_optimizer"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.generator.set_state(state["generator"])
            if self.config.critic == "q":
                self.actor_target.load_state_dict(state["actor_target"])
                self.critic_target.load_state_dict(state["critic_target"])
        except (KeyError, RuntimeError, ValueError) as exc:
            from .base import CheckpointError

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


def _detect_cls_split(env: Any, size: int) -> int:
    """Length of the student part of a ``cls`` vector: asked of a kd_env distiller, else half."""
    base = getattr(env, "unwrapped", env)
    distiller = getattr(base, "distiller", None)
    if distiller is not None and hasattr(distiller, "cls_embeddings"):
        student, teacher = distiller.cls_embeddings()
        if len(student) + len(teacher) == size:
            return len(student)
    return size // 2


#: what ``ac`` and ``ac_q`` accept: the config's fields (less ``critic``, fixed by the name) and the logging options
_HYPERPARAMETERS = config_hyperparameters(ActorCriticConfig, exclude=("critic",), log_dir=str | None, tensorboard=bool)


@register_agent("ac", description="our actor-critic selector: A2C (GAE, entropy bonus), own torch code",
                hyperparameters=_HYPERPARAMETERS)
def make_ac(env: Any, **hyperparameters: Any) -> ActorCriticAgent:
    """``ac``: :class:`ActorCriticAgent` with ``critic="value"`` (the default)."""
    if hyperparameters.get("critic", "value") != "value":
        raise ValueError(f"agent 'ac' has critic='value'; got critic={hyperparameters['critic']!r} (use 'ac_q')")
    return ActorCriticAgent(env, **{**hyperparameters, "critic": "value"})


@register_agent("ac_q", description="the paper's DDPG-style selector: Q(s,a) critic by TD, target nets, replay",
                hyperparameters=_HYPERPARAMETERS)
def make_ac_q(env: Any, **hyperparameters: Any) -> ActorCriticAgent:
    """``ac_q``: :class:`ActorCriticAgent` with ``critic="q"``."""
    if hyperparameters.get("critic", "q") != "q":
        raise ValueError(f"agent 'ac_q' has critic='q'; got critic={hyperparameters['critic']!r} (use 'ac')")
    return ActorCriticAgent(env, **{**hyperparameters, "critic": "q"})
