"""The distillation config.  One config type, :class:`DistillConfig`, for everything the
distiller and the environment need; beside it the named presets, ready-made instances of it
(:func:`get_preset`, :func:`preset_names`):

=========  =======================================================================================
preset     what it is
=========  =======================================================================================
quick      digits, tiny budget: seconds per episode; smoke tests and CI
digits     digits, MLP teacher (3x128) -> MLP student (2x32); the fast env for RL benchmarking
text       rt-polarity (embedded real text), fine-tuned MiniLM-L6 teacher (6 layers) -> 2-layer student
text3      the same, 6 -> 3 layers (half the teacher's depth, the paper's shape); the demo's default
paper      BERT-base teacher -> 6-layer student on a GLUE task (hub or ``data_dir``); GPU if any
=========  =======================================================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .knowledge import DEFAULT_KNOWLEDGE
from .runtime import PRECISIONS

__all__ = ["DistillConfig", "PRESETS", "get_preset", "preset_names"]


#: integer fields that must be positive, and the learning rates: checked by DistillConfig.validate
_POSITIVE = ("student_layers", "batch_size", "total_steps", "steps_per_action", "dev_probe_size", "eval_batch_size",
             "teacher_batch_size", "max_len", "student_hidden")
_VALIDATED = (*_POSITIVE, "lr", "teacher_lr", "knowledge", "labels", "knowledge_params")


@dataclass
class DistillConfig:
    """Everything that defines a distillation run (and so one environment instance)."""

    # task and models
    task: str = "rt-polarity"
    """task name (``rt-polarity``, ``digits``, a GLUE task) or a path to a CSV/TSV"""
    data_dir: str | None = None
    """local GLUE folder (``<TASK>/train.tsv``, ``dev.tsv``); no hub needed"""
    labels: tuple[str, ...] | None = None
    """class names of a CSV/TSV task in class-id order (None: integer labels are the ids, class
    names get ids in sorted order)"""
    teacher: str = "minilm-l6"
    """HF model name or local folder; ``minilm-l6`` is the bundled pre-trained MiniLM; ``mlp`` for
    feature tasks"""
    trust_remote_code: bool = False
    """allow HF models that ship their own code (off: a model folder cannot run code)"""
    student_layers: int = 2
    """student depth (transformer layers, or MLP layers)"""
    layer_strategy: str = "skip"
    """which teacher layer each student layer learns from: ``skip``, ``first``, ``last``"""
    student_init: str = "first"
    """which pre-trained layers initialise the student: ``first``, ``skip``, ``last``"""
    pooling: str = "cls"
    """how teacher and student read a sentence vector to classify (text): ``cls`` (the first
    token, BERT's way) or ``mean`` (the mean of the real tokens, the way sentence-transformers
    models such as the bundled all-MiniLM-L6-v2 were trained); ``feature`` knowledge matches
    the same vectors"""
    student_init_from: str = "pretrained"
    """``pretrained`` (the teacher's pre-trained checkpoint) or ``teacher`` (the fine-tuned one)"""
    freeze_embeddings: bool = False
    """keep the student's pre-trained token embeddings fixed (text students; the embedding matrix
    is most of a small student's parameters, and its update ~15% of a step on a CPU)"""
    teacher_hidden: tuple[int, ...] = (128, 128, 128)
    """MLP teacher widths (feature tasks)"""
    student_hidden: int = 32
    """MLP student width (feature tasks)"""
    # knowledge
    knowledge: tuple[str, ...] = DEFAULT_KNOWLEDGE
    """knowledge types, in action-bit order"""
    knowledge_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """per-knowledge parameters, e.g. ``{"response": {"temperature": 4}}``"""
    # student training
    max_len: int = 64
    """token truncation length"""
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    total_steps: int = 40
    """optimizer steps per episode (the budget)"""
    steps_per_action: int = 8
    """optimizer steps per phase (one env step)"""
    length_grouping: int = 0
    """text: build each epoch's batches from examples of similar length, so that dynamic padding
    pads little: the shuffled order is cut into megabatches of this many batches, each sorted by
    length and cut into batches, whose order is shuffled (as ``group_by_length`` in HF Trainer).
    0 or 1: plain random batches (every preset).  On rt-polarity random batches of 16 hold 1.78x
    the real tokens, batches grouped by 16 1.06x (0.58x the step time of the 3-layer student),
    but over 5 paired seeds grouping cost the text3 students that mix knowledge types 0.6-2.0
    points of test accuracy (README "bf16 students, and why batches are not grouped by length"),
    so no preset uses it"""
    train_examples: int | None = 2048
    """distil on the first N examples of a seeded shuffle of train (None: all); bounds the cache"""
    dev_probe_size: int = 200
    """examples in the fixed, seeded dev probe used for rewards"""
    # the situation the student is distilled in (instance axes)
    label_fraction: float = 1.0
    """share of the distillation set that has gold labels (a fixed, seeded subset); the finetune
    loss is masked per example, the teacher's outputs stay available on every example"""
    label_noise: float = 0.0
    """share of the student's gold labels flipped to another class (exact count, seeded,
    symmetric); the teacher, the dev probe and the test split keep clean labels"""
    teacher_train_fraction: float = 1.0
    """share of the training split the teacher is fine-tuned on (a seeded subset; < 1 makes a
    weaker teacher)"""
    eval_batch_size: int = 128
    # teacher fine-tuning
    teacher_epochs: float = 1.0
    teacher_lr: float = 5e-5
    teacher_batch_size: int = 32
    teacher_max_steps: int | None = None
    """cap of the teacher's optimizer steps (over ``teacher_epochs`` and ``teacher_min_steps``)"""
    teacher_min_steps: int = 0
    """floor of the teacher's optimizer steps: the budget is ``max(teacher_epochs`` of steps, this),
    capped by ``teacher_max_steps``; it matters only on a small training set (the text presets: 150;
    one epoch of rt-polarity is 321 steps, a 460-example CSV's 15).  0: off, the epochs
    alone.  Part of the teacher's identity where it raises the budget
    (:func:`kd_env.teacher.teacher_budget`)"""
    teacher_patience: int = 0
    """early stopping of a teacher whose budget the floor ``teacher_min_steps`` raised: it is
    evaluated on (at most 512 examples of) dev about 10 times over the budget, keeps the best
    checkpoint and stops after this many evaluations in a row without a better dev metric.
    0: no early stopping (the whole budget, the last weights)"""
    teacher_length_grouping: int = 0
    """text: fine-tune the teacher on batches of examples of similar length (as ``length_grouping``
    does for the student: megabatches of this many batches, each sorted by length; 0 or 1: plain
    random batches).  Part of the teacher's identity"""
    precision: str = "auto"
    """numeric precision of teacher fine-tuning and teacher-cache building: ``fp32``, ``bf16``
    (autocast: matrix multiplies in bf16, fp32 weights and losses) or ``auto``: bf16 for a
    transformer teacher where it pays (a CPU reporting bf16 instructions, ``amx_bf16`` or ``avx512_bf16`` in
    /proc/cpuinfo; a GPU
    with bf16 support), else fp32; MLP teachers (digits) stay fp32 under ``auto`` (too small to
    gain).  Part of the teacher's identity: fp32 and bf16 teachers are cached apart, and the
    teacher summary records it.  The student's precision is ``student_precision``"""
    student_precision: str = "fp32"
    """numeric precision of the student's training steps: ``fp32``, ``bf16`` (autocast of the
    forward pass; weights, optimizer and knowledge losses stay fp32) or ``auto`` (bf16 for a
    transformer student where ``precision="auto"`` would pick bf16 for the teacher, else fp32).
    Evaluation precision is ``eval_precision``.  Part of the env's identity, not the teacher's"""
    eval_precision: str = "fp32"
    """numeric precision of the student's evaluations (the dev probe each phase, dev, test):
    ``fp32``, ``bf16`` (autocast) or ``auto`` (the student's resolved training precision).  On a
    CPU with AVX512-BF16 a bf16 evaluation of the text students takes a third of the fp32 time;
    their test accuracy moves by at most a few borderline examples (results/2026-12-08-text-step-speed.md).
    The teacher's own metrics are always fp32"""
    token_packing: bool = True
    """text students: run the encoder on the real tokens only, padding removed
    (:mod:`kd_env.packed`; the same arithmetic, up to float rounding), where the model's layout
    allows it (BERT-style encoders without attention maps); False: the model's own padded forward"""
    # run
    seed: int = 0
    """seed of splits, subsampling, the dev probe and teacher fine-tuning"""
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``"""
    cache_dir: str | None = None
    """cache root (default ``$KD_ENV_CACHE`` or ``~/.cache/kd_env``)"""
    use_teacher_cache: bool = True
    """read teacher outputs from the on-disk cache (False: run the teacher every step)"""
    verify_cache: str = "full"
    """check of the teacher cache at open: ``full`` (checksums) or ``size``"""
    progress: bool = True
    """tqdm progress bars"""
    threads: int | None = None
    """torch intra-op threads set when the distiller is built (None: torch's default, but at most
    the CPUs this process may use, so that it cannot oversubscribe them). One thread is much
    faster for the tiny digits MLPs, and makes results independent of the core count"""
    deterministic: bool = False
    """``torch.use_deterministic_algorithms(True)`` (and the cuBLAS workspace setting): removes
    the GPU kernels' nondeterminism; CPU runs with a fixed thread count are already repeatable"""

    def __post_init__(self) -> None:
        self._check_types()
        self.knowledge = tuple(self.knowledge)
        self.teacher_hidden = tuple(int(x) for x in self.teacher_hidden)
        self.labels = None if self.labels is None else tuple(self.labels)
        self.validate()

    def _check_types(self) -> None:
        """``ValueError`` naming the field when a value has the wrong type (a config file typo such
        as ``knowledge: 5`` or ``total_steps: "10"``), before anything converts it."""
        from .checks import check_types, type_hints
        from .knowledge import knowledge_names

        knowledge = self.knowledge
        if isinstance(knowledge, str) or not isinstance(knowledge, (list, tuple)) or \
                not all(isinstance(k, str) for k in knowledge):
            raise ValueError(f"config.knowledge must be a list of knowledge type names, got {knowledge!r}; "
                             f"valid names: {knowledge_names()}")
        labels = self.labels
        if labels is not None and (isinstance(labels, str) or not isinstance(labels, (list, tuple))
                                   or len(labels) < 2 or not all(isinstance(x, str) and x.strip() for x in labels)
                                   or len(set(labels)) != len(labels)):
            raise ValueError(f"config.labels must be None or a list of at least 2 distinct, non-empty class names "
                             f"in class-id order, e.g. ['neg', 'pos'], got {labels!r}")
        if not isinstance(self.knowledge_params, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in self.knowledge_params.items()):
            raise ValueError(f"config.knowledge_params must map knowledge names to parameter mappings, e.g. "
                             f"{{'response': {{'temperature': 4}}}}, got {self.knowledge_params!r}")
        # the sizes and learning rates get validate()'s messages ("a positive integer", "> 0")
        hints = {name: hint for name, hint in type_hints(DistillConfig).items() if name not in _VALIDATED}
        check_types(self, hints, "config.")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and what is valid."""
        for name in _POSITIVE:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"config.{name} must be a positive integer, got {v!r}")
        for name in ("lr", "teacher_lr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"config.{name} must be > 0, got {v!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"config.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.steps_per_action > self.total_steps:
            raise ValueError(f"config.steps_per_action ({self.steps_per_action}) exceeds config.total_steps "
                             f"({self.total_steps})")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"config.label_fraction must be in (0, 1], got {self.label_fraction}")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"config.label_noise must be in [0, 1), got {self.label_noise}")
        if not 0 < self.teacher_train_fraction <= 1:
            raise ValueError(f"config.teacher_train_fraction must be in (0, 1], got {self.teacher_train_fraction}")
        if not self.teacher_epochs > 0:
            raise ValueError(f"config.teacher_epochs must be > 0, got {self.teacher_epochs}")
        for name in ("teacher_min_steps", "teacher_patience"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"config.{name} must be an integer >= 0 (0: off), got {v!r}")
        if self.teacher_max_steps is not None and (not isinstance(self.teacher_max_steps, int)
                                                   or isinstance(self.teacher_max_steps, bool)
                                                   or self.teacher_max_steps <= 0):
            raise ValueError(f"config.teacher_max_steps must be a positive integer or None, got "
                             f"{self.teacher_max_steps!r}")
        if not isinstance(self.length_grouping, int) or isinstance(self.length_grouping, bool) \
                or self.length_grouping < 0:
            raise ValueError(f"config.length_grouping must be an integer >= 0 (batches per length-sorted "
                             f"megabatch; 0 or 1: off), got {self.length_grouping!r}")
        if not isinstance(self.teacher_length_grouping, int) or isinstance(self.teacher_length_grouping, bool) \
                or self.teacher_length_grouping < 0:
            raise ValueError(f"config.teacher_length_grouping must be an integer >= 0 (batches per length-sorted "
                             f"megabatch; 0 or 1: off), got {self.teacher_length_grouping!r}")
        if self.train_examples is not None and self.train_examples <= 0:
            raise ValueError(f"config.train_examples must be positive or None, got {self.train_examples}")
        choices = {"layer_strategy": ("skip", "first", "last"), "student_init": ("skip", "first", "last"),
                   "student_init_from": ("pretrained", "teacher"), "verify_cache": ("full", "size"),
                   "pooling": ("cls", "mean"), "precision": PRECISIONS,
                   "student_precision": PRECISIONS, "eval_precision": PRECISIONS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"config.{name} must be one of {list(valid)}, got {getattr(self, name)!r}")
        if not self.knowledge:
            raise ValueError("config.knowledge must name at least one knowledge type")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads <= 0):
            raise ValueError(f"config.threads must be a positive integer or None, got {self.threads!r}")
        from .data import check_task_name

        check_task_name(self.task)

    @property
    def num_phases(self) -> int:
        """Env steps per episode: ``ceil(total_steps / steps_per_action)``."""
        return -(-self.total_steps // self.steps_per_action)

    def replace(self, **changes: Any) -> "DistillConfig":
        """A copy with ``changes`` applied (unknown keys are an error listing the valid ones)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["knowledge"] = list(self.knowledge)
        d["teacher_hidden"] = list(self.teacher_hidden)
        d["labels"] = None if self.labels is None else list(self.labels)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DistillConfig":
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid: {cls.field_names()}")
        return cls(**dict(data))


# --------------------------------------------------------------------------------------------
# The presets: ready-made configs
# --------------------------------------------------------------------------------------------

#: the text presets' teacher recipe (one teacher, shared by text and text3): one epoch on
#: length-grouped batches (megabatches of 16 batches of 32), the cold demo's slowest stage on a CPU
#: without bf16.  rt-polarity snippets are ~27 tokens, so random batches of 32 pad to ~1.8x their
#: real tokens.  Measured fp32, seed 0 (results/2026-12-05-demo-timing.md): 1.09 -> 0.68 CPU s per
#: step (1.6x, 1 thread); one epoch of random batches (the old recipe) dev 0.8226, test 0.8102;
#: grouped dev 0.8295, test 0.8094.  Shorter grouped runs kept dev (0.5 epoch at lr 1e-4: 0.8226;
#: 0.75 epoch: 0.8241) but lost ~1.1 points of test each (0.7990, 0.7966), so the epoch stays.
#: On a small set one epoch is a few steps and the teacher learns nothing (issue 39: 460 examples,
#: 15 steps, the majority class), so the budget has a floor of 150 steps, early-stopped on dev
#: (patience 3): below one epoch of rt-polarity (321 steps) and convention-party (192), whose
#: teachers stay as they were (results/2026-12-08-teacher-small-data.md)
_TEXT_TEACHER: dict[str, Any] = {"teacher_length_grouping": 16, "teacher_min_steps": 150, "teacher_patience": 3}

PRESETS: dict[str, DistillConfig] = {
    "quick": DistillConfig(task="digits", teacher="mlp", student_layers=2, batch_size=64, lr=3e-3,
                           total_steps=40, steps_per_action=10, train_examples=None, dev_probe_size=200,
                           warmup_fraction=0.0, teacher_epochs=20, teacher_lr=3e-3, teacher_batch_size=64,
                           progress=False, threads=1),
    "digits": DistillConfig(task="digits", teacher="mlp", student_layers=2, batch_size=64, lr=3e-3,
                            total_steps=150, steps_per_action=10, train_examples=None, dev_probe_size=359,
                            warmup_fraction=0.0, teacher_epochs=20, teacher_lr=3e-3, teacher_batch_size=64,
                            progress=False, threads=1),
    # rt-polarity, fine-tuned MiniLM-L6 teacher; the student starts from the fine-tuned teacher's
    # first layers and both classify the mean of the real tokens (the bundled sentence-transformers
    # model was trained to be read that way; its [CLS] barely varies): measured, not guessed, by
    # `python -m experiments.student_settings` (README "Text students"), chosen on the dev probe.
    # Many small updates (batch 16, lr 5e-4) learn more than fewer large ones in the same budget.
    # Random batches, not length-grouped ones: grouping cost 0.6-2 points; the student's forward
    # pass under bf16 autocast where the CPU has bf16 instructions: 0.67x the step time, the same
    # accuracy over 5 paired seeds (README "bf16 students, and why batches are not grouped by length")
    "text": DistillConfig(freeze_embeddings=True, batch_size=16, lr=5e-4, total_steps=80, steps_per_action=16,
                          pooling="mean", student_init_from="teacher", student_precision="auto",
                          eval_precision="auto", **_TEXT_TEACHER),
    # the paper's shape, half the teacher's depth (BERT-base 12 -> BERT6): 6 -> 3; the demo's default
    "text3": DistillConfig(freeze_embeddings=True, batch_size=16, lr=5e-4, total_steps=80, steps_per_action=16,
                           pooling="mean", student_init_from="teacher", student_layers=3,
                           student_precision="auto", eval_precision="auto", **_TEXT_TEACHER),
    "paper": DistillConfig(task="sst2", teacher="bert-base-uncased", student_layers=6, max_len=128,
                           batch_size=32, lr=5e-5, total_steps=6000, steps_per_action=200,
                           train_examples=None, dev_probe_size=1000, teacher_epochs=3.0, teacher_lr=2e-5,
                           device="auto"),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides: Any) -> DistillConfig:
    """A copy of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {preset_names()}")
    return PRESETS[name].replace(**overrides)
