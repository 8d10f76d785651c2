"""What defines a glue_ac run: :class:`ExperimentConfig` (saved as ``config.yaml``), the
per-preset defaults and the methods compared."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from agents import agent_names
from kd_env import DistillConfig, get_preset
from kd_env.checks import check_types, matches, type_hints
from kd_env.runtime import usable_cpus

from ..executors import EXECUTORS, check_executor

BASELINES = ("finetune", "vanilla_kd", "pkd", "all", "random_hard", "random_soft")
#: the literature's dynamic baselines (agents.dynamic): valid --methods, not run by default
DYNAMIC_BASELINES = ("dynamic_kd", "eskd", "two_stage", "anneal")
SELECTOR = "selector"
#: methods that are not one fixed mask (never candidates for best_fixed)
NOT_FIXED = (SELECTOR, "random_hard", "random_soft", *DYNAMIC_BASELINES)

#: experiment-level defaults per preset (the distillation settings live in kd_env.config)
EXPERIMENT_PRESETS: dict[str, dict[str, Any]] = {
    # text: feature or relation alone never trains the classifier head (test 0.58 +- 0.25 over 5
    # seeds, README "What make demo does"), so the default methods leave those two masks out;
    # --methods brings them back
    "text": {"episodes": 6, "seeds": [0, 1, 2], "workers": 2, "leave_out": ["only:feature", "only:relation"]},
    "text3": {"episodes": 6, "seeds": [0, 1, 2], "workers": 2, "leave_out": ["only:feature", "only:relation"]},
    "quick": {"episodes": 4, "seeds": [0, 1], "workers": 1},
    "digits": {"episodes": 20, "seeds": [0, 1, 2, 3, 4], "workers": 1},
    "paper": {"episodes": 30, "seeds": [0, 1, 2], "workers": 1},
}

RESULT_COLUMNS = ["method", "seed", "metric_name", "metric", "dev_metric", "return", "train_seconds",
                  "student_parameters", "crashed", "mean_weights"]


@dataclass
class ExperimentConfig:
    """Everything that defines a run of this experiment (saved as config.yaml)."""

    preset: str = "text3"
    """distillation preset (kd_env.config): text3 (6 -> 3 layers, the default), text (6 -> 2), quick,
    digits, paper"""
    distill: dict[str, Any] = field(default_factory=dict)
    """DistillConfig overrides (task, teacher, student_layers, total_steps, ...)"""
    agent: str = "ac"
    """selector agent (any name agents.make_agent accepts)"""
    agent_params: dict[str, Any] = field(default_factory=dict)
    """selector hyperparameters"""
    action_mode: str = "weights"
    """"weights" (the paper's soft action; baselines' masks are 0/1 weights) or "mask\""""
    observation: str = "summary"
    reward: str = "dev_loss_delta"
    reward_params: dict[str, Any] = field(default_factory=dict)
    episodes: int | None = None
    """selector training episodes (default: per preset)"""
    seeds: list[int] | None = None
    """evaluation seeds (default: per preset)"""
    methods: list[str] | None = None
    """methods to compare (default: selector, the baselines and each single knowledge type; the dynamic
    baselines dynamic_kd, eskd, two_stage, anneal on request)"""
    name: str | None = None
    """run folder name under ``out`` (default: glue_ac-<preset>-<task>)"""
    out: str = "runs"
    plugins: list[str] = field(default_factory=list)
    """python files to import first (they may register rewards, knowledge, observations)"""
    selector_seed: int = 1000
    """seed of the selector's training episodes (distinct from the evaluation seeds)"""
    workers: int | None = None
    """students distilled at once, each in a spawned process (or a Ray task) with its share of the
    torch threads (default: per preset, at most the usable CPUs; 1 = in this process, locally)"""
    executor: str = "local"
    """where the students are distilled (:mod:`experiments.executors`): "local" (this process or
    ``workers`` spawned ones) or "ray" (one Ray task per student)"""
    address: str | None = None
    """an existing Ray cluster for executor "ray" (default: start a local Ray)"""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_types(cls, data: dict[str, Any]) -> None:
        """``ValueError`` naming the key when a value (from a config file) has the wrong type."""
        hints = type_hints(cls)
        hints.update({key: Optional[hints[key]] for key in ("distill", "agent_params", "reward_params", "plugins")})
        check_types(data, hints, message="config key '{name}' must be {expected}, got {value} ({type}){hint}")

    def resolved(self) -> "ExperimentConfig":
        """Fill the per-preset defaults and validate; errors name the bad key and valid values."""
        if self.preset not in EXPERIMENT_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {sorted(EXPERIMENT_PRESETS)}")
        if self.action_mode not in ("weights", "mask"):
            raise ValueError(f"action_mode must be 'weights' or 'mask', got {self.action_mode!r}")
        c = dataclasses.replace(self)
        defaults = EXPERIMENT_PRESETS[c.preset]
        c.episodes = defaults["episodes"] if c.episodes is None else c.episodes
        c.seeds = list(defaults["seeds"] if c.seeds is None else c.seeds)
        c.workers = min(defaults["workers"], usable_cpus()) if c.workers is None else c.workers
        if not matches(c.workers, int) or c.workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {c.workers!r}")
        if c.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {c.executor!r}")
        if c.address and c.executor != "ray":
            raise ValueError(f"address {c.address!r} needs executor 'ray' (got executor {c.executor!r})")
        check_executor(c.executor, c.workers, 1)  # ray: that it imports
        if not matches(c.episodes, int) or c.episodes < 0:
            raise ValueError(f"episodes must be an integer >= 0, got {c.episodes!r}")
        if not c.seeds or not matches(c.seeds, list[int]):
            raise ValueError(f"seeds must be a non-empty list of integers, got {c.seeds!r}")
        if len(set(c.seeds)) != len(c.seeds):
            raise ValueError(f"seeds must be distinct, got {c.seeds}")
        distill = self.distill_config()
        if c.methods is None:
            c.methods = [m for m in default_methods(distill.knowledge) if m not in defaults.get("leave_out", ())]
            if c.action_mode == "mask":
                c.methods = [m for m in c.methods if m != "random_soft"]  # soft weights need action_mode=weights
        if c.action_mode == "mask" and "random_soft" in c.methods:
            raise ValueError("method random_soft needs action_mode 'weights' (it outputs soft weights)")
        valid = valid_methods(distill.knowledge)
        bad = [m for m in c.methods if m not in valid and not m.startswith("fixed:")]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; valid: {valid} or fixed:<bits>")
        if len(set(c.methods)) != len(c.methods):
            raise ValueError(f"duplicate methods in {c.methods}")
        from kd_env.observations import observation_names
        from kd_env.rewards import reward_names

        if c.reward not in reward_names():
            raise ValueError(f"unknown reward {c.reward!r}; valid: {reward_names()} (or register one in a --plugin file)")
        if c.observation not in observation_names():
            raise ValueError(f"unknown observation {c.observation!r}; valid: {observation_names()}")
        if SELECTOR in c.methods and c.agent not in agent_names():
            raise ValueError(f"unknown agent {c.agent!r}; valid: {agent_names()}")
        from agents.base import AGENT_REGISTRY

        needs = getattr(AGENT_REGISTRY.lookup(c.agent), "observations", None) if SELECTOR in c.methods else None
        if needs and c.observation not in needs:
            raise ValueError(f"agent {c.agent!r} reads observation one of {list(needs)}, got {c.observation!r}: pass "
                             f"--observation {needs[0]} (or set observation: {needs[0]} in --config)")
        if c.name is None:
            c.name = f"glue_ac-{c.preset}-{Path(str(distill.task)).stem}"
        return c

    def distill_config(self) -> DistillConfig:
        return get_preset(self.preset, **self.distill)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["distill_resolved"] = self.distill_config().to_dict()
        return d


#: the dynamic baselines among the default methods: Dynamic KD, the paper's own dynamic baseline
DEFAULT_DYNAMIC = ("dynamic_kd",)


def default_methods(knowledge: Sequence[str]) -> list[str]:
    singles = [f"only:{k}" for k in knowledge if k != "finetune"]
    return [SELECTOR, *BASELINES, *DEFAULT_DYNAMIC, *singles]


def valid_methods(knowledge: Sequence[str]) -> list[str]:
    return [SELECTOR, *BASELINES, *DYNAMIC_BASELINES, *[f"only:{k}" for k in knowledge]]


def method_agent_name(method: str, knowledge: Sequence[str]) -> str:
    """The agents.make_agent name of a baseline method."""
    if method.startswith("only:"):
        return "fixed:" + "".join("1" if k == method[5:] else "0" for k in knowledge)
    return method

