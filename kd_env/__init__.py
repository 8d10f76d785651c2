"""kd_env: learning which knowledge to distil, as a Gymnasium environment.

Environments (``gymnasium.make``): ``kd_env/DigitsKD-v0`` (digits, MLPs; fast),
``kd_env/QuickKD-v0`` (digits, tiny budget), ``kd_env/TextKD-v0`` (rt-polarity, MiniLM-L6
teacher, 2-layer student), and the instance envs ``kd_env/DigitsKD-Instances-v0``,
``kd_env/DigitsKD-Switch-v0`` (where switching knowledge pays; the observable observation; 12 fresh
held-out situations), ``kd_env/DigitsKD-BetweenOracle-v0`` (an oracle: one mask per episode from the situation's
privileged true configuration; 24 held-out situations)
and ``kd_env/TextKD-Instances-v0`` (situations that differ: gold-label share, label noise, teacher
strength; see :mod:`kd_env.instances`).  Any :class:`DistillConfig` field can be passed to ``make``.
For stable-baselines3 on the weights mode, wrap the env in :class:`SymmetricWeights`
(``Box(-1, 1)`` actions).  ``gymnasium.make_vec(id, num_envs=N)`` on the digits ids
(:data:`BATCHED_ENV_IDS`) gives :class:`kd_env.batched.BatchedKDVectorEnv`: N students trained as
one batched model, the same episodes as N single envs.
"""

from __future__ import annotations

from .build import build_distiller
from .config import DistillConfig, get_preset, preset_names
from .data import TaskData, load_task
from .engine import Distiller, PhaseStats
from .env import KnowledgeSelectionEnv
from .instances import Instance, InstanceSet, get_instance_set, instance_set_names, register_instance_set
from .knowledge import (
    DEFAULT_KNOWLEDGE,
    Knowledge,
    knowledge_names,
    make_knowledge,
    register_example_weighting,
    register_knowledge,
)
from .metrics import compute_metrics
from .models import ModelOutputs
from .observations import Observation, observation_names, register_observation
from .phase_runner import PhaseRunner
from .rewards import Reward, register_reward, reward_names
from .state import ObservationPart, StateSpec, TrainingState
from .wrappers import SymmetricWeights

__version__ = "0.1.0"

ENV_IDS = {"kd_env/DigitsKD-v0": "digits", "kd_env/QuickKD-v0": "quick", "kd_env/TextKD-v0": "text"}

#: instance envs: an instance set over a preset, with a reward aligned with the final metric
INSTANCE_ENV_IDS = {
    "kd_env/DigitsKD-Instances-v0": {"config": "digits", "instances": "digits", "reward": "dev_metric_delta"},
    "kd_env/TextKD-Instances-v0": {"config": "text", "instances": "text", "reward": "dev_metric_delta"},
    # the demo's student (6 -> 3) in text situations where the choice of knowledge may matter
    # (scarce / noisy labels, a weak teacher, a second task; issue 28), on the observable situation
    "kd_env/Text3KD-Situations-v0": {"config": "text3", "instances": "text3-situations",
                                     "reward": "dev_metric_delta", "observation": "observable"},
    # learned selection from what a user can see (issue 27): 15 decisions per episode on the
    # training state plus the observable situation; trained on digits-switch's 18 situations, scored
    # once on its 12 fresh ones (results/2026-12-05-switch-preregistration.md)
    "kd_env/DigitsKD-Switch-v0": {"config": "digits", "instances": "digits-switch", "reward": "dev_metric_delta",
                                  "observation": "observable"},
    # privileged, an oracle: one mask per episode over the paper's four knowledge types plus Dynamic
    # KD's weighting, chosen from the situation's *true* configuration (no user has it); trained on digits-dense's 41
    # situations, scored on the 24 between its grid values (README, "A fifth test")
    "kd_env/DigitsKD-BetweenOracle-v0": {"config": "digits", "instances": "digits-between",
                                         "reward": "dev_metric_delta",
                                         "knowledge": ["finetune", "response", "feature", "relation", "uncertainty_kd"],
                                         "observation": "oracle_situation_only", "steps_per_action": 150},
}


#: the ids whose students are MLPs: ``gymnasium.make_vec(id, num_envs=N)`` gives a
#: :class:`~kd_env.batched.BatchedKDVectorEnv` (N students trained as one batched model)
BATCHED_ENV_IDS = ("kd_env/DigitsKD-v0", "kd_env/QuickKD-v0", "kd_env/DigitsKD-Instances-v0",
                   "kd_env/DigitsKD-BetweenOracle-v0", "kd_env/DigitsKD-Switch-v0")
BATCHED_VECTOR_ENTRY_POINT = "kd_env.batched:BatchedKDVectorEnv"


def register_envs() -> None:
    """Register the Gymnasium ids (harmless when called again)."""
    import gymnasium as gym

    for env_id, preset in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="kd_env.env:KnowledgeSelectionEnv", kwargs={"config": preset},
                         vector_entry_point=BATCHED_VECTOR_ENTRY_POINT if env_id in BATCHED_ENV_IDS else None)
    for env_id, kwargs in INSTANCE_ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="kd_env.env:KnowledgeSelectionEnv", kwargs=dict(kwargs),  # type: ignore[call-overload]
                         vector_entry_point=BATCHED_VECTOR_ENTRY_POINT if env_id in BATCHED_ENV_IDS else None)


register_envs()

__all__ = [
    "TaskData", "compute_metrics", "load_task",
    "Distiller", "PhaseStats", "build_distiller",
    "KnowledgeSelectionEnv", "PhaseRunner", "ENV_IDS", "INSTANCE_ENV_IDS", "BATCHED_ENV_IDS", "register_envs",
    "Instance", "InstanceSet", "get_instance_set", "instance_set_names", "register_instance_set",
    "register_example_weighting",
    "DEFAULT_KNOWLEDGE", "Knowledge", "knowledge_names", "make_knowledge", "register_knowledge",
    "ModelOutputs", "Observation", "observation_names", "register_observation",
    "DistillConfig", "get_preset", "preset_names",
    "Reward", "register_reward", "reward_names", "TrainingState", "StateSpec", "ObservationPart",
    "SymmetricWeights",
]
