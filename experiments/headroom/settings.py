"""What the headroom tool measures (:class:`HeadroomSettings`), its policy names and unit keys."""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kd_env.rewards import BUILTIN_REWARDS

from ..cli import SEEDS_FORMS, parse_seeds
from ..executors import EXECUTORS, check_executor

DYNAMIC_BASELINES = ("dynamic_kd", "eskd", "two_stage", "anneal")


def env_kwarg(text: str) -> tuple[str, Any]:
    """``--env-kwarg KEY=VALUE`` -> ``(KEY, VALUE)``, the value read as JSON where it is JSON
    (``total_steps=60`` -> ``("total_steps", 60)``), else the text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--env-kwarg takes key=value, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


@dataclass
class HeadroomSettings:
    """What to measure, and on how many seeds.  The command line's flags are its fields
    (:func:`experiments.flags.add_config_flags`: name, type, default and help from each field and
    its docstring; ``--quick`` starts from :meth:`quick`'s values); :meth:`validate` checks them
    once, before any file is read."""

    env: str = "kd_env/DigitsKD-Instances-v0"
    """env id (an instance env, or a plain env = one instance)"""
    env_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "flag": "--env-kwarg", "repeat": True, "type": env_kwarg, "metavar": "KEY=VALUE"})
    """extra gym.make keyword (JSON value), repeatable, e.g. total_steps=60"""
    selection_seeds: list[int] = field(default_factory=lambda: list(range(0, 5)),
                                       metadata={"type": parse_seeds, "metavar": "SEEDS", "note": SEEDS_FORMS})
    """reset seeds on which every choice is made (dev metric)"""
    test_seeds: list[int] = field(default_factory=lambda: list(range(1000, 1010)),
                                  metadata={"type": parse_seeds, "metavar": "SEEDS", "note": SEEDS_FORMS})
    """reset seeds on which held-out results are scored (test metric)"""
    greedy_seeds: int = 5
    """how many of the test seeds the (16x costlier) greedy oracles run on"""
    top_masks: int = 3
    """two-stage schedules combine the best this-many fixed masks"""
    switch_points: tuple[float, ...] = field(default=(1 / 3, 1 / 2, 2 / 3), metadata={"flag": None})
    """fractions of the phases after which a two-stage schedule switches"""
    random_episodes: int = 40
    """random-mask episodes for the reward-alignment check"""
    rewards: tuple[str, ...] = ()
    """comma-separated rewards to check for alignment (default: every registered one that needs no parameters;
    plug-in rewards load with --plugin)"""
    workers: int = 1
    """worker processes (local) or Ray tasks at a time (ray), one torch thread each"""
    executor: str = field(default="local", metadata={"choices": EXECUTORS})
    """where the episodes run: local (this process, or --workers spawned processes) or ray (a local Ray, or the
    cluster at --address)"""
    address: str | None = None
    """an existing Ray cluster for --executor ray (default: start a local Ray)"""
    batch: int = 32
    """open-loop episodes (fixed masks, schedules, random masks) run this many at a time on the
    env's batched vector env, where it has one (the digits ids); 1: one at a time on the single env"""
    out: str | None = None
    """output folder (default: runs/headroom-<env name>)"""
    tensorboard: bool = field(default=True, metadata={"flag": None})  # --no-tensorboard: experiments.cli's
    """write every policy's episodes to TensorBoard, ``<out>/tb/<policy>_<seed>/`` (``--no-tensorboard``: none)"""
    plugins: list[str] = field(default_factory=list, metadata={"flag": None})  # --plugin: experiments.cli's
    """user files imported first in every process (rewards, knowledge, instance sets)"""

    def validate(self) -> None:
        """Check the values that need no registry and no file: workers, executor and address,
        batch, the two seed lists apart.  (The env id, the rewards and the output folder are
        checked after the plug-ins load.)  ``ValueError`` naming the flag."""
        if self.workers < 1:
            raise ValueError("--workers must be >= 1")
        if self.address and self.executor != "ray":
            raise ValueError(f"--address {self.address} needs --executor ray (got --executor {self.executor})")
        check_executor(self.executor, self.workers, 1)
        if self.batch < 1:
            raise ValueError(f"--batch must be >= 1 (1: the single env), got {self.batch}")
        if set(self.selection_seeds) & set(self.test_seeds):
            raise ValueError("selection and test seeds must not overlap")

    @classmethod
    def quick(cls, **changes: Any) -> "HeadroomSettings":
        base: dict[str, Any] = dict(selection_seeds=[0, 1], test_seeds=[1000, 1001, 1002], greedy_seeds=1, top_masks=3,
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

