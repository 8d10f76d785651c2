"""Assembly from a config: :func:`build_distiller` turns a :class:`~kd_env.config.DistillConfig`
into a ready :class:`~kd_env.engine.Distiller` (loading the task, fine-tuning the teacher once,
building the teacher cache once, making the student and the knowledge)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .batching import BatchSampler, tokenizer_fingerprint
from .config import DistillConfig
from .data import TaskData, load_task
from .engine import Distiller
from .knowledge import KNOWLEDGE_REGISTRY, Knowledge, knowledge_names, make_knowledge
from .models import (
    MLPClassifier,
    SequenceClassifier,
    Student,
    layer_map,
    load_hf_classifier,
    load_tokenizer,
    truncate_layers,
)
from .runtime import private_torch_rng, resolve_device, resolve_precision, resolve_threads
from .teacher import (
    LiveTeacher,
    TeacherCache,
    atomic_write_json,
    cache_root,
    evaluate_model,
    fingerprint_module,
    train_classifier,
)

__all__ = ["build_distiller", "eval_precision", "prepare_teacher", "student_precision", "teacher_precision"]


def _teacher_fields(knowledge: Sequence[Knowledge], pooling: str = "cls") -> list[str]:
    fields = {"logits"}
    for k in knowledge:
        fields.update(k.needs)
    if pooling != "cls" and {"hidden_pooled", "hidden_cls"} <= fields:
        # the outputs carry one tensor per layer: token states serve both kinds of sentence vector
        fields -= {"hidden_pooled", "hidden_cls"}
        fields.add("hidden_tokens")
    return sorted(fields)


def teacher_precision(config: DistillConfig, task: TaskData, device: torch.device) -> str:
    """``fp32`` or ``bf16``: the precision the teacher is fine-tuned and cached in.
    ``config.precision``, with ``auto`` resolved by :func:`~kd_env.runtime.resolve_precision` for
    transformer teachers and to fp32 for MLP teachers (a few thousand multiply-adds per example:
    nothing for bf16 to speed up, and a rounding for nothing)."""
    return _model_precision(config.precision, task, device)


def student_precision(config: DistillConfig, task: TaskData, device: torch.device) -> str:
    """``fp32`` or ``bf16``: the precision of the student's training steps
    (``config.student_precision``, ``auto`` resolved as for the teacher: bf16 for transformer
    students where the device has fast bf16, fp32 for MLPs)."""
    return _model_precision(config.student_precision, task, device)


def eval_precision(config: DistillConfig, task: TaskData, device: torch.device) -> str:
    """``fp32`` or ``bf16``: the precision of the student's evaluations (``config.eval_precision``;
    ``auto`` is the student's training precision, :func:`student_precision`)."""
    if config.eval_precision == "auto":
        return student_precision(config, task, device)
    return _model_precision(config.eval_precision, task, device)


def _model_precision(value: str, task: TaskData, device: torch.device) -> str:
    if value == "auto" and task.kind != "text":
        return "fp32"
    return resolve_precision(value, device)


