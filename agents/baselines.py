"""Fixed and random knowledge selectors, as agents.

=================  ===========================================================================
name               action every phase
=================  ===========================================================================
finetune           only ``finetune`` (gold labels, no teacher)
vanilla_kd         ``finetune`` + ``response``
pkd                ``finetune`` + ``response`` + ``feature`` (patient KD)
all                every knowledge type of the env
random_hard        each bit 1 with probability 0.5 (seeded)
random_soft        weights uniform in [0, 1] (seeded; weights mode only)
fixed:<bits>       the given mask, e.g. ``fixed:1010`` (one bit per knowledge type, in order)
schedule:<file>    one action per phase from a YAML list of lists or a CSV of rows; the last
                   row repeats when the episode is longer
=================  ===========================================================================

Named baselines are resolved against the env's ``knowledge_names``, so they keep their meaning
when knowledge types are added or reordered (e.g. with ``attention``).  In weights mode the
masks are emitted as float weights (0.0 / 1.0).  ``learn`` does nothing.

A schedule file (YAML)::

    - [1, 1, 0, 0]     # phase 1: finetune + response
    - [1, 1, 1, 0]     # phase 2
    - [1, 0, 0, 0]     # phase 3 and every later phase

or CSV (an optional header row of knowledge names reorders the columns to the env's order)::

    finetune,response,feature,relation
    1,1,0,0
    1,1,1,0
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kd_env.checks import matches

from .base import Agent, check_env_example_weighting, register_agent

__all__ = ["FixedAgent", "RandomHardAgent", "RandomSoftAgent", "ScheduleAgent", "NAMED_MASKS", "read_schedule"]

#: named baselines -> the knowledge types they switch on
NAMED_MASKS: dict[str, tuple[str, ...] | None] = {
    "finetune": ("finetune",),
    "vanilla_kd": ("finetune", "response"),
    "pkd": ("finetune", "response", "feature"),
    "all": None,  # every knowledge type of the env
}


def _check_seed(seed: Any) -> int | None:
    if not matches(seed, int | None) or (seed is not None and seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return None if seed is None else int(seed)


class FixedAgent(Agent):
    """The same action every phase.

    Args:
        env: the env.
        mask: one value per knowledge type (0/1; in weights mode any value in [0, 1]).
        name: the registry name written to checkpoints (``fixed`` or a named baseline).
        seed: accepted for a uniform interface; unused.
        example_weighting: a registered per-example weighting switched on in every episode (as
            ``ac``'s hyperparameter of that name), e.g. ``"uncertainty"``: ``fixed:1100`` with it
            is ``dynamic_kd``.  The fixed masks a selector with that weighting must beat.
    """

    def __init__(self, env: Any, mask: Sequence[float], name: str = "fixed", seed: int | None = None,
                 example_weighting: str | None = None):
        super().__init__(env)
        self.name = name
        self.seed = _check_seed(seed)
        self.example_weighting = check_env_example_weighting(env, example_weighting)
        arr = np.asarray(mask, dtype=np.float64).reshape(-1)
        if arr.shape != (len(self.knowledge_names),):
            raise ValueError(f"mask has {arr.size} entries; this env has {len(self.knowledge_names)} knowledge types "
                             f"{self.knowledge_names}")
        _check_values(arr, self.action_mode, "mask")
        self.mask = arr

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        return self._format_action(self.mask) if self.action_mode == "mask" else self.mask.astype(np.float32)

    def hyperparameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bits": self.mask.tolist(), "seed": self.seed} if self.name == "fixed" else \
            {"seed": self.seed}
        if self.example_weighting is not None:
            out["example_weighting"] = self.example_weighting
        return out


def _check_values(arr: np.ndarray, action_mode: str, what: str) -> None:
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"{what} values must be in [0, 1], got {arr.tolist()}")
    if action_mode == "mask" and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{what} values must be 0 or 1 for a mask-mode env, got {arr.tolist()}")


def _named_factory(baseline: str):
    def factory(env: Any, seed: int | None = None) -> FixedAgent:
        from .base import selection_spec

        names = selection_spec(env).knowledge_names
        wanted = NAMED_MASKS[baseline]
        if wanted is None:
            mask = [1.0] * len(names)
        else:
            missing = [w for w in wanted if w not in names]
            if missing:
                raise ValueError(f"baseline {baseline!r} needs knowledge {list(wanted)}; this env has {names} "
                                 f"(missing {missing})")
            mask = [1.0 if n in wanted else 0.0 for n in names]
        return FixedAgent(env, mask, name=baseline, seed=seed)

    factory.__name__ = f"make_{baseline}"
    return factory


_DESCRIPTIONS = {
    "finetune": "gold labels only (CE), no teacher",
    "vanilla_kd": "finetune + response (soft teacher outputs)",
    "pkd": "finetune + response + feature (patient KD)",
    "all": "every knowledge type, every phase",
}
for _name in NAMED_MASKS:
    register_agent(_name, description=_DESCRIPTIONS[_name])(_named_factory(_name))


@register_agent("fixed", takes_argument=True, description="a fixed mask, e.g. fixed:1010 (bit k = knowledge k)")
def make_fixed(env: Any, argument: str | None = None, bits: Sequence[float] | str | None = None,
               seed: int | None = None, example_weighting: str | None = None) -> FixedAgent:
    """``fixed:<bits>`` (``argument``) or ``fixed`` with ``bits=[...]``; ``example_weighting``
    as :class:`FixedAgent`'s."""
    spec = bits if bits is not None else argument
    if spec is None or spec == "":
        raise ValueError("fixed needs a mask: 'fixed:1010' (one 0/1 per knowledge type)")
    if isinstance(spec, str):
        if not spec or any(c not in "01" for c in spec):
            raise ValueError(f"fixed:<bits> takes a string of 0s and 1s, got {spec!r}")
        values = [float(c) for c in spec]
    else:
        values = [float(v) for v in spec]
    from .base import selection_spec

    names = selection_spec(env).knowledge_names
    if len(values) != len(names):
        raise ValueError(f"fixed:{spec if isinstance(spec, str) else ''.join(str(int(v)) for v in values)} has "
                         f"{len(values)} bits; this env has {len(names)} knowledge types {names}")
    return FixedAgent(env, values, name="fixed", seed=seed, example_weighting=example_weighting)


class RandomHardAgent(Agent):
    """Each knowledge bit is 1 with probability ``p`` (independently, every phase).

    The generator is seeded once at construction and not re-seeded by :meth:`reset`, so
    successive episodes differ while two agents with the same seed produce the same sequence.
    ``deterministic=True`` does not change the draw (the randomness *is* the policy).

    Args:
        env: the env (mask or weights mode; weights get 0.0/1.0).
        seed: generator seed (``None``: fresh entropy).
        p: probability of each bit being 1.
    """

    name = "random_hard"

    def __init__(self, env: Any, seed: int | None = 0, p: float = 0.5):
        super().__init__(env)
        self.seed = _check_seed(seed)
        if not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = np.random.default_rng(self.seed)

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        bits = (self.rng.random(len(self.knowledge_names)) < self.p).astype(np.float64)
        return self._format_action(bits)

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed, "p": self.p}

    def _extra_header(self) -> dict[str, Any]:
        return {"rng_state": self.rng.bit_generator.state}

    def _load_extra_header(self, extra: dict[str, Any]) -> None:
        if "rng_state" in extra:
            self.rng.bit_generator.state = extra["rng_state"]


