"""The checkpoint format of every agent: a folder with a JSON header and, for torch agents, the
weights::

    path/agent.json     the header: format, agent name, hyperparameters, the env's spaces
    path/weights.pt     torch.save of a dict of state_dicts (our torch agents), read back with
                        torch.load(..., weights_only=True): a pickle that would run code is refused
    path/model.zip      stable-baselines3's own archive (SB3 agents; parameters only are read back)

Each file is written atomically (temporary file, fsync, rename): old or new, never half.
:meth:`agents.Agent.save` / :meth:`agents.Agent.load` and :func:`agents.load_agent` use these.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from kd_env.io import atomic_write_bytes, atomic_write_text, json_default

__all__ = ["CheckpointError", "write_checkpoint", "read_header", "load_weights", "HEADER_FILE", "WEIGHTS_FILE",
           "CHECKPOINT_FORMAT"]

HEADER_FILE = "agent.json"
WEIGHTS_FILE = "weights.pt"
CHECKPOINT_FORMAT = "kd_env.agents/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (missing, malformed, unsafe, or for another env)."""


def write_checkpoint(path: str | os.PathLike, header: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Write ``state`` (``None``: no weights file) and then ``header`` into the folder ``path``
    (created; existing files replaced)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if state is not None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(folder / WEIGHTS_FILE, buffer.getvalue())
    text = json.dumps(header, indent=2, sort_keys=True, default=json_default)
    atomic_write_text(folder / HEADER_FILE, text + "\n")


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``agent.json`` of a checkpoint folder, or :class:`CheckpointError`."""
    folder = Path(path)
    file = folder / HEADER_FILE
    if not folder.is_dir():
        raise CheckpointError(f"no agent checkpoint at {str(path)!r}: expected a folder holding {HEADER_FILE}")
    if not file.is_file():
        raise CheckpointError(f"{str(path)!r} is not an agent checkpoint: {HEADER_FILE} is missing")
    try:
        header = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT or "agent" not in header:
        raise CheckpointError(f"{file} is not a {CHECKPOINT_FORMAT} header")
    return header


def load_weights(file: Path) -> dict[str, Any]:
    """``torch.load(file, weights_only=True)``; anything else (a pickle that would build
    arbitrary objects, a truncated file) raises :class:`CheckpointError`."""
    if not file.is_file():
        raise CheckpointError(f"checkpoint weights {str(file)!r} are missing")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refusing to load {str(file)!r}: not a weights-only torch checkpoint "
                              f"(torch.load(weights_only=True) failed: {first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{str(file)!r} does not hold a dict of state_dicts")
    return state
