"""What :class:`~kd_env.env.KnowledgeSelectionEnv` accepts, checked before anything changes: the
action modes and their spaces, an action against its space, and ``reset`` options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

__all__ = ["ACTION_MODES", "action_space", "validate_action", "check_reset_options"]

ACTION_MODES = ("mask", "weights")


def action_space(action_mode: str, k: int) -> spaces.Space:
    """The action space over ``k`` knowledge types: ``MultiBinary(k)`` (``mask``) or
    ``Box(0, 1, (k,), float32)`` (``weights``)."""
    return spaces.MultiBinary(k) if action_mode == "mask" else spaces.Box(0.0, 1.0, (k,), np.float32)


def validate_action(action: Any, space: spaces.Space, action_mode: str, knowledge_names: Sequence[str]) -> np.ndarray:
    """``action`` as float64 weights, or ``ValueError`` naming the expected ``space`` (the env's
    action space in ``action_mode``, over ``knowledge_names``)."""
    expected = (f"MultiBinary({space.n}): an array of {space.n} values, each 0 or 1, for knowledge "  # type: ignore[attr-defined]  # MultiBinary in mask mode
                f"{knowledge_names}" if action_mode == "mask" else
                f"Box(0, 1, ({space.shape[0]},), float32): {space.shape[0]} finite weights in [0, 1] for "  # type: ignore[index]  # a Box in weights mode
                f"knowledge {knowledge_names}")
    try:
        arr = np.asarray(action)
    except Exception as exc:  # noqa: BLE001 - ragged lists and the like
        raise ValueError(f"invalid action {action!r} ({exc}); expected {expected}") from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"invalid action dtype {arr.dtype}; expected {expected}")
    k = len(knowledge_names)
    if arr.shape != (k,):
        raise ValueError(f"invalid action shape {arr.shape}; expected {expected}")
    w = arr.astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"invalid action {arr.tolist()} (not finite); expected {expected}")
    if action_mode == "mask":
        if not np.all((w == 0) | (w == 1)):
            raise ValueError(f"invalid action {arr.tolist()} (not binary); expected {expected}")
    elif np.any(w < 0) or np.any(w > 1):
        raise ValueError(f"invalid action {arr.tolist()} (outside [0, 1]); expected {expected}")
    return w


def check_reset_options(options: Mapping[str, Any] | None,
                        last_start: tuple[str | None, int] | None) -> tuple[dict[str, Any], bool]:
    """``reset(options=...)`` checked: ``(the options as a dict without "replay", replay)``.  With
    ``replay``, the instance of the last reset (``last_start``: its instance and episode seed) is
    put in the options.  ``ValueError`` naming the valid keys or what cannot be combined."""
    valid = ["config", "example_weighting", "instance", "replay", "reward", "reward_params"]
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"reset options must be a dict or None, got {type(options).__name__} {options!r}; "
                         f"valid keys: {valid}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; valid: {valid}")
    replay = options.pop("replay", False)
    if replay not in (True, False):
        raise ValueError(f"reset option 'replay' must be True or False, got {replay!r}")
    if replay:
        if last_start is None:
            raise ValueError("reset option 'replay' needs a previous reset to replay")
        if options.get("config"):
            raise ValueError("reset option 'replay' cannot be combined with 'config' (the replayed start "
                             "fixes the config)")
        previous_instance = last_start[0]
        if options.get("instance") not in (None, previous_instance):
            raise ValueError(f"reset option 'replay' replays instance {previous_instance!r}; "
                             f"got instance={options['instance']!r}")
        if previous_instance is not None:
            options["instance"] = previous_instance
    return options, replay