class RandomSoftAgent(RandomHardAgent):
    """Weights drawn uniformly in ``[0, 1]`` every phase (the paper's random-soft; seeded like
    :class:`RandomHardAgent`).  Weights mode only: a mask env raises ``ValueError``."""

    name = "random_soft"

    def __init__(self, env: Any, seed: int | None = 0):
        super().__init__(env, seed=seed)
        if self.action_mode != "weights":
            raise ValueError("random_soft draws weights in [0, 1] and needs action_mode='weights'; "
                             "use random_hard for a mask env")

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        return self.rng.random(len(self.knowledge_names)).astype(np.float32)

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed}


register_agent("random_hard", description="each bit 1 with p=0.5 every phase (seeded)")(RandomHardAgent)
register_agent("random_soft", description="uniform random weights every phase (seeded; weights mode)")(RandomSoftAgent)


def read_schedule(source: str | Path, knowledge_names: Sequence[str] | None = None) -> list[list[float]]:
    """Rows (one action per phase) from a YAML list of lists (``.yaml``/``.yml``) or a CSV file
    (any other suffix).  A CSV header of knowledge names reorders its columns to
    ``knowledge_names``.

    Raises:
        ValueError: unreadable file, empty schedule, non-numeric values or rows of unequal
            length.
    """
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"schedule file {str(source)!r} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"schedule file {str(source)!r} is not valid YAML: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(r, (list, tuple)) for r in data):
            raise ValueError(f"schedule file {str(source)!r} must hold a YAML list of lists (one per phase)")
        rows = [list(r) for r in data]
    else:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
        if rows and knowledge_names is not None and not _numeric_row(rows[0]):
            header = [c.strip() for c in rows[0]]
            if sorted(header) != sorted(knowledge_names):
                raise ValueError(f"schedule file {str(source)!r}: header {header} does not name the env's knowledge "
                                 f"types {list(knowledge_names)}")
            order = [header.index(n) for n in knowledge_names]
            rows = [[r[i] for i in order] if len(r) == len(header) else r for r in rows[1:]]
    if not rows:
        raise ValueError(f"schedule file {str(source)!r} holds no rows")
    try:
        out = [[float(v) for v in r] for r in rows]
    except (TypeError, ValueError):
        raise ValueError(f"schedule file {str(source)!r} holds non-numeric values") from None
    return out


