"""Batched students: N copies of a feature-task env (DigitsKD) trained as one batched model in one
process, behind Gymnasium's :class:`~gymnasium.vector.VectorEnv` API.

A DigitsKD optimizer step is a handful of tiny matmuls, so one student per process spends its
time in Python and kernel launches, not arithmetic.  :class:`BatchedKDVectorEnv` keeps one
ordinary :class:`~kd_env.env.KnowledgeSelectionEnv` per copy for everything that happens once
per phase or episode (resets, instances, observations, rewards, infos, the data order of each
student), and trains the N students of a phase together: their parameters are stacked into
``(N, ...)`` tensors, every linear layer is one batched matmul (``torch.baddbmm``), every
knowledge loss is computed for all N students at once, and AdamW, gradient clipping and the
learning-rate schedule run on the stacked tensors with each student's own step count.  For the
built-in knowledge types the whole step (forward, every term, backward) is written out without
autograd (:class:`~kd_env.batched.handstep._HandStep`); a user's knowledge type trains through
autograd and its :meth:`~kd_env.knowledge.Knowledge.batched` form (by default its single form
mapped over the students with ``torch.func.vmap``).

Each copy keeps its own seed, situation (instance), mask, example weighting, data order and
crash handling, so N copies give what N single envs give with the same seeds, up to float
rounding (a batched matmul sums in another order than a single one): ``tests/test_vector_env.py``
compares every observation, reward and final metric within a stated tolerance.

Make one with ``gymnasium.make_vec("kd_env/DigitsKD-v0", num_envs=32)`` (the digits ids register
this class as their ``vector_entry_point``) or ``BatchedKDVectorEnv(32, config="digits", ...)``
with the arguments of :class:`~kd_env.env.KnowledgeSelectionEnv`.

The rooms: :mod:`~kd_env.batched.students` (:class:`StudentBatch`: the stacked MLP students and
their phases), :mod:`~kd_env.batched.table` (their data table), :mod:`~kd_env.batched.adamw`
(their AdamW and clipping), :mod:`~kd_env.batched.states` and :mod:`~kd_env.batched.losses` (the
students' and teacher's outputs and the built-in knowledge types' batched forms),
:mod:`~kd_env.batched.handstep` (the step written out), :mod:`~kd_env.batched.copies` (each copy's
:class:`~kd_env.phase_runner.PhaseRunner`), :mod:`~kd_env.batched.vector_env` (the vector env)
and :mod:`~kd_env.batched.lockstep` (independent drivers on its copies).
"""

from .copies import CopyPhases
from .lockstep import CopyEnv, Lockstep
from .losses import batched_knowledge_loss
from .states import StudentStates, TeacherStates
from .students import StudentBatch, check_batchable
from .vector_env import BatchedKDVectorEnv

__all__ = ["BatchedKDVectorEnv", "StudentBatch", "batched_knowledge_loss", "check_batchable", "StudentStates",
           "TeacherStates", "CopyPhases", "CopyEnv", "Lockstep"]
