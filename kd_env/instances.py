"""Instance sets: the situations a student is distilled in.

The right knowledge depends on the situation: with few gold labels the teacher's outputs carry
what the labels do not; with noisy labels soft targets help and hard labels hurt; a weak teacher
makes its outputs a poor target.  An :class:`InstanceSet` is a named list of such situations,
each a set of :class:`~kd_env.config.DistillConfig` overrides over a base preset, with a fixed
split into *train* instances (seen while a policy learns) and *held-out* instances (only for
scoring).  DACBench builds its benchmarks the same way.

An env made with ``instances=<name>`` draws an instance at every ``reset()`` from its
``instance_split`` (seeded by the env's ``np_random``; ``reset(options={"instance": name})``
picks one), builds that instance's distiller once and keeps it, and reports the instance in
``info["instance"]``.  A policy sees only the training state, or with ``observation="observable"``
the training state plus what a user can compute about their situation
(:mod:`kd_env.situation`); the instance's true configuration is an oracle's input only
(``observation="oracle_situation"``).

=========================  ================================================================
set                        instances
=========================  ================================================================
``digits``                 digits preset; gold labels 100% / 25% / 5% of the distillation set x
                           clean or 40% flipped labels x a strong (0.96) or a weak (0.70) teacher
                           (12 instances, 4 held out)
``digits-validation``      the 8 train instances of ``digits`` alone, 3 of them set aside: choose an
                           agent's settings on these (train on 5, validate on the dev split of 3),
                           then run once on ``digits``
``digits-validation-b``    the same 8, a second fold: the 3 set aside are none of the first fold's
``digits-loo-<instance>``  the same 8, one set aside (8 sets: a leave-one-out cross-validation;
                           :func:`register_leave_one_out` makes them for any set)
``digits-dense``           the same axes, denser: gold labels 100/50/25/10/5% x 0/20/40% flipped
                           labels x a strong, a medium (0.83) or a weak teacher (45 instances; the
                           4 held-out instances of ``digits``, unchanged)
``digits-dense-fold<i>of4``  its 41 train instances alone, fold i of a 4-fold split set aside
                           (:func:`register_folds` makes such folds for any set)
``digits-between``         the 41 train instances of ``digits-dense``; held out the 24 situations
                           between its grid values: 70 / 35 / 15 / 7% labels x 10 / 30% flipped
                           labels x the three teachers (a larger test of carrying a policy over)
``digits-switch``          gold labels 50 / 30 / 15% x 20 / 35 / 50% flipped labels x the medium or
                           the weak teacher (18 train situations, config seed 0): where the right
                           knowledge changes during training (teacher first, gold labels later);
                           held out 12 *fresh* situations (40 / 20 / 10% labels x 25 / 45% noise x
                           the two teacher recipes), each with its own config seed (101-112): its
                           own data split, teacher, labelled subset and flipped labels, none shared
                           with a train situation (issue 27's pre-registered test)
``digits-switch-dev``      digits-switch's 18 train situations alone, 6 set aside: for choosing
                           settings and measuring headroom without the fresh test
``text``                   text preset (rt-polarity, MiniLM-L6); 100% / 5% labels x clean or 40%
                           noisy labels (4)
``text3-situations``       the demo's student (text3, 6 -> 3): rt-polarity clean, 5% labels, 10%
                           labels x 30% noise, 10% labels x a weak teacher (fine-tuned on 5% of
                           train); held out the second task, convention-party, clean and 10% x 30%
                           noise (6)
=========================  ================================================================

Add your own with :func:`register_instance_set`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .config import DistillConfig, get_preset
from .registry import Registry

__all__ = ["Instance", "InstanceSet", "INSTANCE_SETS", "register_instance_set", "get_instance_set",
           "instance_set_names", "INSTANCE_SPLITS", "FEATURE_FIELDS", "register_leave_one_out", "register_folds"]

#: which instances an env draws from
INSTANCE_SPLITS = ("train", "test", "all")

#: the config fields that describe a situation, and the feature each becomes (in [0, 1])
FEATURE_FIELDS = ("label_fraction", "label_noise", "teacher_train_fraction", "teacher_epochs", "student_hidden",
                  "student_layers")


@dataclass(frozen=True)
class Instance:
    """One situation: a name and the config overrides that make it."""

    name: str
    overrides: Mapping[str, Any]


@dataclass
class InstanceSet:
    """A named list of situations over a base preset, split into train and held-out instances.

    Args:
        name: registry name.
        base: the preset every instance starts from.
        instances: the situations (names unique).
        held_out: names of the held-out (test) instances; the others are train instances.
        description: one line for tables and ``--help``.
    """

    name: str
    base: str
    instances: Sequence[Instance]
    held_out: Sequence[str]
    description: str = ""

    def __post_init__(self) -> None:
        names = [i.name for i in self.instances]
        if len(set(names)) != len(names):
            raise ValueError(f"instance set {self.name!r}: duplicate instance names in {names}")
        unknown = [n for n in self.held_out if n not in names]
        if unknown:
            raise ValueError(f"instance set {self.name!r}: held-out names {unknown} are not instances; valid: {names}")
        if not self.train_names or not self.test_names:
            raise ValueError(f"instance set {self.name!r} needs at least one train and one held-out instance")
        valid = DistillConfig.field_names()
        for inst in self.instances:
            bad = sorted(set(inst.overrides) - set(valid))
            if bad:
                raise ValueError(f"instance {inst.name!r}: unknown config key(s) {bad}; valid: {valid}")
            if "knowledge" in inst.overrides:
                raise ValueError(f"instance {inst.name!r}: instances cannot change the knowledge types (the "
                                 f"action space)")

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.instances]

    @property
    def train_names(self) -> list[str]:
        return [n for n in self.names if n not in self.held_out]

    @property
    def test_names(self) -> list[str]:
        return [n for n in self.names if n in self.held_out]

    def split(self, which: str) -> list[str]:
        """Instance names of ``train``, ``test`` (held out) or ``all``."""
        if which not in INSTANCE_SPLITS:
            raise ValueError(f"instance split must be one of {list(INSTANCE_SPLITS)}, got {which!r}")
        return {"train": self.train_names, "test": self.test_names, "all": self.names}[which]

    def instance(self, name: str) -> Instance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise ValueError(f"unknown instance {name!r} of set {self.name!r}; valid: {self.names}")

    def config(self, name: str, base: DistillConfig | None = None) -> DistillConfig:
        """The full config of instance ``name`` (over ``base``, default the set's preset)."""
        base = base if base is not None else get_preset(self.base)
        return base.replace(**dict(self.instance(name).overrides))

    def features(self, name: str, base: DistillConfig | None = None) -> np.ndarray:
        """The instance's situation as numbers in [0, 1], one per :data:`FEATURE_FIELDS` entry
        (each field divided by its largest value over the set)."""
        configs = [self.config(n, base) for n in self.names]
        mine = self.config(name, base)
        out = []
        for f in FEATURE_FIELDS:
            top = max(float(getattr(c, f)) for c in configs)
            out.append(float(getattr(mine, f)) / top if top > 0 else 0.0)
        return np.asarray(out, dtype=np.float32)


INSTANCE_SETS: Registry = Registry("instance set")


def register_instance_set(instance_set: InstanceSet, overwrite: bool = False) -> InstanceSet:
    """Register an :class:`InstanceSet` under its name (usable as ``instances=<name>``)."""
    if instance_set.name in INSTANCE_SETS and not overwrite:
        raise ValueError(f"instance set {instance_set.name!r} is already registered; pass overwrite=True")
    INSTANCE_SETS[instance_set.name] = instance_set
    return instance_set


def instance_set_names() -> list[str]:
    return INSTANCE_SETS.names()


def get_instance_set(spec: str | InstanceSet) -> InstanceSet:
    if isinstance(spec, InstanceSet):
        return spec
    if spec not in INSTANCE_SETS:
        raise ValueError(f"unknown instance set {spec!r}; valid: {instance_set_names()}")
    return INSTANCE_SETS[spec]


def _grid(labels: Sequence[tuple[str, float]], noise: Sequence[tuple[str, float]],
          teachers: Sequence[tuple[str, dict]]) -> list[Instance]:
    out = []
    for lname, frac in labels:
        for nname, rate in noise:
            for tname, teacher in teachers:
                overrides: dict[str, Any] = {}
                if frac < 1:
                    overrides["label_fraction"] = frac
                if rate > 0:
                    overrides["label_noise"] = rate
                overrides.update(teacher)
                out.append(Instance("-".join(x for x in (lname, nname, tname) if x), overrides))
    return out


#: a weak digits teacher: fine-tuned on 3% of train (32 images) -- 0.70 dev accuracy against 0.96
#: for the strong one, so that its outputs are a poor target where gold labels are plentiful
WEAK_DIGITS_TEACHER = {"teacher_train_fraction": 0.03, "teacher_epochs": 150}

register_instance_set(InstanceSet(
    name="digits",
    base="digits",
    instances=_grid(labels=[("labels100", 1.0), ("labels25", 0.25), ("labels5", 0.05)],
                    noise=[("clean", 0.0), ("noisy40", 0.4)],
                    teachers=[("strong", {}), ("weak", WEAK_DIGITS_TEACHER)]),
    # a fixed pattern, set before any measurement: one held-out instance per label level plus one,
    # two clean and two noisy, two strong and two weak teachers; every axis value is also trained on
    held_out=["labels100-noisy40-strong", "labels25-clean-weak", "labels5-noisy40-weak", "labels5-clean-strong"],
    description="digits: gold-label share x label noise x teacher strength (12 instances, 4 held out)",
))

#: a digits teacher between the two: fine-tuned on 6% of train -- 0.83 dev accuracy, midway
#: between the weak (0.70) and the strong (0.96) one
MEDIUM_DIGITS_TEACHER = {"teacher_train_fraction": 0.06, "teacher_epochs": 120}

#: the three digits teachers of the denser sets, strongest first
_THREE_DIGITS_TEACHERS = [("strong", {}), ("medium", MEDIUM_DIGITS_TEACHER), ("weak", WEAK_DIGITS_TEACHER)]

register_instance_set(InstanceSet(
    name="digits-dense",
    base="digits",
    # the same three axes, each with values between those of `digits`: 5 label levels x 3 noise
    # levels x 3 teachers.  The held-out instances are exactly those of `digits` (same names,
    # configs and features: each axis keeps its largest value), so a policy trained here is
    # scored on the same situations, seeds and splits as one trained on `digits`
    instances=_grid(labels=[("labels100", 1.0), ("labels50", 0.5), ("labels25", 0.25), ("labels10", 0.1),
                            ("labels5", 0.05)],
                    noise=[("clean", 0.0), ("noisy20", 0.2), ("noisy40", 0.4)], teachers=_THREE_DIGITS_TEACHERS),
    held_out=list(INSTANCE_SETS["digits"].held_out),
    description="digits, a denser grid of the same axes: 5 label levels x 3 noise levels x 3 teachers "
                "(45 instances; the 4 of `digits` held out)",
))

_DENSE = INSTANCE_SETS["digits-dense"]
_BETWEEN = _grid(labels=[("labels70", 0.7), ("labels35", 0.35), ("labels15", 0.15), ("labels7", 0.07)],
                 noise=[("noisy10", 0.1), ("noisy30", 0.3)], teachers=_THREE_DIGITS_TEACHERS)
register_instance_set(InstanceSet(
    name="digits-between",
    base="digits",
    # a larger test of carrying a policy over to new situations, declared before any run on it:
    # the 41 train instances of `digits-dense`, unchanged and in the same order (so a policy trains
    # exactly as on `digits-dense`, and the features of every train instance are the same), and
    # held out every situation *between* its grid values: gold labels 70 / 35 / 15 / 7% (about the
    # geometric midpoints of 100/50/25/10/5) x 10 / 30% flipped labels (the midpoints of 0/20/40)
    # x the same three teachers = 24 situations no policy or fixed mask has been scored on
    instances=[i for i in _DENSE.instances if i.name in _DENSE.train_names] + _BETWEEN,
    held_out=[i.name for i in _BETWEEN],
    description="digits-dense's 41 train instances; held out the 24 situations between its grid values "
                "(70/35/15/7% labels x 10/30% noise x 3 teachers)",
))

_DIGITS = INSTANCE_SETS["digits"]
register_instance_set(InstanceSet(
    name="digits-validation",
    base="digits",
    instances=[i for i in _DIGITS.instances if i.name in _DIGITS.train_names],
    # for choosing an agent's settings before a run on `digits`: its 8 train instances only (no
    # held-out test instance), 3 of them set aside by a fixed pattern, set before any measurement
    # on them: one per label level, so that each level keeps a training instance, and both noise
    # levels and both teachers on each side
    held_out=["labels100-noisy40-weak", "labels25-clean-strong", "labels5-clean-weak"],
    description="the digits train instances only: 5 to train on, 3 set aside to validate on (selection runs)",
))

register_instance_set(InstanceSet(
    name="digits-validation-b",
    base="digits",
    instances=list(INSTANCE_SETS["digits-validation"].instances),
    # the second fold of the same 8 train instances, set before any run on it: 3 set aside, none of
    # them set aside by `digits-validation`, by the same pattern (one per label level, both noise
    # levels and both teachers on each side).  Three such folds exist; two of them set aside the
    # weak teacher with plentiful clean labels, the one instance left where a choice of knowledge
    # matters on dev (known from the fixed masks' dev scores); which of the two was taken by hand,
    # before any candidate had run on either.  Score a candidate on both folds: in the first, the
    # only train instance with few labels has a strong teacher, so a policy that reads the
    # instance's features cannot learn there what scarce labels and a weak teacher need
    held_out=["labels100-clean-weak", "labels25-noisy40-strong", "labels5-noisy40-strong"],
    description="the digits train instances only, a second fold: 5 to train on, the other 3 set aside",
))


def _register_set_aside(source: InstanceSet, name: str, held_out: Sequence[str], description: str) -> None:
    """Register ``source``'s train instances alone as ``name``, ``held_out`` of them set aside
    (a set already registered under ``name`` is kept if it sets aside the same instances)."""
    if name in INSTANCE_SETS:
        have = INSTANCE_SETS[name]
        if sorted(have.held_out) != sorted(held_out) or sorted(have.names) != sorted(source.train_names):
            raise ValueError(f"instance set {name!r} is already registered with other instances set aside "
                             f"({sorted(have.held_out)}, asked for {sorted(held_out)}); register the new folds "
                             f"under other names with register_instance_set")
    else:
        register_instance_set(InstanceSet(
            name=name, base=source.base, instances=[i for i in source.instances if i.name in source.train_names],
            held_out=list(held_out), description=description))


def register_leave_one_out(base: str) -> list[str]:
    """Register one instance set per train instance of ``base``, named ``<base>-loo-<instance>``:
    ``base``'s train instances only, that one set aside.  Scored with ``--eval-split
    held-out-dev``, the sets together are a leave-one-out cross-validation over the train
    instances, for choosing an agent's settings without a held-out (test) instance: each fit
    trains on all train instances but one, as close as selection gets to training on all of them
    and meeting the held-out ones.  Returns the names (already registered ones are kept)."""
    source = get_instance_set(base)
    names = []
    for left_out in source.train_names:
        name = f"{base}-loo-{left_out}"
        _register_set_aside(source, name, [left_out],
                            f"{base}'s train instances, {left_out} set aside (leave-one-out selection)")
        names.append(name)
    return names


def register_folds(base: str, k: int, seed: int = 0) -> list[str]:
    """Register a ``k``-fold cross-validation over the train instances of ``base``: ``k`` instance
    sets named ``<base>-fold<i>of<k>`` (i = 1..k), each ``base``'s train instances only, with
    the i-th fold set aside.  The folds are a seeded shuffle of the train instances cut into ``k``
    near-equal parts, so every train instance is set aside exactly once.  For sets too large for
    :func:`register_leave_one_out`; score with ``--eval-split held-out-dev``.  Returns the names
    (already registered ones are kept)."""
    source = get_instance_set(base)
    n = len(source.train_names)
    if not 2 <= k <= n:
        raise ValueError(f"register_folds({base!r}): k must be in [2, {n}] (the set has {n} train instances), "
                         f"got {k}")
    order = np.random.default_rng(seed).permutation(n)
    names = []
    for i, part in enumerate(np.array_split(order, k), start=1):
        name = f"{base}-fold{i}of{k}"
        held = [source.train_names[j] for j in sorted(part)]
        _register_set_aside(source, name, held, f"{base}'s train instances, fold {i} of {k} set aside "
                                               f"({len(held)} instances; cross-validated selection)")
        names.append(name)
    return names


register_leave_one_out("digits")
register_folds("digits-dense", 4)

register_instance_set(InstanceSet(
    name="text",
    base="text",
    instances=_grid(labels=[("labels100", 1.0), ("labels5", 0.05)], noise=[("clean", 0.0), ("noisy40", 0.4)],
                    teachers=[("", {})]),
    held_out=["labels5-noisy40"],
    description="rt-polarity: gold-label share x label noise (4 instances, 1 held out)",
))


#: where switching knowledge pays (measured before registering, on train situations and selection
#: seeds only: teacher knowledge first, gold labels later, results/2026-12-05-switching-headroom.md):
#: scarce, noisy labels and a teacher that is neither strong nor useless
_SWITCH_TEACHERS = [("medium", MEDIUM_DIGITS_TEACHER), ("weak", WEAK_DIGITS_TEACHER)]
_SWITCH_TRAIN = _grid(labels=[("labels50", 0.5), ("labels30", 0.3), ("labels15", 0.15)],
                      noise=[("noisy20", 0.2), ("noisy35", 0.35), ("noisy50", 0.5)], teachers=_SWITCH_TEACHERS)
_SWITCH_FRESH = [Instance(f"fresh{101 + i}-{inst.name}", {**inst.overrides, "seed": 101 + i}) for i, inst in
                 enumerate(_grid(labels=[("labels40", 0.4), ("labels20", 0.2), ("labels10", 0.1)],
                                 noise=[("noisy25", 0.25), ("noisy45", 0.45)], teachers=_SWITCH_TEACHERS))]
register_instance_set(InstanceSet(
    name="digits-switch",
    base="digits",
    # declared before any run on the fresh situations (git history: this commit precedes every
    # result on them); every fresh situation has its own config seed, so its digits split, teacher
    # (fine-tuned on its own seeded subset from its own initial weights), labelled subset, flipped
    # labels and dev probe differ from every train situation's (the 1797 images are shared: the
    # dataset has no others)
    instances=_SWITCH_TRAIN + _SWITCH_FRESH,
    held_out=[i.name for i in _SWITCH_FRESH],
    description="digits, scarce noisy labels x a medium or weak teacher (18 train situations); held out 12 "
                "fresh situations with their own seeds, splits and teachers",
))
register_instance_set(InstanceSet(
    name="digits-switch-dev",
    base="digits",
    instances=list(_SWITCH_TRAIN),
    # a fixed pattern set before any measurement on it: one per label level and noise level, both
    # teachers on each side
    held_out=["labels50-noisy20-medium", "labels50-noisy50-weak", "labels30-noisy35-medium",
              "labels30-noisy20-weak", "labels15-noisy50-medium", "labels15-noisy35-weak"],
    description="digits-switch's 18 train situations alone, 6 set aside (choosing settings, measuring headroom)",
))


#: a weak text teacher: MiniLM-L6 fine-tuned on 5% of rt-polarity's train (513 snippets, 16 steps:
#: one epoch, without the text presets' floor of steps, which would make it a strong one)
WEAK_TEXT_TEACHER = {"teacher_train_fraction": 0.05, "teacher_min_steps": 0}
register_instance_set(InstanceSet(
    name="text3-situations",
    base="text3",
    # declared before any measurement on them (issue 28): the demo's student (6 -> 3 layers) in the
    # situations where the literature says the choice of knowledge matters -- scarce gold labels,
    # noisy gold labels, a weak teacher -- on rt-polarity, and a second real text task
    # (convention-party) held out
    instances=[
        Instance("rt-clean", {}),
        Instance("rt-labels5", {"label_fraction": 0.05}),
        Instance("rt-labels10-noisy30", {"label_fraction": 0.1, "label_noise": 0.3}),
        Instance("rt-labels10-weak", {"label_fraction": 0.1, **WEAK_TEXT_TEACHER}),
        Instance("party-clean", {"task": "convention-party"}),
        Instance("party-labels10-noisy30", {"task": "convention-party", "label_fraction": 0.1, "label_noise": 0.3}),
    ],
    held_out=["party-clean", "party-labels10-noisy30"],
    description="text3 (6 -> 3): rt-polarity clean, scarce, scarce+noisy, weak teacher (4 train); "
                "held out the second task, convention-party, clean and scarce+noisy",
))