def _numeric_row(row: Sequence[str]) -> bool:
    try:
        [float(c) for c in row]
        return True
    except ValueError:
        return False


class ScheduleAgent(Agent):
    """A hand-made curriculum: row ``i`` is the action of phase ``i`` (counted from
    :meth:`reset`); the last row repeats.

    Args:
        env: the env.
        rows: one action per phase (0/1 in mask mode; [0, 1] in weights mode).
        seed: accepted for a uniform interface; unused.
    """

    name = "schedule"

    def __init__(self, env: Any, rows: Sequence[Sequence[float]], seed: int | None = None):
        super().__init__(env)
        self.seed = _check_seed(seed)
        k = len(self.knowledge_names)
        arr = [np.asarray(r, dtype=np.float64).reshape(-1) for r in rows]
        if not arr:
            raise ValueError("a schedule needs at least one row")
        for i, r in enumerate(arr):
            if r.shape != (k,):
                raise ValueError(f"schedule row {i + 1} has {r.size} entries; this env has {k} knowledge types "
                                 f"{self.knowledge_names}")
            _check_values(r, self.action_mode, f"schedule row {i + 1}")
        self.rows = np.stack(arr)
        self.phase = 0

    def reset(self) -> None:
        self.phase = 0

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        row = self.rows[min(self.phase, len(self.rows) - 1)]
        self.phase += 1
        return self._format_action(row) if self.action_mode == "mask" else row.astype(np.float32)

    def hyperparameters(self) -> dict[str, Any]:
        return {"rows": self.rows.tolist(), "seed": self.seed}


@register_agent("schedule", takes_argument=True,
                description="one action per phase from a YAML/CSV file (last row repeats)")
def make_schedule(env: Any, argument: str | None = None, rows: Sequence[Sequence[float]] | None = None,
                  seed: int | None = None) -> ScheduleAgent:
    """``schedule:<file>`` (``argument``) or ``schedule`` with ``rows=[[...], ...]``."""
    from .base import selection_spec

    if rows is None:
        if not argument:
            raise ValueError("schedule needs a file: 'schedule:curriculum.yaml' (or rows=[[...], ...])")
        rows = read_schedule(argument, selection_spec(env).knowledge_names)
    return ScheduleAgent(env, rows, seed=seed)
