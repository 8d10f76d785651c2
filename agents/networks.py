"""The torch pieces of our actor-critic selectors (:mod:`agents.ac`, :mod:`agents.ac_q`).

* :class:`RunningNorm`: running mean/variance normalisation of observations (saved with the agent).
* :func:`observation_layout` and :class:`ObservationEncoder`: how a flat observation vector is
  encoded: ``flat`` parts pass through; a ``cls`` part (the student's [CLS] vector, then the
  teacher's) is split and each half goes through its own 2-layer encoder, as in the paper.
* :func:`mlp`, :class:`Actor`, :class:`Critic`: encoder + MLP heads; the critic is ``V(s)`` or
  ``Q(s, a)``.
* :class:`ReplayBuffer`: the ring buffer of the off-policy selector.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

__all__ = ["ACTIVATIONS", "RunningNorm", "ObservationEncoder", "observation_layout", "mlp", "Actor", "Critic",
           "ReplayBuffer"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}

#: ``(kind, start, end, split)`` per part of a flat observation (see :class:`ObservationEncoder`)
Layout = list[tuple[str, int, int, int]]


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


def observation_layout(env: Any, state_encoder: str, cls_split: int | None) -> tuple[Layout, int, int | None]:
    """The encoder layout of ``env``'s observations, their flat size and the resolved ``cls_split``.

    The parts come from what the env declares (``env.unwrapped.observation_parts``, a kd_env
    env's :class:`~kd_env.state.ObservationPart` tuple: which slice is a student/teacher [CLS]
    pair and where it splits); an env that declares none has one flat part per Box (a Dict's
    Boxes in key order).

    Args:
        env: the env (a Box observation, or a Dict of Boxes flattened in key order).
        state_encoder: ``"auto"`` (split the ``cls`` part only), ``"mlp"`` (nothing split) or
            ``"split"`` (the ``cls`` part, or a single Box, split in two).
        cls_split: length of the student part of the ``cls`` vector (``None``: as declared, else
            half).
    """
    space = env.observation_space
    declared = getattr(getattr(env, "unwrapped", env), "observation_parts", None)
    if isinstance(space, spaces.Dict):
        boxes = list(space.spaces.items())
    elif isinstance(space, spaces.Box):
        boxes = [("", space)]
    else:
        raise ValueError(f"observation space {space} is not supported: use a Box or a Dict of Boxes")
    for key, sub in boxes:
        if not isinstance(sub, spaces.Box):
            raise ValueError(f"observation part {key!r} is {sub}; only Box parts are supported")
    sizes = [int(np.prod(sub.shape)) for _, sub in boxes]
    by_key = {p.key: p for p in declared or ()}
    if declared is not None and isinstance(space, spaces.Dict) and all(
            key in by_key and by_key[key].size == size for (key, _), size in zip(boxes, sizes)):
        parts = [(key, size, by_key[key].kind, by_key[key].split) for (key, _), size in zip(boxes, sizes)]
    elif declared is not None and not isinstance(space, spaces.Dict) and sum(p.size for p in declared) == sizes[0]:
        parts = [(p.key, p.size, p.kind, p.split) for p in declared]
    else:
        parts = [(key, size, "flat", 0) for (key, _), size in zip(boxes, sizes)]
    layout = []
    offset = 0
    split_used = None
    has_cls = any(kind == "cls" for _, _, kind, _ in parts)
    if state_encoder == "split" and not has_cls and len(parts) != 1:
        raise ValueError("state_encoder='split' needs a 'cls' observation (or a single Box to split)")
    for _key, size, kind, declared_split in parts:
        split_this = state_encoder == "split" and (kind == "cls" or not has_cls)
        split_this = split_this or (state_encoder == "auto" and kind == "cls")
        if split_this:
            split = cls_split if cls_split is not None else (declared_split or size // 2)
            if not 0 < split < size:
                raise ValueError(f"cls_split must be in (0, {size}) for a {size}-long cls vector, got {split}")
            layout.append(("cls", offset, offset + size, int(split)))
            split_used = int(split)
        else:
            layout.append(("flat", offset, offset + size, 0))
        offset += size
    return layout, offset, split_used


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
    """Linear layers of ``sizes`` with ``activation`` between them; the last layer's weights are
    scaled by ``out_scale`` and its bias zeroed."""
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
