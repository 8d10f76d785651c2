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

from ..cli import SEEDS_HELP, parse_seeds
from ..executors import EXECUTORS, check_executor

BASELINES = ("finetune", "vanilla_kd", "pkd", "all", "random_hard", "random_soft")
#: the literature's dynamic baselines (agents.dynamic): valid --methods, not run by default
DYNAMIC_BASELINES = ("dynamic_kd", "eskd", "two_stage", "anneal")
SELECTOR = "selector"
#: a selector loaded from an agent checkpoint (``--transfer-checkpoint``) acting with no training
#: on this task
TRANSFER = "transfer"
#: the learned methods: reported with a heatmap and paired differences against the baselines
LEARNED = (SELECTOR, TRANSFER)
#: methods that are not one fixed mask (never candidates for best_fixed)
NOT_FIXED = (SELECTOR, TRANSFER, "random_hard", "random_soft", *DYNAMIC_BASELINES)
#: the instance set ``--situation`` / ``--situations`` names situations of when no other is given
DEFAULT_INSTANCE_SET = "text3-situations"
#: the DistillConfig keys that describe a situation (the task, the teacher, the gold labels): with a
#: situation, setting one of them to another value than the situation's is an error
SITUATION_KEYS = ("task", "data_dir", "labels", "teacher", "label_fraction", "label_noise", "teacher_train_fraction",
                  "teacher_epochs", "teacher_min_steps", "teacher_patience")
#: the situations of text3-situations `make demo` runs, one study each: the clean one, and the one
#: whose dev headroom over both vanilla KD and Dynamic KD (the smaller of the per-situation oracle's
#: two gains) is largest: rt-labels10-weak, +4.4 points (the next: +0.8); measured on dev only,
#: results/2026-12-05-text3-headroom.md
DEMO_SITUATIONS = ["rt-clean", "rt-labels10-weak"]
#: the dev headroom of text3-situations (``python -m experiments.headroom.design --out``; dev split,
#: choice and check seeds only), shown beside a study's test table; relative to the repository
TEXT3_HEADROOM = "results/2026-12-05-text3-headroom.json"
#: a situation "has headroom" when the per-situation oracle (best constant or two-stage schedule,
#: chosen on the choice seeds, scored on the check seeds) beats vanilla KD by at least this much on dev
HEADROOM_THRESHOLD = 0.02

@dataclass(frozen=True)
class ExperimentPreset:
    """An experiment preset: a distillation preset of :mod:`kd_env.config`, named (never copied),
    plus the experiment's own defaults."""

    distill: str
    """the :data:`kd_env.config.PRESETS` name the run distils with"""
    episodes: int
    """selector training episodes"""
    seeds: list[int]
    """evaluation seeds"""
    workers: int
    """students distilled at once (at most the usable CPUs)"""
    leave_out: tuple[str, ...] = ()
    """default methods this preset does not run (``--methods`` brings them back)"""
    situations: Optional[list[str]] = None
    """what the CLI runs when it is given no situation and no situation setting of its own"""
    headroom: Optional[str] = None
    """the dev-headroom measurement of the situations (package data)"""


#: text: feature or relation alone never trains the classifier head (test 0.58 +- 0.25 over 5
#: seeds, README "What make demo does"), so the default methods leave those two masks out
_TEXT_LEAVE_OUT = ("only:feature", "only:relation")

#: the experiment presets, one per distillation preset of kd_env.config and of the same name: the
#: distillation settings live there (:func:`kd_env.get_preset`), the experiment's here
EXPERIMENT_PRESETS: dict[str, ExperimentPreset] = {
    "text": ExperimentPreset("text", episodes=6, seeds=[0, 1, 2], workers=2, leave_out=_TEXT_LEAVE_OUT),
    # situations: what the CLI runs when it is given no situation and no situation setting of its
    # own (python -m experiments.glue_ac, make demo): one study per situation of text3-situations
    "text3": ExperimentPreset("text3", episodes=6, seeds=[0, 1, 2], workers=2, leave_out=_TEXT_LEAVE_OUT,
                              situations=DEMO_SITUATIONS, headroom=TEXT3_HEADROOM),
    "quick": ExperimentPreset("quick", episodes=4, seeds=[0, 1], workers=1),
    "digits": ExperimentPreset("digits", episodes=20, seeds=[0, 1, 2, 3, 4], workers=1),
    "paper": ExperimentPreset("paper", episodes=30, seeds=[0, 1, 2], workers=1),
}