def prepare_teacher(config: DistillConfig, task: TaskData, tokenizer: Any, device: torch.device,
                    attentions: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Load the fine-tuned teacher from the cache root, or fine-tune and save it there once.

    Returns the teacher (eval mode) and its summary (dev/test metrics, fine-tuning time and
    precision; the metrics are measured in fp32).
    """
    root = cache_root(config.cache_dir) / "teachers"
    precision = teacher_precision(config, task, device)
    ident = {"teacher": config.teacher, "task": task.name, "train": task["train"].fingerprint(),
             "epochs": config.teacher_epochs, "lr": config.teacher_lr, "bs": config.teacher_batch_size,
             "max_steps": config.teacher_max_steps, "max_len": config.max_len, "seed": config.seed,
             "hidden": list(config.teacher_hidden) if task.kind != "text" else None}
    if task.kind == "text" and config.pooling != "cls":  # cls teachers keep their cache folders
        ident["pooling"] = config.pooling
    if task.kind == "text" and config.teacher_length_grouping > 1:  # ungrouped teachers keep theirs too
        ident["length_grouping"] = config.teacher_length_grouping
    teacher_split = task["train"]
    if precision != "fp32":  # fp32 teachers keep the folders they had before precision was an option
        ident["precision"] = precision
    if config.teacher_train_fraction < 1:  # a weaker teacher: fine-tuned on a seeded subset of train
        ident["train_fraction"] = config.teacher_train_fraction
        n = max(1, int(round(config.teacher_train_fraction * len(teacher_split))))
        pick = np.sort(np.random.default_rng([config.seed, 1618]).permutation(len(teacher_split))[:n])
        teacher_split = teacher_split.subset(pick)
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / f"{Path(str(config.teacher)).name}-{task.name}-{key}"
    summary_path = folder / "teacher.json"
    train = BatchSampler(task, teacher_split, tokenizer, config.max_len)
    if task.kind == "text":
        if summary_path.exists():
            model = SequenceClassifier.load(folder / "model", task.num_labels, config.pooling, attentions=attentions)
            return model.to(device).eval(), _with_precision(json.loads(summary_path.read_text()))
        hf = load_hf_classifier(config.teacher, task.num_labels, attentions=attentions,
                                trust_remote_code=config.trust_remote_code)
        with private_torch_rng(config.seed):  # the pooled head's first weights (mean pooling)
            model = SequenceClassifier(hf, config.pooling)
    else:
        if summary_path.exists():
            model = MLPClassifier(task["train"].features.shape[1], config.teacher_hidden, task.num_labels)
            try:
                # weights only: a pickle planted in the cache that would build objects is refused
                model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
                summary = _with_precision(json.loads(summary_path.read_text()))
            except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ValueError ...
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                import warnings

                warnings.warn(f"teacher checkpoint {folder / 'model.pt'} refused (not a weights-only state_dict "
                              f"of this teacher: {first}); fine-tuning the teacher again", RuntimeWarning,
                              stacklevel=2)
            else:
                return model.to(device).eval(), summary
        with private_torch_rng(config.seed):
            model = MLPClassifier(task["train"].features.shape[1], config.teacher_hidden, task.num_labels)
    with private_torch_rng(config.seed, device):  # dropout during fine-tuning: a seeded private stream
        fit = train_classifier(model, train, epochs=config.teacher_epochs, lr=config.teacher_lr,
                               batch_size=config.teacher_batch_size, seed=config.seed, device=device,
                               max_steps=config.teacher_max_steps, progress=config.progress, precision=precision,
                               length_grouping=config.teacher_length_grouping if task.kind == "text" else 0)
    dev = BatchSampler(task, task["dev"], tokenizer, config.max_len)
    test = BatchSampler(task, task[task.eval_split], tokenizer, config.max_len)
    summary = {"fine_tune": fit, "dev": evaluate_model(model, dev, task, device, progress=config.progress,
                                                       desc="evaluate teacher (dev)"),
               "test": evaluate_model(model, test, task, device, progress=config.progress,
                                      desc="evaluate teacher (test)"), "ident": ident,
               "parameters": sum(p.numel() for p in model.parameters()), "precision": precision}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if task.kind == "text":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            model.save(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
        finally:
            hf_logging.enable_progress_bar()
    else:
        torch.save(model.state_dict(), tmp / "model.pt")
    atomic_write_json(tmp / "teacher.json", summary)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return model.eval(), summary


def _with_precision(summary: dict[str, Any]) -> dict[str, Any]:
    """A saved teacher summary, with the precision of teachers saved before it was recorded (fp32)."""
    summary.setdefault("precision", summary.get("ident", {}).get("precision", "fp32"))
    return summary


def build_distiller(config: DistillConfig, task: TaskData | None = None) -> Distiller:
    """Everything from a config: task, tokenizer, teacher (fine-tuned once), teacher cache
    (built once), student and knowledge.

    Args:
        config: the run configuration.
        task: an already loaded task (saves re-reading it), else loaded from ``config.task``.
    """
    device = resolve_device(config.device)
    torch.set_num_threads(resolve_threads(config.threads))
    if config.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    # teacher fine-tuning and the student's first weights draw from seeded private streams: building
    # a distiller neither reads nor changes the process-wide torch RNG
    with private_torch_rng(device=device):
        return _assemble(config, task, device)


def _assemble(config: DistillConfig, task: TaskData | None, device: torch.device) -> Distiller:
    knowledge = make_knowledge(config.knowledge, config.knowledge_params)
    task = task or load_task(config.task, data_dir=config.data_dir, seed=config.seed, labels=config.labels)
    if task.kind != "text":  # MLPs have no attention maps: say so before any teacher is trained
        for k in knowledge:
            if k.student_attentions:
                usable = [n for n in knowledge_names() if "attentions" not in KNOWLEDGE_REGISTRY[n].needs]
                raise ValueError(f"knowledge {k.name!r} needs attention maps, which the MLP teacher and student of "
                                 f"task {task.name!r} do not have; valid knowledge types here: {usable}")
    attentions = any(k.student_attentions for k in knowledge)
    tokenizer = None
    if task.kind == "text":
        if config.teacher == "mlp":
            raise ValueError(f"teacher 'mlp' is for feature tasks; task {task.name!r} is text: pass an HF "
                             f"model name or folder (default 'minilm-l6')")
        tokenizer = load_tokenizer(config.teacher, trust_remote_code=config.trust_remote_code)
    elif config.teacher != "mlp":
        raise ValueError(f"task {task.name!r} has feature vectors; its teacher must be 'mlp', got {config.teacher!r}")
    start = time.perf_counter()
    teacher, teacher_summary = prepare_teacher(config, task, tokenizer, device, attentions)
    teacher_seconds = time.perf_counter() - start
    # distillation set: a seeded subset of train
    train_split = task["train"]
    if config.train_examples is not None and config.train_examples < len(train_split):
        pick = np.sort(np.random.default_rng(config.seed + 104729).permutation(len(train_split))[: config.train_examples])
        train_split = train_split.subset(pick)
    train = BatchSampler(task, train_split, tokenizer, config.max_len)
    dev = BatchSampler(task, task["dev"], tokenizer, config.max_len)
    test = BatchSampler(task, task[task.eval_split], tokenizer, config.max_len)
    # student and layer map
    mapping = layer_map(teacher.num_layers, config.student_layers, config.layer_strategy)
    torch.manual_seed(config.seed)
    if task.kind == "text":
        if config.student_init_from == "teacher":
            base = teacher.model
        else:
            base = load_hf_classifier(config.teacher, task.num_labels, attentions=attentions,
                                      trust_remote_code=config.trust_remote_code)
        keep = layer_map(teacher.num_layers, config.student_layers, config.student_init)[1:]
        student_model: nn.Module = SequenceClassifier(truncate_layers(base, keep), config.pooling)
        if config.freeze_embeddings:
            student_model.model.get_input_embeddings().weight.requires_grad_(False)
        student_model.use_packing(config.token_packing and not attentions)
        fresh = False
    else:
        student_model = MLPClassifier(task["train"].features.shape[1], [config.student_hidden] * config.student_layers,
                                      task.num_labels)
        fresh = True
    for k in knowledge:
        k.check(getattr(student_model, "num_heads", 0), getattr(teacher, "num_heads", 0))
    teacher_widths = [teacher.hidden_sizes()[t] for t in mapping]
    student = Student(student_model, teacher_widths)
    fields = _teacher_fields(knowledge, getattr(teacher, "pooling", "cls"))
    precision = teacher_summary["precision"]
    start = time.perf_counter()
    if config.use_teacher_cache:
        key = TeacherCache.cache_key(fingerprint_module(teacher), train_split.fingerprint(),
                                     tokenizer_fingerprint(tokenizer),
                                     config.max_len, mapping, fields, precision)
        source: TeacherCache | LiveTeacher = TeacherCache.build_or_open(
            cache_root(config.cache_dir) / "teacher_outputs", key, teacher, train, mapping, fields, device,
            verify=config.verify_cache, progress=config.progress, precision=precision)
    else:
        source = LiveTeacher(teacher, mapping, fields, device, precision)
    distiller = Distiller(config, task, train, dev, test, student, source, knowledge, fresh, device,
                          teacher_metrics=teacher_summary, layer_map=mapping, teacher_model=teacher,
                          precision=student_precision(config, task, device),
                          eval_precision=eval_precision(config, task, device))
    # wall seconds of this build's two slow stages: the teacher (fine-tuned and evaluated, or loaded
    # when cached) and the teacher-output cache (built, or opened and verified); the demo prints them
    distiller.build_seconds = {"teacher": teacher_seconds, "teacher_cache": time.perf_counter() - start}
    return distiller
