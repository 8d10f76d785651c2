"""Is the teacher any good?  A sanity check with a loud answer.

A teacher fine-tuned on a small set with too small a budget can learn nothing: its accuracy is the
majority class's, and every knowledge type that copies its outputs copies a constant guess.  After
a teacher is fine-tuned (or the first time a cached one is loaded) :func:`teacher_sanity` compares
its dev metric with two references that cost seconds:

* the **majority class**: the dev metric of always predicting dev's most frequent class (the best
  constant guess on dev);
* a **linear probe**: a logistic regression on the *frozen, pre-trained* encoder's mean-pooled
  final-layer embeddings (text; the raw feature vectors for feature tasks), trained on (at most
  :data:`PROBE_TRAIN` examples of) the teacher's training set and scored on (at most
  :data:`PROBE_DEV` examples of) dev.  Fine-tuning that does not beat it added nothing.

The record (``sanity`` in the teacher's ``teacher.json`` and in ``distiller.teacher_metrics``) says
whether the teacher beats both (``ok``); where it does not, :func:`sanity_warning` is the one line
the main job prints and puts at the top of its report, with the flags that give the teacher more
budget.  numpy and torch only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .metrics import compute_metrics
from .runtime import autocast, private_torch_rng

if TYPE_CHECKING:  # pragma: no cover
    from .config import DistillConfig
    from .task import Split, TaskData

__all__ = ["SANITY_VERSION", "PROBE_TRAIN", "PROBE_DEV", "SUSPECT_KNOWLEDGE", "teacher_sanity", "linear_probe",
           "majority_metric", "sanity_warning", "more_budget_flags", "fine_tune_record",
           "describe_fine_tune"]

#: the version of the record :func:`teacher_sanity` writes; a cached teacher whose record is older
#: (or missing) gets a new one the next time it is loaded
SANITY_VERSION = 1
#: at most this many training examples (a seeded subset) train the linear probe
PROBE_TRAIN = 2000
#: at most this many dev examples (a seeded subset) score it
PROBE_DEV = 2000
PROBE_SEED = 39
#: L2 penalty of the probe's logistic regression (on standardised embeddings, mean loss)
PROBE_L2 = 1e-2
#: knowledge types that copy the teacher's predictions (soft targets): suspect when the teacher is
#: no better than the majority class or the probe
SUSPECT_KNOWLEDGE = ("response",)


def majority_metric(task: "TaskData", labels: np.ndarray) -> float:
    """The task's main metric on ``labels`` of always predicting their most frequent class."""
    labels = np.asarray(labels)
    counts = np.bincount(labels.astype(np.int64), minlength=task.num_labels)
    logits = np.zeros((len(labels), task.num_labels), np.float32)
    logits[:, int(np.argmax(counts))] = 1.0
    return float(compute_metrics(task, logits, labels)["main"])


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
                 l2: float = PROBE_L2, iterations: int = 100) -> np.ndarray:
    """Class scores ``(N_test, C)`` of a multinomial logistic regression fitted to ``train_x`` /
    ``train_y`` (features standardised with the training set's mean and std; L-BFGS, ``l2`` penalty
    on the weights).  Deterministic (zero initial weights)."""
    x = torch.as_tensor(np.asarray(train_x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.int64)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        t = (torch.as_tensor(np.asarray(test_x), dtype=torch.float64) - mean) / std
        return (t @ w + b).numpy()


def _subset(size: int, limit: int) -> np.ndarray:
    if size <= limit:
        return np.arange(size)
    return np.sort(np.random.default_rng(PROBE_SEED).permutation(size)[:limit])


@torch.no_grad()
def _embeddings(config: "DistillConfig", task: "TaskData", tokenizer: Any, split: "Split", indices: np.ndarray,
                device: torch.device, encoder: Any, precision: str) -> np.ndarray:
    """Mean-pooled final-layer embeddings of the frozen pre-trained encoder (text), or the raw
    feature vectors (feature tasks), of ``indices`` of ``split``."""
    if task.kind != "text":
        return np.asarray(split.features)[indices]
    from .batching import BatchSampler

    sampler = BatchSampler(task, split.subset(indices), tokenizer, config.max_len)
    lengths = np.asarray([len(sampler.encoded[i]["input_ids"]) for i in range(len(sampler))])
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(sampler), encoder.hidden_size), np.float32)
    for start in range(0, len(order), config.eval_batch_size):
        idx = order[start:start + config.eval_batch_size]
        batch = {k: v.to(device) for k, v in sampler.batch(idx).items()}
        with autocast(precision, device):
            pooled = encoder(batch).cls
        out[idx] = pooled.float().cpu().numpy()
    return out


