"""The ``transfer`` method: a selector loaded from an agent checkpoint (``--transfer-checkpoint``,
e.g. one trained only on digits situations) acting deterministically on this task with no
training episodes.

The checkpoint is checked twice: early, from its header alone, before any teacher is fine-tuned
(:func:`check_inputs`, :func:`check_checkpoint`: its agent, knowledge types, action mode and observation space against
the run's), and for good when it is loaded into the run's env (:func:`load_transfer`: network
shapes included).  Either failure is the checkpoint's own message plus a hint naming the
``--observation`` / ``--action-mode`` it was trained with.  Its students' rows carry the
checkpoint's fingerprint (:func:`checkpoint_fingerprint`), so a rerun with another checkpoint
redistils them instead of reusing the old ones.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents import load_agent
from agents.base import check_fits, check_known, observation_space_differences
from agents.checkpoints import CheckpointError, read_header
from kd_env import DistillConfig

if TYPE_CHECKING:
    from .config import ExperimentConfig

__all__ = ["check_inputs", "check_checkpoint", "load_transfer", "checkpoint_fingerprint", "observation_space_spec"]


def observation_space_spec(observation: str, knowledge: list[str]) -> dict | None:
    """The :func:`~kd_env.state.space_spec` of the space observation ``observation`` has in an
    env with ``knowledge``, as a checkpoint header records it, worked out from a
    :class:`~kd_env.state.StateSpec` without building the env; ``None`` when the observation
    needs more than the knowledge types (``cls``'s model widths, the instance oracles, a
    plug-in's)."""
    from kd_env.state import space_spec

    space = _observation_space(observation, knowledge)
    return None if space is None else space_spec(space)


def _observation_space(observation: str, knowledge: list[str]) -> Any:
    from kd_env.observations import make_observation
    from kd_env.state import StateSpec

    try:
        return make_observation(observation).space(StateSpec(knowledge_names=tuple(knowledge)))
    except Exception:  # noqa: BLE001 - any observation that reads more than the knowledge types
        return None


def _entries(saved: Any) -> str:
    if isinstance(saved, dict) and saved.get("shape"):
        return f"{saved['shape'][-1]} entries"
    found = re.findall(r"\((\d+),\)", saved if isinstance(saved, str) else "")  # a header from before issue 37
    return f"{found[-1]} entries" if found else "another shape"


def _matches(saved: Any, observation: str, knowledge: list[str]) -> bool:
    expected = _observation_space(observation, knowledge)
    return expected is not None and not observation_space_differences(saved, expected)


def _hint(header: dict[str, Any], knowledge: list[str]) -> str:
    """Which ``--observation`` / ``--action-mode`` the checkpoint was trained with, as far as its
    header tells."""
    from kd_env.observations import observation_names

    env = header.get("env") or {}
    saved = env.get("observation_space")
    matching = [name for name in observation_names() if saved and _matches(saved, name, knowledge)]
    parts = []
    if matching:
        parts.append(f"--observation {matching[0]}" + (f" (or {', '.join(matching[1:])})" if matching[1:] else ""))
    if env.get("action_mode"):
        parts.append(f"--action-mode {env['action_mode']}")
    if not parts:
        return "pass the --observation and --action-mode the checkpoint was trained with"
    return "the checkpoint was trained with " + " and ".join(parts) + ": pass the same"


def check_checkpoint(path: str, c: ExperimentConfig, distill: DistillConfig) -> None:
    """``ValueError`` (the CheckpointError's message and a hint) when the checkpoint at ``path``
    cannot act in this run's env: no checkpoint, an unknown agent, other knowledge types, another
    action mode or another observation space.  Reads only the header: nothing is built."""
    knowledge = list(distill.knowledge)
    try:
        header = read_header(path)
    except CheckpointError as exc:
        raise ValueError(f"--transfer-checkpoint {path}: {exc}") from None
    try:
        check_known(path, header)
        check_fits(path, header, knowledge, c.action_mode)
        env = header.get("env") or {}
        expected = _observation_space(c.observation, knowledge)
        saved = env.get("observation_space")
        if expected is not None and saved is not None and observation_space_differences(saved, expected):
            raise CheckpointError(f"checkpoint {path!r} was saved for another observation space ({_entries(saved)}) "
                                  f"than this run's observation {c.observation!r} "
                                  f"({_entries(observation_space_spec(c.observation, knowledge))})")
    except CheckpointError as exc:
        raise ValueError(f"--transfer-checkpoint {path}: {exc}; {_hint(header, knowledge)}") from None


def check_inputs(config: ExperimentConfig) -> None:
    """The run's input files that can be checked before any work, after the config validated
    (:meth:`ExperimentConfig.validate` reads no file): the transfer checkpoint's header against the
    run's agent, knowledge types, action mode and observation (:func:`check_checkpoint`).
    ``ValueError`` with a hint."""
    c = config.resolved()
    if c.transfer_checkpoint is not None:
        check_checkpoint(c.transfer_checkpoint, c, c.distill_config())


def load_transfer(c: ExperimentConfig, env: Any) -> Any:
    """The checkpoint's agent, loaded for ``env`` (no training); ``SystemExit`` with the
    CheckpointError's message and a hint when it does not fit."""
    try:
        return load_agent(str(c.transfer_checkpoint), env)
    except CheckpointError as exc:
        try:
            hint = _hint(read_header(c.transfer_checkpoint), list(env.unwrapped.distiller.knowledge_names))
        except CheckpointError:
            hint = "pass the --observation and --action-mode the checkpoint was trained with"
        raise SystemExit(f"error: --transfer-checkpoint {c.transfer_checkpoint}: {exc}; {hint}") from None


def checkpoint_fingerprint(path: str | Path) -> str:
    """SHA-256 of the checkpoint folder's files (names and bytes), the first 16 hex digits."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        digest.update(file.name.encode("utf-8") + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
