"""The distillation engine: a student, its optimizer and schedule, a seeded data order, and one
training phase at a time with a chosen mix of knowledge.

:class:`Distiller` only trains and evaluates; :func:`kd_env.build.build_distiller` makes one from
a :class:`~kd_env.config.DistillConfig`.  Beside it: :mod:`kd_env.phase_stats` (what a phase
measured) and :mod:`kd_env.student_labels` (the labels the student sees in a situation).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .batching import BatchSampler, length_grouped_order, tokens_per_example
from .config import DistillConfig
from .example_weightings import check_example_weighting
from .knowledge import Knowledge
from .models import Student
from .phase_stats import PhaseStats, accumulate_prediction_stats
from .runtime import NO_TIMER, StepTimer, autocast, private_torch_rng
from .student_labels import student_label_view
from .task import TaskData
from .teacher import evaluate_model
from .teacher_cache import LiveTeacher, TeacherCache

__all__ = ["PhaseStats", "Distiller", "student_label_view"]


def weighted_sum(terms: dict[int, torch.Tensor], w: np.ndarray, active: list[int]) -> torch.Tensor:
    """``sum_k w[k] * terms[k]`` over ``active``, without the multiplications by 1 and the
    addition to 0 (exact in value and gradient: each is an autograd node fewer per step)."""
    total = None
    for i in active:
        term = terms[i] if w[i] == 1 else float(w[i]) * terms[i]
        total = term if total is None else total + term
    return total  # type: ignore[return-value]  # callers pass at least one active knowledge type


def lr_factor(config: DistillConfig, step: int) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based): linear warm-up over
    ``warmup_fraction`` of the budget, then linear decay to 0 at ``total_steps``."""
    warm, total = int(config.warmup_fraction * config.total_steps), config.total_steps
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


