"""Teacher fine-tuning: the budget (:func:`teacher_budget`), supervised fine-tuning with early
stopping on dev (:func:`train_classifier`) and a model's loss and metrics on a split
(:func:`evaluate_model`).

The teacher is fine-tuned on the task once and saved under the cache root (``$KD_ENV_CACHE`` or
``~/.cache/kd_env``); its outputs are then cached by :mod:`kd_env.teacher_cache`
(:class:`~kd_env.teacher_cache.TeacherCache`, :class:`~kd_env.teacher_cache.LiveTeacher`), whose
names are importable from here too.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .batching import BatchSampler, length_grouped_order, to_device, tokens_per_example
from .io import atomic_write_bytes, atomic_write_json, progress_bar
from .metrics import compute_metrics
from .runtime import autocast
from .task import TaskData
from .teacher_cache import CACHE_FORMAT, CacheError, LiveTeacher, TeacherCache, cache_root, fingerprint_module

__all__ = [
    "cache_root",
    "fingerprint_module",
    "atomic_write_bytes",
    "atomic_write_json",
    "train_classifier",
    "teacher_budget",
    "evaluate_model",
    "TeacherCache",
    "LiveTeacher",
    "CacheError",
    "CACHE_FORMAT",
]

# --------------------------------------------------------------------------------------------
# Fine-tuning and evaluation of a classifier (teacher or baseline)
# --------------------------------------------------------------------------------------------


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.float())
    return nn.functional.cross_entropy(logits, labels)


#: with early stopping, the teacher is evaluated on dev about this many times over its budget (at
#: most once per epoch)
STOP_EVALUATIONS = 10


def teacher_budget(train_size: int, batch_size: int, epochs: float, min_steps: int = 0, max_steps: int | None = None,
                   patience: int = 0) -> dict[str, Any]:
    """The optimizer steps of a fine-tune, and when it is evaluated for early stopping.

    ``epochs`` over ``train_size`` examples in batches of ``batch_size`` give ``epoch_steps``
    (at least 1); the budget ``steps`` is ``max(epoch_steps, min_steps)``, capped by ``max_steps``.
    When the floor ``min_steps`` raises the budget above the epochs' (``floor``: a small training
    set) and ``patience`` > 0, the fine-tune stops early on dev: it is evaluated every
    ``eval_every`` steps (about :data:`STOP_EVALUATIONS` times over the budget, at least one
    epoch apart, and at the last step), keeps the best checkpoint, and stops after ``patience``
    evaluations in a row without a better dev metric.  Without the floor in effect the recipe is
    the epochs' alone (``eval_every`` 0): a large set's fine-tune is the one it always was."""
    steps_per_epoch = max(1, math.ceil(int(train_size) / int(batch_size)))
    epoch_steps = max(1, int(round(epochs * steps_per_epoch)))
    steps = max(epoch_steps, int(min_steps))
    if max_steps is not None:
        steps = min(steps, int(max_steps))
    floor = steps > epoch_steps
    stopping = floor and patience > 0
    eval_every = max(steps_per_epoch, math.ceil(steps / STOP_EVALUATIONS)) if stopping else 0
    return {"train_examples": int(train_size), "steps_per_epoch": steps_per_epoch, "epoch_steps": epoch_steps,
            "min_steps": int(min_steps), "max_steps": None if max_steps is None else int(max_steps),
            "steps": steps, "epochs": steps / steps_per_epoch, "floor": floor,
            "patience": int(patience) if stopping else 0, "eval_every": eval_every}


def train_classifier(model: nn.Module, sampler: BatchSampler, *, epochs: float, lr: float, batch_size: int,
                     seed: int, device: torch.device, max_steps: int | None = None, weight_decay: float = 0.01,
                     warmup_fraction: float = 0.1, progress: bool = True, desc: str = "fine-tune teacher",
                     precision: str = "fp32", length_grouping: int = 0, min_steps: int = 0, patience: int = 0,
                     evaluate: Callable[[nn.Module], float] | None = None) -> dict:
    """Plain supervised fine-tuning (AdamW, linear warm-up and decay), the forward pass and loss in
    ``precision`` (``fp32`` or ``bf16`` autocast; weights and optimizer stay fp32); with
    ``length_grouping`` > 1 each epoch's batches hold examples of similar length
    (:func:`~kd_env.batching.length_grouped_order`).

    The budget is :func:`teacher_budget` (``epochs``, the floor ``min_steps``, the cap
    ``max_steps``); where it stops early (the floor in effect, ``patience`` > 0) ``evaluate``
    (the model -> its dev metric, higher is better) is called every ``eval_every`` steps, the best
    weights are kept and restored at the end.  Returns a summary: ``steps`` (run), ``seconds``,
    final loss, precision, ``budget`` (:func:`teacher_budget`), and with early stopping
    ``best_step``, ``best_dev``, ``stopped_early`` and ``history`` ([step, dev metric] pairs)."""
    model.to(device).train()
    rng = np.random.default_rng(seed)
    budget = teacher_budget(len(sampler), batch_size, epochs, min_steps, max_steps, patience)
    total, every = budget["steps"], budget["eval_every"]
    if every and evaluate is None:
        raise ValueError("train_classifier: early stopping (a floor of min_steps above the epochs' steps, "
                         "patience > 0) needs evaluate=")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = int(warmup_fraction * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    start = time.perf_counter()
    order = np.empty(0, dtype=np.int64)
    lengths = tokens_per_example(sampler) if length_grouping > 1 else None
    pos = 0
    losses = []
    history: list[list[float]] = []
    best: tuple[float, int, dict[str, torch.Tensor] | None] = (-math.inf, 0, None)
    waited = 0
    done = 0
    eval_seconds = 0.0
    bar = progress_bar(range(total), total, desc, progress, leave=False)
    for _ in bar:
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(sampler)), 0
            if lengths is not None:
                order = length_grouped_order(order, lengths, batch_size, length_grouping, rng)
        batch = to_device(sampler.batch(order[pos : pos + batch_size]), device)
        pos += batch_size
        with autocast(precision, device):
            out = model(batch)
            loss = _loss(out.logits.float(), batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        done += 1
        if every and evaluate is not None and (done % every == 0 or done == total):
            tick = time.perf_counter()
            metric = float(evaluate(model))
            model.train()
            eval_seconds += time.perf_counter() - tick
            history.append([done, metric])
            if metric > best[0]:
                best, waited = (metric, done, {k: v.detach().clone() for k, v in model.state_dict().items()}), 0
            else:
                waited += 1
                if waited >= patience:
                    break
    if best[2] is not None and best[1] != done:
        model.load_state_dict(best[2])
    model.eval()
    summary = {"steps": done, "seconds": time.perf_counter() - start, "final_loss": float(np.mean(losses[-20:])),
               "precision": precision, "budget": budget}
    if every:
        summary.update({"best_step": best[1], "best_dev": best[0], "stopped_early": done < total,
                        "eval_seconds": eval_seconds, "history": history})
    return summary


@torch.no_grad()
def evaluate_model(model: nn.Module, sampler: BatchSampler, task: TaskData, device: torch.device,
                   batch_size: int = 128, indices: np.ndarray | None = None, progress: bool = False,
                   desc: str = "evaluate", precision: str = "fp32") -> dict[str, float]:
    """Loss and task metrics of ``model`` on ``sampler`` (optionally a subset ``indices``), the
    forward pass in ``precision`` (``fp32``, or ``bf16`` autocast: early stopping's cheap look)."""
    was_training = model.training
    model.eval()
    order = np.arange(len(sampler)) if indices is None else np.asarray(indices)
    if sampler.kind == "text":
        lengths = np.asarray([len(sampler.encoded[i]["input_ids"]) for i in order])
        order = order[np.argsort(lengths, kind="stable")]
    logits, labels = [], []
    starts = range(0, len(order), batch_size)
    for start in progress_bar(starts, len(starts), desc, progress, leave=False):
        batch = to_device(sampler.batch(order[start : start + batch_size]), device)
        with autocast(precision, device):
            logits.append(model(batch).logits.float().cpu())
        labels.append(batch["labels"].cpu())
    model.train(was_training)
    lg, lb = torch.cat(logits), torch.cat(labels)
    metrics = compute_metrics(task, lg.numpy(), lb.numpy())
    metrics["loss"] = float(_loss(lg, lb))
    return metrics
