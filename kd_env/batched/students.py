"""N MLP students of one architecture and knowledge trained as one batched model: stacked
parameters ``(N, ...)``, one batched matmul per layer, every knowledge term for all N students at
once, and their phases' statistics as :meth:`~kd_env.engine.Distiller.train_phase` gives them."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..engine import Distiller
from ..metrics import compute_metrics
from ..models import MLPClassifier
from ..phase_stats import PhaseStats
from .adamw import _decays, _StackedAdamW
from .handstep import _HandStep
from .losses import _uncertainty, batched_knowledge_loss
from .states import StudentStates, TeacherStates
from .table import _DataTable

__all__ = ["StudentBatch", "check_batchable"]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W^T + b`` for every student: x (N, B, in), W (N, out, in), b (N, out)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _architecture(distiller: Distiller) -> tuple:
    """What must agree for two students to be stacked: parameter names and shapes, knowledge."""
    return (tuple((n, tuple(p.shape)) for n, p in distiller.student.named_parameters()),
            tuple(distiller.knowledge_names))


def check_batchable(distiller: Distiller) -> None:
    """``ValueError`` unless ``distiller`` trains an MLP student in fp32 without dropout (what the
    batched engine reproduces)."""
    model = distiller.student.model
    if not isinstance(model, MLPClassifier):
        raise ValueError(f"the batched env trains MLP students of feature tasks (digits); this config has a "
                         f"{type(model).__name__} student (task {distiller.config.task!r}): use gym.make or an "
                         f"async vector env")
    if model.dropout.p != 0:
        raise ValueError(f"the batched env trains students without dropout; this one has dropout {model.dropout.p}")
    if distiller.precision != "fp32":
        raise ValueError(f"the batched env trains in fp32; this config resolves student precision to "
                         f"{distiller.precision!r} (set student_precision='fp32')")
    if distiller.task.num_labels < 2:
        raise ValueError("the batched env supports classification tasks only")


class StudentBatch(_DataTable, _StackedAdamW):
    """The students of several distillers (same architecture and knowledge), trained together.

    The distillers stay the owners of everything but the training arithmetic: each keeps its own
    data order (``_next_indices``), step count, label view and example weighting.  Parameters
    and AdamW moments live here as ``(N, ...)`` tensors; :meth:`load` copies a freshly reset
    student in, :meth:`store` writes the trained ones back into the distillers' modules.  The
    data table is :class:`~kd_env.batched.table._DataTable`'s, the optimizer
    :class:`~kd_env.batched.adamw._StackedAdamW`'s and the step written out without autograd
    :class:`~kd_env.batched.handstep._HandStep`'s.

    Args:
        distillers: one per copy, all passing :func:`check_batchable`, same architecture.
        device: where the batched training runs (``"cpu"``, ``"cuda"``).
    """

    def __init__(self, distillers: Sequence[Distiller], device: str | torch.device = "cpu"):
        if not distillers:
            raise ValueError("StudentBatch needs at least one distiller")
        for d in distillers:
            check_batchable(d)
        arch = _architecture(distillers[0])
        for d in distillers[1:]:
            if _architecture(d) != arch:
                raise ValueError("the students of one batch must share architecture and knowledge types")
        self.device = _checked_device(device)
        self.distillers = list(distillers)
        self.n = len(distillers)
        first = distillers[0]
        self.knowledge = first.knowledge
        model = first.student.model
        assert isinstance(model, MLPClassifier)  # check_batchable
        self.layer_names = [(f"model.layers.{i}.weight", f"model.layers.{i}.bias") for i in range(len(model.layers))]
        self.projection_names = [None if isinstance(p, nn.Identity) else f"projections.{j}.weight"
                                 for j, p in enumerate(first.student.projections)]
        # every student's parameters are one row of `flat` (N, P); `params[name]` are (N, *shape)
        # views of it (leaves for autograd), so AdamW and clipping are a dozen ops on (N, P)
        named = [(n, p) for n, p in first.student.named_parameters() if p.requires_grad]
        # in a row, the parameters with weight decay first, then the others (each in the module's
        # order): the parameters AdamW steps alike sit side by side, one kernel tensor per run
        named = [x for x in named if _decays(*x)] + [x for x in named if not _decays(*x)]
        sizes = [p.numel() for _, p in named]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.flat = torch.zeros((self.n, int(starts[-1])), device=self.device)
        self.params: dict[str, torch.Tensor] = {}
        for (name, p), a, b in zip(named, starts[:-1], starts[1:]):
            view = self.flat[:, a:b].view(self.n, *p.shape)
            self.params[name] = view.requires_grad_(True)
        self._segments = list(zip(starts[:-1].tolist(), starts[1:].tolist()))  # each parameter's columns
        # weight decay as the Distiller's parameter groups have it: matrices yes, biases and norms no
        self._decay = [_decays(n, p) for n, p in named]
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        #: AdamW's step count per slot and parameter (PyTorch counts per parameter: one that got no
        #: gradient in a step, e.g. the head when only ``feature`` is chosen, is not stepped at all)
        self.adam_steps = np.zeros((self.n, len(named)), dtype=np.int64)
        self.grad_flat = torch.zeros_like(self.flat)
        self._step_counts = torch.zeros((self.n, len(named)), device=self.device)  # the same, for the fused kernel
        # per slot and parameter: views of the parameters, gradients, moments and step counts
        self._views = [[[t[i, a:b] for a, b in self._segments] for i in range(self.n)]
                       for t in (self.flat, self.grad_flat, self.exp_avg, self.exp_avg_sq)]
        self._views.append([[self._step_counts[i, q] for q in range(len(named))] for i in range(self.n)])
        self._zero_grads: list[torch.Tensor] | None = None  # the gradient of a parameter no chosen term reaches
        self._adam_views: dict[bytes, list[list[torch.Tensor]]] = {}  # AdamW's view lists by the (slot, parameter) runs they cover
        #: per slot: its distiller's learning rate, warm-up steps, total steps and weight decay
        self._schedule = np.zeros((self.n, 4))
        self._max_norm = torch.zeros(self.n, device=self.device)  # per slot: its gradient clipping norm
        self._reach: np.ndarray | None = None
        self._student_params: dict[int, tuple] = {}  # id(distiller) -> (distiller, its parameters in our order)
        self._init_table(first)  # each slot's distillation set, labels and probe (:class:`_DataTable`)
        for i, d in enumerate(self.distillers):
            self.load(i, d)
        #: the step written out without autograd, for the built-in knowledge (``None``: autograd)
        self._hand = _HandStep.plan(self)

    # ---- copies in and out ------------------------------------------------------------------
    def load(self, i: int, distiller: Distiller) -> None:
        """Copy ``distiller``'s (freshly reset) student into slot ``i`` and zero its AdamW state
        (a reset distiller has a new optimizer)."""
        # (a distiller reset in place keeps its student's architecture)
        if distiller is not self.distillers[i] and _architecture(distiller) != _architecture(self.distillers[0]):
            check_batchable(distiller)
            raise ValueError("a copy changed its student's architecture or knowledge types; the batched env "
                             "needs every instance to share them")
        self.distillers[i] = distiller
        with torch.no_grad():
            torch._foreach_copy_(self._views[0][i], [p.detach().reshape(-1) for p in self._student_views(i)])
            self.exp_avg[i].zero_()
            self.exp_avg_sq[i].zero_()
        self.adam_steps[i] = 0
        self._step_counts[i] = 0
        cfg = distiller.config  # its learning-rate schedule (lr_factor's constants)
        self._schedule[i] = (cfg.lr, int(cfg.warmup_fraction * cfg.total_steps), cfg.total_steps, cfg.weight_decay)
        self._max_norm[i] = cfg.max_grad_norm
        if self._source[i] is not distiller:
            self._load_data(i, distiller)

    def store(self, indices: Sequence[int] | None = None) -> None:
        """Write the trained parameters of slots ``indices`` (all) back into their distillers."""
        slots = range(self.n) if indices is None else indices
        with torch.no_grad():  # one kernel call for every parameter of every slot
            torch._foreach_copy_([p for i in slots for p in self._student_views(i)],
                                 [row for i in slots for row in self._views[0][i]])

    def _student_views(self, i: int) -> list[torch.Tensor]:
        """Slot ``i``'s distiller's student parameters, flattened views in our order (kept while
        the slot holds that distiller)."""
        d = self.distillers[i]
        hit = self._student_params.get(id(d))
        if hit is None or hit[0] is not d:
            named = dict(d.student.named_parameters())
            hit = (d, [named[n].view(-1) for n in self.params])
            self._student_params[id(d)] = hit
        return hit[1]


    # ---- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, targets: list[torch.Tensor] | None = None,
                inputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> StudentStates:
        """The students' outputs on ``x`` (N, B, in): logits (N, B, C) and hidden states
        (``targets``: the teacher's hidden states on the same batch, see :class:`StudentStates`;
        ``inputs``: ``||x||^2`` and ``x . targets[0]`` per example, read from the data table)."""
        p = self.params
        h = x
        hidden = [h]
        for w, b in self.layer_names:
            h = torch.relu(_linear(h, p[w], p[b]))
            hidden.append(h)
        logits = _linear(h, p["model.head.weight"], p["model.head.bias"])
        states = StudentStates(logits, hidden, [None if name is None else p[name] for name in self.projection_names],
                               targets)
        if inputs is not None and targets is not None:
            states.know(0, targets[0], *inputs)
        return states

    # ---- one phase ----------------------------------------------------------------------------
    def train_phase(self, weights: np.ndarray, steps: Sequence[int] | np.ndarray,
                    all_losses: bool = True) -> list[PhaseStats]:
        """One phase for every slot: slot i runs ``steps[i]`` optimizer steps (0: none) with
        loss ``sum_k weights[i, k] * L_k``, exactly as :meth:`Distiller.train_phase` does
        (the same data, crash rules, schedule and statistics); returns each slot's statistics."""
        start = time.perf_counter()
        dev = self.device
        n, k = self.n, len(self.knowledge)
        w = torch.as_tensor(weights, dtype=torch.float32, device=dev)
        budget = np.asarray(steps, dtype=np.int64)
        running = budget > 0
        selected = weights > 0  # (N, K)
        has_active = selected.any(1)
        computed = list(range(k)) if all_losses else [j for j in range(k) if selected[:, j].any()]
        grad_terms = [j for j in range(k) if selected[:, j].any()]
        hand = self._hand if all_losses else None
        rows = hand.uncertainty_rows() if hand is not None else None
        sums = np.zeros((n, k))
        counts = np.zeros((n, k))
        stats = {s: np.zeros(n) for s in ("total", "grad")}
        prediction_sums = np.zeros((n, len(_PREDICTION_STATS)))  # per slot, summed over the steps
        chosen = slice(None) if len(grad_terms) == k else grad_terms
        w_numpy = w.double().cpu().numpy()  # the weights as the step's float32 product reads them
        done = np.zeros(n, dtype=np.int64)
        trained = np.zeros(n, dtype=np.int64)
        crashed = np.zeros(n, dtype=bool)
        for step in range(int(budget.max(initial=0))):
            live = running & (step < budget) & ~crashed
            if not live.any():
                break
            batch, t_out = self._gather(live)
            if hand is not None:
                state = hand.forward(batch, t_out, rows)
                stacked, predictions = state.values, state.stats
            else:
                with torch.set_grad_enabled(bool(grad_terms)):
                    s_out = self.forward(batch["features"], t_out.hidden, t_out.input_moments)
                    terms = self._terms(s_out, t_out, batch, computed, grad_terms)
                stacked = torch.stack([terms[j] if j in terms else torch.full((n,), math.nan, device=dev)
                                       for j in range(k)], 1)  # (N, K)
                predictions = self._prediction_values(s_out, t_out, batch)
            read = torch.cat([stacked.detach(), predictions], 1).cpu().double().numpy()  # one copy to numpy
            values = read[:, :k]
            done += live
            finite = np.isfinite(values)
            crash_now = live & (selected & ~finite).any(1)
            crashed |= crash_now
            ok = live & ~crash_now
            sums[ok] += np.where(finite[ok], values[ok], 0.0)
            counts[ok] += finite[ok]
            prediction_sums[ok] += read[ok, k:]
            update = ok & has_active
            if update.any():
                # (N,): sum_k w_k L_k per student over the terms someone chose
                upd = torch.as_tensor(update, device=dev)
                if hand is not None:
                    total = (values[:, chosen] * w_numpy[:, chosen]).sum(1)
                    hand.backward(state, w * upd.unsqueeze(1))
                else:
                    total_t = (stacked[:, chosen] * w[:, chosen]).sum(1)
                    for p in self.params.values():
                        p.grad = None
                    torch.where(upd, total_t, torch.zeros_like(total_t)).sum().backward()
                    self._collect_grads()
                    total = total_t.detach().cpu().double().numpy()
                grad_norm = self._clip(upd)  # (N,) before clipping
                bad = update & ~np.isfinite(grad_norm)
                crashed |= bad
                update &= ~bad
                if update.any():
                    self._adamw(update, selected)
                    stats["total"][update] += total[update]
                    stats["grad"][update] += grad_norm[update]
                    trained += update
            for i in np.flatnonzero(live & ~crashed).tolist():
                self.distillers[i].step += 1
        for i in np.flatnonzero(crashed).tolist():
            self.distillers[i].step += 1  # the crashing step is spent
        seconds = (time.perf_counter() - start) / max(1, n)
        stats.update({name: prediction_sums[:, j] for j, name in enumerate(_PREDICTION_STATS)})
        out = []
        for i in range(n):
            m = max(1, int(done[i]) - int(crashed[i]))
            losses = np.where(counts[i] > 0, sums[i] / np.maximum(counts[i], 1), np.nan)
            out.append(PhaseStats(
                losses=losses, total_loss=stats["total"][i] / max(1, trained[i]), student_ce=stats["ce"][i] / m,
                student_accuracy=stats["acc"][i] / m, teacher_kl=stats["kl"][i] / m, agreement=stats["agree"][i] / m,
                entropy=stats["ent"][i] / m, grad_norm=stats["grad"][i] / max(1, trained[i]), steps=int(done[i]),
                trained_steps=int(trained[i]), seconds=seconds, crashed=bool(crashed[i])))
        return out

    def _terms(self, s_out: StudentStates, t_out: TeacherStates, batch: dict[str, torch.Tensor],
               computed: Sequence[int], grad_terms: Sequence[int]) -> dict[int, torch.Tensor]:
        """The knowledge terms ``computed`` of every student, ``(N,)`` each, with gradient for
        those in ``grad_terms``; each distiller's example weighting applied to its row."""
        weighting = [d.example_weighting for d in self.distillers]
        for name in set(weighting) - {None}:
            if name != "uncertainty":
                raise ValueError(f"the batched env supports the 'uncertainty' example weighting only, got {name!r}")
        example_weights = None
        if "uncertainty" in weighting:
            rows = torch.as_tensor([x == "uncertainty" for x in weighting], device=self.device).unsqueeze(1)
            u = _uncertainty(s_out.logits)
            ones = torch.ones_like(u)
            example_weights = {"response": torch.where(rows, u, ones), "finetune": torch.where(rows, 1.0 - u, ones)}
        terms = {}
        # the terms with gradient first: the products they share with the others are then
        # computed once, with their graph, and read detached by the terms without gradient
        for j in sorted(computed, key=lambda j: j not in grad_terms):
            kn = self.knowledge[j]
            weights = example_weights if kn.name in ("finetune", "response") else None
            with torch.set_grad_enabled(j in grad_terms and torch.is_grad_enabled()):
                terms[j] = batched_knowledge_loss(kn, s_out, t_out, batch, weights)
        return terms

    @staticmethod
    def _prediction_stats(stats: dict[str, np.ndarray], student: StudentStates, teacher: TeacherStates,
                          batch: dict[str, torch.Tensor], ok: np.ndarray) -> None:
        """:func:`~kd_env.phase_stats.accumulate_prediction_stats` for every slot in ``ok``."""
        values = StudentBatch._prediction_values(student, teacher, batch).cpu().double().numpy()
        for j, name in enumerate(_PREDICTION_STATS):
            stats[name][ok] += values[ok, j]

    @staticmethod
    @torch.no_grad()
    def _prediction_values(student: StudentStates, teacher: TeacherStates, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each slot's prediction statistics on its batch, ``(N, 5)`` in the order of
        ``_PREDICTION_STATS`` (the students' log-probabilities and predictions shared with the
        step's knowledge terms, the teacher's read from the data table)."""
        logp = student.log_softmax(1.0)
        labels = batch["labels"]
        ce = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        predicted = student.argmax()
        hit = (predicted == labels).float()
        mask = batch.get("label_mask")
        if mask is None:
            ce_mean, acc = ce.mean(1), hit.mean(1)
        else:
            count = mask.sum(1)
            ce_mean = torch.where(count > 0, (ce * mask).sum(1) / count.clamp_min(1), torch.zeros_like(count))
            acc = torch.where(count > 0, (hit * mask).sum(1) / count.clamp_min(1), torch.zeros_like(count))
        logq = teacher.log_softmax(1.0)
        kl = (teacher.softmax(1.0) * (logq - logp)).sum(-1).mean(1)
        agree = (predicted == teacher.argmax()).float().mean(1)
        ent = -(logp.exp() * logp).sum(-1).mean(1)
        return torch.stack([ce_mean, acc, kl, agree, ent], 1)

    # ---- checks and evaluation ------------------------------------------------------------------
    def snapshot(self) -> torch.Tensor:
        """A copy of every student's parameters."""
        return self.flat.detach().clone()

    def finite(self) -> np.ndarray:
        """Per slot: are all its parameters finite?"""
        with torch.no_grad():
            return torch.isfinite(self.flat).all(1).cpu().numpy()

    def restore(self, snapshot: torch.Tensor, indices: Sequence[int]) -> None:
        """Slots ``indices`` back to their parameters in ``snapshot`` (AdamW's moments stay)."""
        with torch.no_grad():
            rows = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
            self.flat[rows] = snapshot[rows]

    @torch.no_grad()
    def evaluate_probe(self) -> list[dict[str, float]]:
        """Each student's loss and metrics on its distiller's dev probe (eval mode), as
        :meth:`Distiller.evaluate` ``("probe")`` gives them."""
        logits = self.forward(self.probe_features).logits.float().cpu()
        labels = self.probe_labels
        # cross-entropy as logsumexp - the label's logit, with one max (also the prediction)
        top, predicted = logits.max(-1, keepdim=True)
        log_total = (logits - top).exp_().sum(-1).log_().add_(top.squeeze(-1))
        losses = (log_total - logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)).mean(1).double().numpy()
        correct = (predicted.squeeze(-1) == labels).sum(1).numpy()
        out = []
        for i, d in enumerate(self.distillers):
            if _accuracy_only(d.task):  # what compute_metrics gives, without its per-copy numpy pass
                acc = float(correct[i] / labels.shape[1])
                metrics = {"accuracy": acc, "main": acc}
            else:
                metrics = compute_metrics(d.task, logits[i].numpy(), labels[i].numpy())
            metrics["loss"] = float(losses[i])
            out.append(metrics)
        return out

    @torch.no_grad()
    def measure(self, indices: Sequence[int]) -> dict[int, PhaseStats]:
        """:meth:`Distiller.measure` for slots ``indices`` at once: every knowledge loss and the
        prediction statistics on each one's next training batch, without training and without
        consuming its budget or data (the first observation of an episode)."""
        start = time.perf_counter()
        bs = self.distillers[0].config.batch_size
        idx = np.zeros((self.n, bs), dtype=np.int64)
        for i, d in enumerate(self.distillers):
            rows = d.order[d.position: d.position + bs] if i in indices else np.arange(bs)
            idx[i] = rows if len(rows) == bs else d.order[:bs]
        batch, t_out = self._batch_at(idx)
        s_out = self.forward(batch["features"], t_out.hidden, t_out.input_moments)
        terms = self._terms(s_out, t_out, batch, range(len(self.knowledge)), [])
        values = torch.stack([terms[j] for j in range(len(self.knowledge))], 1).double().cpu().numpy()
        stats = {s: np.zeros(self.n) for s in ("ce", "acc", "kl", "agree", "ent")}
        self._prediction_stats(stats, s_out, t_out, batch, np.ones(self.n, dtype=bool))
        seconds = (time.perf_counter() - start) / max(1, len(indices))
        return {i: PhaseStats(losses=values[i], total_loss=0.0, student_ce=stats["ce"][i],
                              student_accuracy=stats["acc"][i], teacher_kl=stats["kl"][i],
                              agreement=stats["agree"][i], entropy=stats["ent"][i], grad_norm=0.0, steps=0,
                              trained_steps=0, seconds=seconds, crashed=not np.isfinite(values[i]).all())
                for i in indices}



def _accuracy_only(task: Any) -> bool:
    """Whether :func:`~kd_env.metrics.compute_metrics` gives ``task`` accuracy alone."""
    key = task.name
    if key not in _ACCURACY_ONLY:
        probe = compute_metrics(task, np.eye(max(2, task.num_labels), dtype=np.float32)[:2], np.array([0, 0]))
        _ACCURACY_ONLY[key] = set(probe) == {"accuracy", "main"} and probe["main"] == probe["accuracy"] == 0.5
    return _ACCURACY_ONLY[key]


_ACCURACY_ONLY: dict[str, bool] = {}

#: the prediction statistics of a step, in the order of their columns
_PREDICTION_STATS = ("ce", "acc", "kl", "agree", "ent")


def _checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device: ``cpu``, ``cuda``, ``cuda:<i>`` or ``auto`` (CUDA when there is
    one); ``ValueError`` naming the valid ones otherwise, or when CUDA is asked for and absent."""
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device
    else:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<index>' or 'auto', got {device!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<index>' or 'auto', got {device!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch has no CUDA device (torch.cuda.is_available() "
                         f"is False); use 'cpu' or 'auto'")
    return torch.device(name)