def teacher_sanity(config: "DistillConfig", task: "TaskData", tokenizer: Any, train: "Split",
                   dev_metrics: dict[str, float], device: torch.device, precision: str = "fp32") -> dict[str, Any]:
    """The teacher's dev metric (``dev_metrics["main"]``, measured on the whole dev split) against
    the majority class and the linear probe (see the module docstring); ``train`` is the split the
    teacher was fine-tuned on.  Returns the record: ``teacher``, ``majority``, ``probe`` (dev
    metrics), ``probe_train`` / ``probe_dev`` (examples), ``ok`` (the teacher beats both),
    ``seconds``.  The encoder runs in ``precision`` (the teacher's).  A regression task gets ``{"skipped": ...}`` (no majority class)."""
    start = time.perf_counter()
    record: dict[str, Any] = {"version": SANITY_VERSION, "metric": "main", "teacher": float(dev_metrics["main"])}
    if task.is_regression:
        return {**record, "skipped": "regression task (no majority class)", "ok": True}
    dev = task["dev"]
    record["majority"] = majority_metric(task, dev.labels)
    encoder = None
    if task.kind == "text":
        from .models import SequenceClassifier, load_hf_classifier

        try:
            with private_torch_rng(config.seed):  # the unused head's first weights
                encoder = SequenceClassifier(load_hf_classifier(config.teacher, task.num_labels,
                                                                trust_remote_code=config.trust_remote_code), "mean")
        except (OSError, ValueError) as exc:  # the pre-trained model is not at hand (a hub name, offline)
            record["probe_error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            record["ok"] = bool(record["teacher"] > record["majority"])
            record["seconds"] = time.perf_counter() - start
            return record
        encoder.use_packing(True)
        encoder.to(device).eval()
    tr, dv = _subset(len(train), PROBE_TRAIN), _subset(len(dev), PROBE_DEV)
    train_x = _embeddings(config, task, tokenizer, train, tr, device, encoder, precision)
    dev_x = _embeddings(config, task, tokenizer, dev, dv, device, encoder, precision)
    train_y = np.asarray(train.labels)[tr]
    if len(np.unique(train_y)) < 2:
        probe = record["majority"]
    else:
        scores = linear_probe(train_x, train_y, dev_x, task.num_labels)
        probe = float(compute_metrics(task, scores, np.asarray(dev.labels)[dv])["main"])
    record.update({"probe": probe, "probe_train": int(len(tr)), "probe_dev": int(len(dv)),
                   "probe_encoder": "pre-trained, frozen, mean-pooled" if task.kind == "text" else "raw features"})
    record["ok"] = bool(record["teacher"] > record["majority"] and record["teacher"] >= record["probe"])
    record["seconds"] = time.perf_counter() - start
    return record


def more_budget_flags(fine_tune: dict[str, Any]) -> str:
    """The flags (of ``python -m experiments.glue_ac``) that give a teacher more budget than
    ``fine_tune`` (its summary) had: a floor of twice its budget (at least 300 steps), or, where the
    cap ``teacher_max_steps`` cut the budget, a higher cap."""
    budget = fine_tune.get("budget") or {}
    steps = int(budget.get("steps", fine_tune.get("steps", 0)) or 0)
    more = max(300, 2 * steps)
    cap = budget.get("max_steps")
    if cap is not None and steps == cap and cap < max(budget.get("epoch_steps", 0), budget.get("min_steps", 0)):
        return f"--teacher-max-steps {more} (the cap of {cap} steps cut its budget; or --teacher-min-steps N)"
    return f"--teacher-min-steps {more} (or --teacher-epochs E, --teacher-max-steps N, --teacher-patience P)"


def sanity_warning(teacher_metrics: dict[str, Any]) -> str | None:
    """One line saying the teacher is no better than the majority class or the linear probe, with
    the flags that give it more budget; ``None`` when it is better (or no check was recorded)."""
    s = teacher_metrics.get("sanity")
    if not isinstance(s, dict) or s.get("ok", True) or "majority" not in s:
        return None
    fit = teacher_metrics.get("fine_tune") or {}
    worse = (["the majority class"] if not s["teacher"] > s["majority"] else []) + \
        (["a linear probe on the frozen encoder"] if "probe" in s and not s["teacher"] >= s["probe"] else [])
    if "probe" not in s:  # no probe (its encoder could not be loaded): the majority class alone
        s = {**s, "probe": float("nan")}
    budget = fit.get("budget") or {}
    examples = budget.get("train_examples")
    where = f" after {fit.get('steps', '?')} fine-tuning steps" + (f" on {examples} examples" if examples else "")
    return (f"WARNING: the teacher is no better than {' or '.join(worse)} on dev (teacher {s['teacher']:.3f}, "
            f"majority class {s['majority']:.3f}, linear probe {s['probe']:.3f}){where}; "
            f"knowledge copied from it (response, and methods weighting it) is suspect. More teacher budget: "
            f"{more_budget_flags(fit)}")


def fine_tune_record(teacher_metrics: dict[str, Any]) -> dict[str, Any]:
    """What a run records of its teacher's fine-tune (config.yaml's ``teacher``, results.json):
    the budget (:func:`~kd_env.teacher.teacher_budget`), the steps run, where early stopping kept
    the best checkpoint, the seconds, the dev metric and the sanity check's references."""
    fit = teacher_metrics.get("fine_tune") or {}
    sanity = teacher_metrics.get("sanity") or {}
    record: dict[str, Any] = {"budget": fit.get("budget"), "steps": fit.get("steps"), "seconds": fit.get("seconds")}
    for key in ("best_step", "best_dev", "stopped_early"):
        if key in fit:
            record[key] = fit[key]
    record["dev"] = (teacher_metrics.get("dev") or {}).get("main")
    for key in ("majority", "probe", "ok"):
        if key in sanity:
            record[f"{'check_ok' if key == 'ok' else key + '_dev'}"] = sanity[key]
    return record


def describe_fine_tune(record: dict[str, Any]) -> str:
    """One sentence on a teacher's fine-tune (:func:`fine_tune_record`), for a report."""
    budget = record.get("budget") or {}
    text = f"Teacher fine-tuned for {record.get('steps')} optimizer steps"
    if budget:
        text += (f" of a budget of {budget['steps']} ({budget['epochs']:.2f} epochs of {budget['train_examples']} "
                 f"examples; {budget['epoch_steps']} from the epochs, floor {budget['min_steps']}, cap "
                 f"{budget['max_steps']})")
    if "best_step" in record:
        text += (f"; early stopping on dev (patience {budget.get('patience')}, every {budget.get('eval_every')} "
                 f"steps) {'stopped it' if record.get('stopped_early') else 'ran the whole budget'}, best dev at step "
                 f"{record['best_step']} kept")
    if record.get("dev") is not None:
        text += f"; dev {record['dev']:.4f}"
        if "majority_dev" in record:
            text += f", majority class {record['majority_dev']:.4f}"
        if "probe_dev" in record:
            text += f", linear probe on the frozen encoder {record['probe_dev']:.4f}"
    return text + "."
