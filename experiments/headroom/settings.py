"""What the headroom tool measures (:class:`HeadroomSettings`), its policy names and unit keys."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kd_env.rewards import BUILTIN_REWARDS

DYNAMIC_BASELINES = ("dynamic_kd", "eskd", "two_stage", "anneal")


@dataclass
class HeadroomSettings:
    """What to measure, and on how many seeds."""

    env: str = "kd_env/DigitsKD-Instances-v0"
    """env id (an instance env, or a plain env = one instance)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra ``gym.make`` keywords (e.g. ``{"total_steps": 60}``)"""
    selection_seeds: list[int] = field(default_factory=lambda: list(range(0, 5)))
    """reset seeds on which every choice is made (dev metric)"""
    test_seeds: list[int] = field(default_factory=lambda: list(range(1000, 1010)))
    """reset seeds on which held-out results are scored (test metric)"""
    greedy_seeds: int = 5
    """how many of the test seeds the (16x costlier) greedy oracles run on"""
    top_masks: int = 3
    """two-stage schedules combine the best this-many fixed masks"""
    switch_points: tuple[float, ...] = (1 / 3, 1 / 2, 2 / 3)
    """fractions of the phases after which a two-stage schedule switches"""
    random_episodes: int = 40
    """random-mask episodes for the reward-alignment check"""
    rewards: tuple[str, ...] = ()
    """rewards checked for alignment (default: every registered one that needs no parameters)"""
    workers: int = 1
    """worker processes (``local``) or Ray tasks at a time (``ray``), one torch thread each"""
    executor: str = "local"
    """where the units run: ``local`` (this process, or ``workers`` spawned processes) or ``ray``"""
    address: str | None = None
    """an existing Ray cluster (``executor="ray"``; default: a local Ray)"""
    batch: int = 32
    """open-loop episodes (fixed masks, schedules, random masks) run this many at a time on the
    env's batched vector env, where it has one (the digits ids); 1: one at a time on the single env"""
    out: str | None = None
    tensorboard: bool = True
    """write every policy's episodes to TensorBoard, ``<out>/tb/<policy>_<seed>/`` (``--no-tensorboard``: none)"""
    plugins: list[str] = field(default_factory=list)
    """user files imported first in every process (rewards, knowledge, instance sets)"""

    @classmethod
    def quick(cls, **changes: Any) -> "HeadroomSettings":
        base = dict(selection_seeds=[0, 1], test_seeds=[1000, 1001, 1002], greedy_seeds=1, top_masks=3,
                    switch_points=(1 / 2,), random_episodes=12)
        base.update(changes)
        return cls(**base)


def all_masks(k: int) -> list[str]:
    return ["".join(bits) for bits in itertools.product("01", repeat=k)]


def _bits(s: str) -> np.ndarray:
    return np.asarray([int(c) for c in s], dtype=np.int8)


def schedule_name(first: str, second: str, switch: int) -> str:
    return f"schedule:{first}>{second}@{switch}"


#: policies whose actions do not depend on the state: they run batched where the env allows
OPEN_LOOP = ("fixed:", "schedule:", "random:")


def builtin_rewards() -> list[str]:
    """The rewards kd_env ships (plug-in rewards are checked only when named with ``--rewards``)."""
    return list(BUILTIN_REWARDS)


def unit_key(unit: dict[str, Any]) -> str:
    """What identifies a unit (its policy, instance, seed and reward); its file is named after it."""
    return f"{unit['policy']}|{unit['instance']}|{unit['seed']}|{unit.get('reward', '')}"

