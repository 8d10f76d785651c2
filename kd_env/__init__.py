"""kd_env: learning which knowledge to distil, as a Gymnasium environment."""

from __future__ import annotations

from .data import TaskData, compute_metrics, load_task
from .engine import Distiller, PhaseResult, build_distiller
from .knowledge import DEFAULT_KNOWLEDGE, Knowledge, knowledge_names, make_knowledge, register_knowledge
from .models import ModelOutputs
from .presets import DistillConfig, get_preset, preset_names

__version__ = "0.1.0"

__all__ = [
    "TaskData", "compute_metrics", "load_task",
    "Distiller", "PhaseResult", "build_distiller",
    "DEFAULT_KNOWLEDGE", "Knowledge", "knowledge_names", "make_knowledge", "register_knowledge",
    "ModelOutputs", "DistillConfig", "get_preset", "preset_names",
]