class Distiller:
    """Trains a student from a teacher's outputs with per-phase knowledge weights.

    Args:
        config: the run's configuration.
        task: the loaded task.
        train, dev, test: batch samplers over the distillation set, dev and test splits.
        student: the student (model + projections), in its initial state.
        teacher: a :class:`~kd_env.teacher.TeacherCache` or :class:`~kd_env.teacher.LiveTeacher`.
        knowledge: the knowledge types, in action order.
        fresh_student: re-draw every student weight at reset (MLPs) rather than the head only.
        device: where the student trains.
        teacher_metrics: the teacher's fine-tuning summary (dev/test metrics, time).
        layer_map: teacher hidden index for each student hidden index.
        teacher_model: the teacher itself (for evaluation and live comparisons; training reads
            ``teacher``, normally the cache).
    """

    def __init__(self, config: DistillConfig, task: TaskData, train: BatchSampler, dev: BatchSampler,
                 test: BatchSampler, student: Student, teacher: TeacherCache | LiveTeacher,
                 knowledge: Sequence[Knowledge], fresh_student: bool, device: torch.device,
                 teacher_metrics: dict[str, Any] | None = None, layer_map: Sequence[int] | None = None,
                 teacher_model: nn.Module | None = None, precision: str = "fp32", eval_precision: str = "fp32"):
        self.config = config
        self.precision = precision
        """``fp32`` or ``bf16``: the precision of the student's training forward pass (resolved
        ``config.student_precision``)"""
        self.eval_precision = eval_precision
        """``fp32`` or ``bf16``: the precision of the student's evaluations (resolved
        ``config.eval_precision``)"""
        self.task = task
        self.train_data, self.dev_data, self.test_data = train, dev, test
        self.student = student.to(device)
        self.teacher = teacher
        self.knowledge = list(knowledge)
        self.knowledge_names = [k.name for k in self.knowledge]
        self.fresh_student = fresh_student
        self.device = device
        self.teacher_metrics = teacher_metrics or {}
        self.layer_map = list(layer_map) if layer_map is not None else None
        self.teacher_model = teacher_model
        self.need_attentions = any(k.student_attentions for k in self.knowledge)
        self._initial_state = copy.deepcopy(self.student.state_dict())
        probe_rng = np.random.default_rng(config.seed + 7919)
        n_probe = min(config.dev_probe_size, len(dev))
        self.probe_indices = np.sort(probe_rng.choice(len(dev), size=n_probe, replace=False))
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._torch_rng: dict[str, torch.Tensor] = {}
        self.student_labels, self.label_mask = student_label_view(train.labels, task.num_labels, config)
        self.example_weighting: str | None = None
        self._weighting_fn: Any = None
        self.situation_cache: dict[str, Any] = {}
        """what :func:`kd_env.situation.observable_situation` computed once (shared by copies)"""
        self.step_timer: StepTimer | None = None
        """set a :class:`~kd_env.runtime.StepTimer` to time the parts of each training step"""
        self.reset(config.seed)

    def set_example_weighting(self, name: str | None) -> None:
        """Use the registered per-example weighting ``name`` from now on (``None``: none), e.g.
        ``"uncertainty"`` (Dynamic KD).  ``ValueError`` when it does not fit the knowledge in use."""
        self._weighting_fn = None if name is None else check_example_weighting(name, self.knowledge)
        self.example_weighting = name

    def _train_batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """The training batch of examples ``idx`` as the student sees it: gold labels replaced by
        the student's (possibly noisy) labels, and ``label_mask`` when only some are labelled."""
        batch = self.train_data.batch(idx)
        if self.student_labels is not None:
            batch["labels"] = torch.from_numpy(self.student_labels[idx])
        if self.label_mask is not None:
            batch["label_mask"] = torch.from_numpy(self.label_mask[idx])
        return {k: v.to(self.device) for k, v in batch.items()}

    # ---- the distiller's own random stream --------------------------------------------------
    @contextlib.contextmanager
    def own_rng(self):
        """Run a block on this distiller's own torch random stream (dropout, fresh weights).

        The process-wide torch RNG is saved and restored around the block, and the distiller's
        stream is carried from one block to the next, so two distillers, an agent sampling with
        torch, or user code calling ``torch.rand`` between phases change nothing here, and a
        pickled or ``state_dict`` copy continues exactly as the original.
        """
        cuda = self.device.type == "cuda"
        with private_torch_rng(device=self.device):
            if "cpu" in self._torch_rng:
                torch.set_rng_state(self._torch_rng["cpu"])
            if cuda and "cuda" in self._torch_rng:
                torch.cuda.set_rng_state(self._torch_rng["cuda"], self.device)
            try:
                yield
            finally:
                self._torch_rng = {"cpu": torch.get_rng_state()}
                if cuda:
                    self._torch_rng["cuda"] = torch.cuda.get_rng_state(self.device)

    def rng_state(self) -> dict[str, torch.Tensor]:
        """A copy of the distiller's torch random stream (``cpu``, and ``cuda`` on a GPU)."""
        return {k: v.clone() for k, v in self._torch_rng.items()}

    # ---- episode life cycle -----------------------------------------------------------------
    @property
    def num_knowledge(self) -> int:
        return len(self.knowledge)

    @property
    def total_steps(self) -> int:
        return self.config.total_steps

    @property
    def budget_left(self) -> int:
        return self.total_steps - self.step

    def reset(self, seed: int) -> None:
        """A freshly initialised student (seeded), a new optimizer and schedule, a new data order."""
        seed = int(seed)
        self._torch_rng = {}
        with self.own_rng():
            torch.manual_seed(seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(seed)
            self.student.load_state_dict(self._initial_state)
            self.student.reset_parameters(fresh_model=self.fresh_student)
        self.student.train()
        cfg = self.config
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, **self._optimizer_kernel())
        self._params = [p for p in self.student.parameters() if p.requires_grad]  # clipping order
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(cfg, s))
        self.rng = np.random.default_rng(seed)
        self._lengths = tokens_per_example(self.train_data) if cfg.length_grouping > 1 else None
        self.order = self._new_order()
        self.position = 0
        self.step = 0

    def _optimizer_kernel(self) -> dict[str, Any]:
        """How AdamW runs: text students take the fused kernel (one pass over all tensors: 2.7 vs
        17.8 ms per step for the 3-layer MiniLM student at one CPU thread, the same update up to
        float rounding; ``perf/text_step_speed.py``); MLP students keep ``foreach``, whose numbers
        the batched digits env reproduces (:mod:`kd_env.batched`)."""
        if self.task.kind == "text" and self.device.type in ("cpu", "cuda"):
            return {"fused": True}
        return {"foreach": True}  # the same numbers as the per-tensor loop, less Python per step

    def _new_order(self) -> np.ndarray:
        """A fresh epoch's example order: a seeded permutation, length-grouped into batches of
        similar length when ``config.length_grouping`` > 1."""
        order = self.rng.permutation(len(self.train_data))
        if self._lengths is None:
            return order
        return length_grouped_order(order, self._lengths, self.config.batch_size, self.config.length_grouping,
                                    self.rng)

    def _next_indices(self) -> np.ndarray:
        bs = self.config.batch_size
        if self.position + bs > len(self.order):
            self.order = self._new_order()
            self.position = 0
        idx = self.order[self.position : self.position + bs]
        self.position += bs
        return idx

    # ---- training ---------------------------------------------------------------------------
    def check_weights(self, weights: Sequence[float] | np.ndarray) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.num_knowledge,):
            raise ValueError(f"weights must have shape ({self.num_knowledge},) for knowledge "
                             f"{self.knowledge_names}, got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
        return w

    def train_phase(self, weights: Sequence[float] | np.ndarray, steps: int | None = None,
                    all_losses: bool = True) -> PhaseStats:
        """Run up to ``steps`` optimizer steps (default ``config.steps_per_action``, capped by the
        budget) with loss ``sum_k weights[k] * L_k``.

        Only terms with non-zero weight are backpropagated; with ``all_losses`` the other terms
        are still evaluated (no gradient) for reporting.  With all weights zero the student's
        parameters and the optimizer's moments are untouched; the budget and the learning-rate
        schedule still advance (the schedule stays in step with the budget).
        A non-finite loss or gradient stops the phase before any update: the student keeps its
        last finite state and ``crashed`` is set.
        """
        w = self.check_weights(weights)
        with self.own_rng():
            return self._train_phase(w, steps, all_losses)

    def _train_phase(self, w: np.ndarray, steps: int | None, all_losses: bool) -> PhaseStats:
        steps = self.config.steps_per_action if steps is None else int(steps)
        steps = max(0, min(steps, self.budget_left))
        start = time.perf_counter()
        active = [i for i in range(self.num_knowledge) if w[i] > 0]
        computed = list(range(self.num_knowledge)) if all_losses else active
        sums = np.zeros(self.num_knowledge)
        counts = np.zeros(self.num_knowledge)
        stats = {"total": 0.0, "ce": 0.0, "acc": 0.0, "kl": 0.0, "agree": 0.0, "ent": 0.0, "grad": 0.0}
        trained = 0
        crashed = False
        done = 0
        self.student.train()
        timer = self.step_timer or NO_TIMER
        for _ in range(steps):
            timer.start()
            batch = self._train_batch(self._next_indices())
            timer.mark("data")
            terms, values, student_out, teacher_out = self._losses(batch, active, computed, timer)
            done += 1
            if any(not math.isfinite(values[i]) for i in active):
                crashed = True
                break
            for i, v in values.items():
                if math.isfinite(v):  # an unselected term may be non-finite: reported, not trained
                    sums[i] += v
                    counts[i] += 1
            with torch.no_grad():
                accumulate_prediction_stats(stats, student_out.logits, teacher_out.logits, batch["labels"],
                                                  batch.get("label_mask"))
            timer.mark("statistics")
            if active:
                total = weighted_sum(terms, w, active)
                for p in self._params:  # optimizer.zero_grad(set_to_none=True) without its Python overhead
                    p.grad = None
                total.backward()
                timer.mark("backward")
                grad_norm = float(nn.utils.clip_grad_norm_(self._params, self.config.max_grad_norm, foreach=True))
                if not math.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    crashed = True
                    break
                self.optimizer.step()
                stats["total"] += float(total.detach())
                stats["grad"] += grad_norm
                trained += 1
                self.scheduler.step()
            else:
                self._advance_schedule()
            timer.mark("optimizer")
            self.step += 1
        if crashed:
            self.step += 1  # the crashing step is spent
        n = max(1, done - int(crashed))
        losses = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return PhaseStats(
            losses=losses, total_loss=stats["total"] / max(1, trained), student_ce=stats["ce"] / n,
            student_accuracy=stats["acc"] / n, teacher_kl=stats["kl"] / n, agreement=stats["agree"] / n,
            entropy=stats["ent"] / n, grad_norm=stats["grad"] / max(1, trained), steps=done,
            trained_steps=trained, seconds=time.perf_counter() - start, crashed=crashed)

    def _losses(self, batch: dict[str, torch.Tensor], active: list[int], computed: list[int], timer=NO_TIMER):
        """Forward the student once; the knowledge terms in ``computed`` (with gradient for
        ``active`` ones only) and their float values."""
        teacher_out = self.teacher.outputs(batch)
        timer.mark("teacher")
        with torch.set_grad_enabled(bool(active)):
            with autocast(self.precision, self.device):
                student_out = self.student(batch, attentions=self.need_attentions)
            student_out = student_out.float()  # knowledge losses in fp32 (a no-op in fp32)
            timer.mark("forward")
            example_weights: dict[str, Any] = {}
            if self._weighting_fn is not None:
                with torch.no_grad():
                    example_weights = self._weighting_fn(student_out, teacher_out, batch)
            terms: dict[int, torch.Tensor] = {}
            for i in computed:
                k = self.knowledge[i]
                with torch.set_grad_enabled(i in active and torch.is_grad_enabled()):
                    if k.name in example_weights:
                        terms[i] = k.weighted(student_out, teacher_out, batch, example_weights[k.name])
                    else:
                        terms[i] = k(student_out, teacher_out, batch)
        values = {i: float(t.detach()) for i, t in terms.items()}
        timer.mark("losses")
        return terms, values, student_out, teacher_out

    @torch.no_grad()
    def measure(self) -> PhaseStats:
        """Every knowledge loss and the prediction statistics on the next training batch, without
        training and without consuming budget or data (used for the initial observation).

        Measured as a phase measures them: in train mode (dropout on), so the initial observation
        means what later ones mean.  The distiller's random stream is not advanced, so the values
        are exactly those the first training step will see, and training is unchanged."""
        with self.own_rng():
            return self._measure()

    def _measure(self) -> PhaseStats:
        start = time.perf_counter()
        bs = self.config.batch_size
        idx = self.order[self.position : self.position + bs]
        if len(idx) < min(bs, len(self.order)):
            idx = self.order[:bs]
        batch = self._train_batch(idx)
        self.student.train()
        with private_torch_rng(device=self.device):  # the stream the first training step will draw from
            _, values, student_out, teacher_out = self._losses(batch, [], list(range(self.num_knowledge)))
        stats = {"ce": 0.0, "acc": 0.0, "kl": 0.0, "agree": 0.0, "ent": 0.0}
        accumulate_prediction_stats(stats, student_out.logits, teacher_out.logits, batch["labels"],
                                          batch.get("label_mask"))
        losses = np.asarray([values[i] for i in range(self.num_knowledge)], dtype=np.float64)
        return PhaseStats(losses=losses, total_loss=0.0, student_ce=stats["ce"], student_accuracy=stats["acc"],
                           teacher_kl=stats["kl"], agreement=stats["agree"], entropy=stats["ent"], grad_norm=0.0,
                           steps=0, trained_steps=0, seconds=time.perf_counter() - start,
                           crashed=not all(math.isfinite(v) for v in values.values()))

    def _trainable(self) -> list[tuple[str, torch.Tensor]]:
        """The student's parameters an update can change (frozen ones, such as a text student's
        word embeddings, cannot)."""
        return [(name, p) for name, p in self.student.named_parameters() if p.requires_grad]

    def snapshot_student(self) -> dict[str, torch.Tensor]:
        """A copy of what a phase can change in the student, to restore after a crash: its
        trainable parameters and its buffers (running statistics); frozen parameters are left
        out (a text student's word embeddings are most of its size)."""
        state = dict(self._trainable())
        state.update(self.student.named_buffers())
        return {name: t.detach().clone() for name, t in state.items()}

    def restore_student(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Put back the tensors of :meth:`snapshot_student`."""
        tensors: dict[str, torch.Tensor] = dict(self.student.named_parameters())
        tensors.update(self.student.named_buffers())
        unknown = sorted(set(snapshot) - set(tensors))
        if unknown:
            raise KeyError(f"the snapshot names tensors the student does not have: {unknown[:5]}")
        with torch.no_grad():
            for name, value in snapshot.items():
                tensors[name].copy_(value)

    def student_is_finite(self) -> bool:
        """Whether every trainable parameter is finite.  One sum per tensor (NaN and infinity
        carry into it) and an element-wise check only for a tensor whose sum is not finite (a sum
        of finite values can overflow)."""
        for _, p in self._trainable():
            if not torch.isfinite(p.detach().sum()) and not bool(torch.isfinite(p).all()):
                return False
        return True

    def _advance_schedule(self) -> None:
        """Move the learning-rate schedule one step on without an update (keeps it aligned with
        the budget; parameters and optimizer moments are untouched)."""
        sched = self.scheduler
        sched.last_epoch += 1
        for group, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, split: str = "probe") -> dict[str, float]:
        """Loss and task metrics of the student on ``probe`` (the fixed dev subset the env
        rewards on), ``dev`` or ``test``."""
        with self.own_rng():
            return self._evaluate(split)

    def _evaluate(self, split: str) -> dict[str, float]:
        with autocast(self.eval_precision, self.device):
            return self._evaluate_split(split)

    def _evaluate_split(self, split: str) -> dict[str, float]:
        if split == "probe":
            return evaluate_model(self.student, self.dev_data, self.task, self.device,
                                  self.config.eval_batch_size, indices=self.probe_indices)
        samplers = {"dev": self.dev_data, "test": self.test_data, "train": self.train_data}
        if split not in samplers:
            raise ValueError(f"unknown split {split!r}; valid: ['probe', 'dev', 'test', 'train']")
        return evaluate_model(self.student, samplers[split], self.task, self.device, self.config.eval_batch_size)

    @torch.no_grad()
    def cls_embeddings(self, batch_indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean final-layer [CLS] vectors of the student and of the teacher's mapped top layer on
        a batch (the paper's state)."""
        with self.own_rng():
            return self._cls_embeddings(batch_indices)

    def _cls_embeddings(self, batch_indices: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        idx = batch_indices if batch_indices is not None else self.order[max(0, self.position - self.config.batch_size): self.position]
        if len(idx) == 0:
            idx = np.arange(min(self.config.batch_size, len(self.train_data)))
        batch = {k: v.to(self.device) for k, v in self.train_data.batch(idx).items()}
        was = self.student.training
        self.student.eval()
        s = self.student.model(batch).cls.float().mean(0).cpu().numpy()
        self.student.train(was)
        t_out = self.teacher.outputs(batch)
        t = t_out.hidden[-1][:, 0].float().mean(0).cpu().numpy() if t_out.hidden else np.zeros(0, np.float32)
        return s, t

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training identically."""
        return {
            "student": copy.deepcopy(self.student.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "order": self.order.copy(),
            "position": self.position,
            "step": self.step,
            "torch_rng": self.rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.order = state["order"].copy()
        self.position = int(state["position"])
        self.step = int(state["step"])
        rng = state["torch_rng"]
        if isinstance(rng, torch.Tensor):  # a state saved before the distiller owned its stream
            rng = {"cpu": rng}
        self._torch_rng = {k: v.clone() for k, v in rng.items()}

    def close(self) -> None:
        self.teacher.close()