def experiment_preset_of(distill_preset: str) -> str | None:
    """The experiment preset over distillation preset ``distill_preset`` (``None``: none)."""
    return next((name for name, p in EXPERIMENT_PRESETS.items() if p.distill == distill_preset), None)


RESULT_COLUMNS = ["method", "seed", "metric_name", "metric", "dev_metric", "return", "train_seconds",
                  "student_parameters", "crashed", "mean_weights"]

#: the ``--methods`` help: the default list and what else is valid
_METHODS_HELP = (f"methods to compare, a comma list (default: {SELECTOR}, {', '.join(BASELINES)}, "
                 f"dynamic_kd and each single knowledge type only:<type>, less the preset's leave-outs; also: "
                 f"{', '.join(DYNAMIC_BASELINES)} (the dynamic baselines), fixed:<bits>, schedule:<file>, any "
                 f"registered agent (a --plugin's too))")


@dataclass
class ExperimentConfig:
    """Everything that defines a run of this experiment (saved as config.yaml).

    Each field is a flag of ``python -m experiments.glue_ac`` (:mod:`experiments.flags`: its name
    in kebab case, its type, its default, this docstring as its help), a key of a ``--config``
    YAML file and of ``--set KEY=VALUE``; ``distill``, ``agent_params``, ``reward_params``: YAML
    and ``--set`` only."""

    preset: str = field(default="text3", metadata={"choices": sorted(EXPERIMENT_PRESETS)})
    """experiment preset, over the distillation preset of the same name (kd_env.config): text3
    (embedded offline rt-polarity, 6 -> 3 layers), text (6 -> 2), quick (digits, about a minute),
    digits, paper"""
    distill: dict[str, Any] = field(default_factory=dict)
    """DistillConfig overrides (task, teacher, student_layers, total_steps, ...)"""
    agent: str = "ac"
    """selector agent (any registered agent name, agents.make_agent)"""
    agent_params: dict[str, Any] = field(default_factory=dict)
    """selector hyperparameters"""
    action_mode: str = field(default="weights", metadata={"choices": ("weights", "mask")})
    """weights (the paper's soft action; baselines' masks are 0/1 weights) or mask"""
    observation: str = "summary"
    """registered observation the selector reads (lookup and bandit read observable)"""
    reward: str = "dev_loss_delta"
    """registered reward name"""
    reward_params: dict[str, Any] = field(default_factory=dict)
    """the reward's parameters"""
    episodes: int | None = None
    """selector training episodes (default: per preset)"""
    seeds: list[int] | None = field(default=None, metadata={"type": parse_seeds,
                                                              "help": f"evaluation {SEEDS_HELP} (default: per preset)"})
    """evaluation seeds (default: per preset)"""
    methods: list[str] | None = field(default=None, metadata={"help": _METHODS_HELP})
    """methods to compare (default: selector, the baselines and each single knowledge type; the dynamic
    baselines dynamic_kd, eskd, two_stage, anneal on request)"""
    name: str | None = None
    """run folder name under ``out`` (default: glue_ac-<preset>-<task>)"""
    out: str = "runs"
    """output root"""
    tensorboard: bool = True
    """TensorBoard logs in ``<run>/tb/``: the selector's training episodes (``tb/selector``) and each
    student (``tb/<method>_<seed>``), stable-baselines3's layout (``tensorboard --logdir <run>/tb``;
    ``--no-tensorboard``: none)"""
    plugins: list[str] = field(default_factory=list, metadata={"flag": None})  # --plugin (experiments.cli)
    """python files to import first (they may register rewards, knowledge, observations)"""
    selector_seed: int = 1000
    """seed of the selector's training episodes (distinct from the evaluation seeds)"""
    workers: int | None = None
    """students distilled at once, each in a spawned process (or a Ray task) with its share of the
    torch threads (default: per preset: text 2, at most the usable CPUs; 1 = in this process, locally)"""
    executor: str = field(default="local", metadata={"choices": EXECUTORS})
    """where the students are distilled (:mod:`experiments.executors`): local (this process or
    ``--workers`` spawned ones) or ray (one Ray task per student, ``--workers`` at a time; a local Ray, or
    the cluster at ``--address``)"""
    address: str | None = None
    """an existing Ray cluster for executor ray (default: start a local Ray)"""
    situation: str | None = None
    """one situation of ``instance_set`` (default set text3-situations): its DistillConfig overrides go
    over the preset's, and ``distill`` over both (a --label-fraction, --label-noise,
    --teacher-train-fraction, --task or --teacher, or a ``distill`` key of :data:`SITUATION_KEYS`, that
    contradicts the situation is an error)"""
    instance_set: str | None = None
    """the instance set of ``situation`` / ``situations`` (default: text3-situations; also every set of
    kd_env.instances, e.g. digits-switch with --preset quick)"""
    situations: list[str] | None = field(default=None, metadata={"help": (
        "comma list of situations of --instance-set: the whole study (selector and every method x seed) once "
        "per situation in <name>/<situation>/, then <name>/situations.md, situations.json and "
        "situations-heatmap.png; 'none': one run (default: the preset's list -- text3: "
        f"{','.join(DEMO_SITUATIONS)} -- unless you describe your own situation with the distillation flags)")})
    """situations of ``instance_set`` to run one whole study each, in ``<name>/<situation>/``, then
    the per-situation report (:func:`experiments.glue_ac.situations.run_situations`); ``None`` or
    empty: one run"""
    transfer_checkpoint: str | None = None
    """an agent checkpoint folder (e.g. <run>/selector/agent): adds the method ``transfer``, that agent
    acting deterministically with no training on this task (pass the --observation and --action-mode it
    was trained with)"""
    headroom: str | None = None
    """a ``python -m experiments.headroom.design --out`` JSON measured on dev for the situations'
    instance set: the per-situation report shows each situation's dev headroom beside its test
    table (default for text3's situations: the committed measurement; '': none)"""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_types(cls, data: dict[str, Any]) -> None:
        """``ValueError`` naming the key when a value (from a config file) has the wrong type."""
        hints = type_hints(cls)
        hints.update({key: Optional[hints[key]] for key in ("distill", "agent_params", "reward_params", "plugins")})
        check_types(data, hints, message="config key '{name}' must be {expected}, got {value} ({type}){hint}")

    def validate(self) -> None:
        """Check every key once: types, values, the names against the registries (a plug-in's
        too), the situation against its instance set.  Reads no file (a transfer checkpoint is
        checked after this, :func:`experiments.glue_ac.transfer.check_inputs`).  ``ValueError``
        naming the bad key and the valid values."""
        self.resolved()

    def resolved(self) -> "ExperimentConfig":
        """A copy with the per-preset defaults filled, validated (:meth:`validate`); computed
        once per value of the config (again only after a field changed)."""
        snapshot = dataclasses.asdict(self)
        cached = getattr(self, "_resolved", None)
        if cached is not None and cached[0] == snapshot:
            return cached[1]
        c = self._resolve()
        object.__setattr__(self, "_resolved", (snapshot, c))  # not a field: never in config.yaml
        object.__setattr__(c, "_resolved", (dataclasses.asdict(c), c))  # a resolved config resolves to itself
        return c

    def preset_defaults(self) -> ExperimentPreset:
        """The experiment preset ``preset`` names (``ValueError`` listing the valid ones)."""
        if self.preset not in EXPERIMENT_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {sorted(EXPERIMENT_PRESETS)}")
        return EXPERIMENT_PRESETS[self.preset]

    def _resolve(self) -> "ExperimentConfig":
        self.check_types(dataclasses.asdict(self))
        defaults = self.preset_defaults()
        self.check_situations()
        if self.action_mode not in ("weights", "mask"):
            raise ValueError(f"action_mode must be 'weights' or 'mask', got {self.action_mode!r}")
        c = dataclasses.replace(self)
        if (c.situation is not None or c.situations) and c.instance_set is None:
            c.instance_set = DEFAULT_INSTANCE_SET  # one spelling in config.yaml, given or not
        c.episodes = defaults.episodes if c.episodes is None else c.episodes
        c.seeds = list(defaults.seeds if c.seeds is None else c.seeds)
        if c.headroom is None and c.situations and c.instance_set == DEFAULT_INSTANCE_SET:
            c.headroom = defaults.headroom
        c.workers = min(defaults.workers, usable_cpus()) if c.workers is None else c.workers
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
            c.methods = [m for m in default_methods(distill.knowledge) if m not in defaults.leave_out]
            if c.action_mode == "mask":
                c.methods = [m for m in c.methods if m != "random_soft"]  # soft weights need action_mode=weights
        if c.transfer_checkpoint is not None and TRANSFER not in c.methods:
            c.methods = [*c.methods, TRANSFER]
        if TRANSFER in c.methods and c.transfer_checkpoint is None:
            raise ValueError(f"method {TRANSFER!r} needs transfer_checkpoint (--transfer-checkpoint DIR: an agent "
                             f"checkpoint folder)")
        if c.action_mode == "mask" and "random_soft" in c.methods:
            raise ValueError("method random_soft needs action_mode 'weights' (it outputs soft weights)")
        valid = [*valid_methods(distill.knowledge), TRANSFER]
        agents = {a.partition(":")[0] for a in agent_names()}  # any registered agent: schedule:<file>, a plug-in's
        bad = [m for m in c.methods if m not in valid and m.partition(":")[0] not in agents]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; valid: {valid}, or a registered agent: {agent_names()}")
        learners = [m for m in c.methods if m not in valid and _learns(m.partition(":")[0])]
        if learners:
            raise ValueError(f"method(s) {learners} learn, and a baseline method is played without training; "
                             f"make a learner the selector (--agent {learners[0]}) or pass methods that do not "
                             f"learn (fixed masks, schedules, baselines)")
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
            c.name = (f"glue_ac-{c.preset}-situations" if c.situations else
                      f"glue_ac-{c.preset}-{c.situation}" if c.situation else
                      f"glue_ac-{c.preset}-{Path(str(distill.task)).stem}")
        return c

    def situation_set(self) -> Any:
        """The :class:`kd_env.InstanceSet` of ``situation`` / ``situations``."""
        from kd_env import get_instance_set

        return get_instance_set(self.instance_set or DEFAULT_INSTANCE_SET)

    def situation_overrides(self) -> dict[str, Any]:
        """The situation's DistillConfig overrides (``{}`` without a situation)."""
        return {} if self.situation is None else dict(self.situation_set().instance(self.situation).overrides)

    def check_situations(self) -> None:
        """``ValueError`` for an unknown instance set or situation (listing the valid ones), a
        set over a preset of another task, or a ``distill`` setting that contradicts the
        situation."""
        if self.situation is not None and self.situations:
            raise ValueError(f"pass situation ({self.situation!r}) or situations ({self.situations}), not both")
        names = [self.situation] if self.situation is not None else list(self.situations or [])
        if self.instance_set is not None and not names:
            raise ValueError(f"instance_set {self.instance_set!r} needs a situation (--situation NAME or "
                             f"--situations A,B)")
        if not names:
            return
        sset = self.situation_set()
        unknown = [n for n in names if n not in sset.names]
        if unknown:
            raise ValueError(f"unknown situation(s) {unknown} of instance set {sset.name!r}; valid: {sset.names}")
        if len(set(names)) != len(names):
            raise ValueError(f"situations named twice in {names}")
        base_task, task = get_preset(sset.base).task, get_preset(self.preset_defaults().distill).task
        if base_task != task:
            raise ValueError(f"instance set {sset.name!r} describes situations over preset {sset.base!r} (task "
                             f"{base_task}); preset {self.preset!r} has task {task}: pass --preset {sset.base} (or "
                             f"leave --preset out), or another --instance-set")
        for name in names:
            overrides = dict(sset.instance(name).overrides)
            situation = get_preset(self.preset_defaults().distill, **overrides)
            asked = get_preset(self.preset_defaults().distill, **{**overrides, **self.distill})  # values as DistillConfig reads them
            clash = [k for k in self.distill
                     if (k in SITUATION_KEYS or k in overrides) and getattr(asked, k) != getattr(situation, k)]
            if clash:
                theirs = ", ".join(f"{k} {getattr(situation, k)!r}" for k in clash)
                mine = ", ".join(f"{k} {self.distill[k]!r}" for k in clash)
                raise ValueError(f"{mine} contradicts situation {name!r} of {sset.name!r} ({theirs}); a situation "
                                 f"sets these itself: leave them out, or pick another situation")

    def distill_config(self) -> DistillConfig:
        """The preset, then the situation's overrides, then ``distill``."""
        return get_preset(self.preset_defaults().distill, **{**self.situation_overrides(), **self.distill})

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


def _learns(name: str) -> bool:
    """Whether registered agent ``name`` is a class that overrides :meth:`agents.base.Agent.learn`
    (a factory function cannot be told without building it: counted as not learning)."""
    import inspect

    from agents.base import AGENT_REGISTRY, Agent

    factory = AGENT_REGISTRY.get(name)
    return inspect.isclass(factory) and issubclass(factory, Agent) and factory.learn is not Agent.learn


def method_agent_name(method: str, knowledge: Sequence[str]) -> str:
    """The agents.make_agent name of a baseline method."""
    if method.startswith("only:"):
        return "fixed:" + "".join("1" if k == method[5:] else "0" for k in knowledge)
    return method

