"""Assembly from a config: :func:`build_distiller` turns a :class:`~kd_env.config.DistillConfig`
into a ready :class:`~kd_env.engine.Distiller` (loading the task, fine-tuning the teacher once,
building the teacher cache once, making the student and the knowledge)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .batching import BatchSampler, tokenizer_fingerprint
from .config import DistillConfig
from .data import TaskData, load_task
from .engine import Distiller
from .io import atomic_write_json
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
from .teacher import evaluate_model, teacher_budget, train_classifier
from .teacher_cache import LiveTeacher, TeacherCache, _file_sha256, cache_root, fingerprint_module
from .teacher_check import SANITY_VERSION, teacher_sanity

__all__ = ["build_distiller", "eval_precision", "prepare_teacher", "student_precision", "teacher_precision",
           "teacher_manifest", "weights_id", "recorded_weights_id", "DEV_TOLERANCE", "CHECK_EXAMPLES",
           "TEACHER_SUMMARY"]

#: the summary of a saved teacher, in its folder: metrics, ``ident``, and the manifest ``files``
#: (size and SHA-256 of every other file of the folder) with the teacher's identity ``weights_id``
TEACHER_SUMMARY = "teacher.json"
#: how far (absolute) a cached teacher's dev metric, measured again at load, may be from the one
#: recorded in its summary: both are measured in fp32 on the same split with the same code, so they
#: agree to rounding (a cross-device reload, CPU vs GPU kernels, moves them by far less); a summary
#: that describes other weights is off by much more
DEV_TOLERANCE = 0.005
#: at most this many dev examples (a fixed seeded subset, recorded at save time as ``check``) are
#: evaluated again when a cached teacher is loaded: the whole dev split of a text task (about
#: 1,300 sentences) took MiniLM-L6 9.5-12.7 s on one CPU thread, 512 of them 4.5 s (docs/reliability.md);
#: the digits dev split (359) is checked whole
CHECK_EXAMPLES = 512
CHECK_SEED = 38
#: the version of the small-set recipe (the floor ``teacher_min_steps`` with early stopping on dev,
#: :func:`~kd_env.teacher.teacher_budget`), in the identity of every teacher fine-tuned under it
TEACHER_RECIPE = 1


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

    A saved teacher's ``teacher.json`` holds a manifest (``files``: size and SHA-256 of every file
    of the folder, :func:`teacher_manifest`) and the teacher's identity ``weights_id``
    (:func:`weights_id`); the folder is written to ``<folder>.tmp`` and renamed into place when
    complete.  A cached teacher is checked before use (checksums, weights-only load, dev metric
    measured again: see :func:`_load_cached_teacher`); one that fails a check is refused with a
    ``RuntimeWarning`` naming the file, fine-tuned again and its folder replaced.

    Returns the teacher (eval mode) and its summary (dev/test metrics, fine-tuning time and
    precision, the metrics measured in fp32; ``weights_id`` and ``files``; ``folder``, the
    teacher's folder).
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
        teacher_split = teacher_split.subset(_teacher_subset(len(teacher_split), config))
    budget = teacher_budget(len(teacher_split), config.teacher_batch_size, config.teacher_epochs,
                            config.teacher_min_steps, config.teacher_max_steps, config.teacher_patience)
    if budget["floor"]:  # the floor raised the budget (a small set): the recipe is part of the identity;
        # a teacher whose budget is the epochs' alone keeps the folder it had before the floor existed
        ident.update({"min_steps": config.teacher_min_steps, "patience": budget["patience"],
                      "recipe": TEACHER_RECIPE})
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / f"{Path(str(config.teacher)).name}-{task.name}-{key}"
    summary_path = folder / TEACHER_SUMMARY
    train = BatchSampler(task, teacher_split, tokenizer, config.max_len)
    if summary_path.exists():
        cached = _load_cached_teacher(folder, config, task, tokenizer, device, attentions)
        if cached is not None:
            return cached
    if task.kind == "text":
        # every new weight from the seeded private stream: Hugging Face's classifier head (used with
        # cls pooling; unused but hashed into weights_id with mean pooling) and the mean-pooled head,
        # so that fine-tuning the same teacher again gives the same weights and the same weights_id
        with private_torch_rng(config.seed):
            hf = load_hf_classifier(config.teacher, task.num_labels, attentions=attentions,
                                    trust_remote_code=config.trust_remote_code)
            model = SequenceClassifier(hf, config.pooling)
    else:
        with private_torch_rng(config.seed):
            model = MLPClassifier(task["train"].features.shape[1], config.teacher_hidden, task.num_labels)  # type: ignore[assignment]  # a teacher: either classifier
    dev = BatchSampler(task, task["dev"], tokenizer, config.max_len)
    stop_pick = _check_indices(len(dev), CHECK_EXAMPLES)

    def dev_metric(m: nn.Module) -> float:  # early stopping's look at dev: its check subset, in the teacher's precision
        return float(evaluate_model(m, dev, task, device, indices=stop_pick, precision=precision)["main"])

    with private_torch_rng(config.seed, device):  # dropout during fine-tuning: a seeded private stream
        fit = train_classifier(model, train, epochs=config.teacher_epochs, lr=config.teacher_lr,
                               batch_size=config.teacher_batch_size, seed=config.seed, device=device,
                               max_steps=config.teacher_max_steps, progress=config.progress, precision=precision,
                               length_grouping=config.teacher_length_grouping if task.kind == "text" else 0,
                               min_steps=config.teacher_min_steps, patience=config.teacher_patience,
                               evaluate=dev_metric)
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
    summary["check"] = _check_record(model, dev, task, device, summary["dev"])
    summary["sanity"] = teacher_sanity(config, task, tokenizer, teacher_split, summary["dev"], device, precision)
    summary["files"] = teacher_manifest(tmp)
    summary["weights_id"] = weights_id(model)
    atomic_write_json(tmp / TEACHER_SUMMARY, summary)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return model.eval(), {**summary, "folder": str(folder)}


def _teacher_subset(size: int, config: DistillConfig) -> np.ndarray:
    """The train examples a teacher with ``teacher_train_fraction`` < 1 is fine-tuned on (seeded)."""
    n = max(1, int(round(config.teacher_train_fraction * size)))
    return np.sort(np.random.default_rng([config.seed, 1618]).permutation(size)[:n])


def teacher_manifest(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The manifest of a saved teacher: ``{relative path: {"bytes", "sha256"}}`` for every file
    under ``folder`` (the weights, the HF config and tokenizer files, ``pooled_head.pt``) except
    the summary ``teacher.json`` itself, which holds the manifest."""
    folder = Path(folder)
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.relative_to(folder).as_posix() != TEACHER_SUMMARY)
    return {f.relative_to(folder).as_posix(): {"bytes": f.stat().st_size, "sha256": _file_sha256(f)} for f in files}


def weights_id(model: nn.Module) -> str:
    """The teacher's identity: :func:`~kd_env.teacher.fingerprint_module` of its weights (a hash
    of every parameter and buffer: names, shapes, values).  It names the weights themselves, not
    their files: a teacher fine-tuned again into the same weights keeps it (the saved tokenizer
    files, which carry the tokenizer's last truncation settings, do not enter it)."""
    return fingerprint_module(model)


def recorded_weights_id(folder: str | os.PathLike) -> str | None:
    """The identity (:func:`weights_id`) recorded in the teacher folder ``folder``'s summary, or
    ``None`` when the folder, its summary or the record is missing or unreadable.  Cheap (one
    small JSON file, nothing verified): for checking whether results made with a teacher are
    still current; the teacher itself is verified whenever it is loaded."""
    try:
        summary = json.loads((Path(folder) / TEACHER_SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    value = summary.get("weights_id") if isinstance(summary, dict) else None
    return value if isinstance(value, str) else None


def _check_indices(size: int, examples: int) -> np.ndarray | None:
    """The dev examples a cached teacher is checked on: ``None`` (all) when ``examples`` covers
    the split, else a fixed seeded subset of that many."""
    if examples >= size:
        return None
    return np.sort(np.random.default_rng(CHECK_SEED).permutation(size)[:examples])


def _check_record(model: nn.Module, dev: BatchSampler, task: TaskData, device: torch.device,
                  dev_metrics: dict[str, float]) -> dict[str, Any]:
    """``{"examples", "main"}``: the teacher's dev metric on its check subset
    (:func:`_check_indices` of :data:`CHECK_EXAMPLES`), what a load measures again."""
    examples = min(CHECK_EXAMPLES, len(dev))
    pick = _check_indices(len(dev), examples)
    main = dev_metrics["main"] if pick is None else evaluate_model(model, dev, task, device, indices=pick)["main"]
    return {"examples": examples, "main": float(main)}


def _refuse(message: str) -> None:
    warnings.warn(f"{message}; fine-tuning the teacher again", RuntimeWarning, stacklevel=3)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_cached_teacher(folder: Path, config: DistillConfig, task: TaskData, tokenizer: Any, device: torch.device,
                         attentions: bool) -> tuple[nn.Module, dict[str, Any]] | None:
    """The teacher saved in ``folder``, checked, or ``None`` (after a one-line ``RuntimeWarning``
    naming the folder and the file) when it must be fine-tuned again; the folder is then replaced
    by the new teacher.

    Checks, in order:

    1. every file of the manifest in ``teacher.json`` (``files``: size and SHA-256 of each file,
       written by :func:`prepare_teacher`) is present and has its checksum;
    2. the weights load (weights only: a pickle planted in the cache that would build objects is
       refused);
    3. the teacher's dev metric, measured again (:func:`~kd_env.teacher.evaluate_model` in fp32
       as when it was recorded, bf16 teachers included), is within :data:`DEV_TOLERANCE` of the
       recorded one: a summary that does not describe these weights is refused.  To keep a load
       cheap the metric is measured on at most :data:`CHECK_EXAMPLES` dev examples, a fixed
       seeded subset whose metric was recorded at save time (``check``: ``examples``, ``main``);
       a dev split no larger (digits) is checked whole, against ``dev.main``.

    A folder written before teachers had a manifest (no ``files`` in ``teacher.json``) is not
    refused for it: it is checked against its whole-dev ``dev.main``, then its manifest, identity
    and ``check`` record are computed and added to ``teacher.json`` (atomically), and it is checked
    like any other from then on.
    """
    summary_path = folder / TEACHER_SUMMARY
    try:
        summary = _with_precision(json.loads(summary_path.read_text()))
        recorded = float(summary["dev"]["main"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        _refuse(f"teacher summary {summary_path} refused (unreadable or incomplete: {_first_line(exc)})")
        return None
    files = summary.get("files")
    if files is not None:
        if not isinstance(files, dict):
            _refuse(f"teacher summary {summary_path} refused (its manifest 'files' is not a mapping)")
            return None
        for name, info in sorted(files.items()):
            path = folder / name
            if not path.is_file():
                _refuse(f"teacher file {path} is missing (listed in the manifest of {summary_path})")
                return None
            if _file_sha256(path) != info.get("sha256"):
                _refuse(f"teacher file {path} refused: its SHA-256 differs from the one recorded in {summary_path} "
                        f"(corrupted or replaced)")
                return None
    try:
        if task.kind == "text":
            model: nn.Module = SequenceClassifier.load(folder / "model", task.num_labels, config.pooling,
                                                       attentions=attentions)
        else:
            model = MLPClassifier(task["train"].features.shape[1], config.teacher_hidden, task.num_labels)
            # weights only: a pickle planted in the cache that would build objects is refused
            model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, OSError, ValueError ...
        where = folder / "model" if task.kind == "text" else folder / "model.pt"
        _refuse(f"teacher checkpoint {where} refused (not a loadable weights-only checkpoint of this teacher: "
                f"{_first_line(exc)})")
        return None
    model = model.to(device).eval()
    dev = BatchSampler(task, task["dev"], tokenizer, config.max_len)
    check = summary.get("check")
    try:
        examples, recorded = (int(check["examples"]), float(check["main"])) if check is not None else (len(dev), recorded)
    except (TypeError, KeyError, ValueError):
        _refuse(f"teacher summary {summary_path} refused (its 'check' record is malformed)")
        return None
    measured = float(evaluate_model(model, dev, task, device, indices=_check_indices(len(dev), examples))["main"])
    if not abs(measured - recorded) <= DEV_TOLERANCE:
        where = "dev metric" if examples >= len(dev) else f"dev metric on its {examples} check examples"  # type: ignore[assignment]
        _refuse(f"teacher {folder} refused: its {where} measures {measured:.4f}, {summary_path} records "
                f"{recorded:.4f} (tolerance {DEV_TOLERANCE})")
        return None
    sanity = summary.get("sanity")
    if files is None or check is None or not isinstance(summary.get("weights_id"), str) \
            or not isinstance(sanity, dict) or sanity.get("version") != SANITY_VERSION:
        # a folder saved before teachers had a manifest (checked on the whole dev split above), or
        # before the sanity check: add the manifest, the identity, the check subset's record and
        # the sanity check now (teacher.json is not in the manifest)
        summary["check"] = check if check is not None else _check_record(model, dev, task, device, summary["dev"])
        summary["files"] = files if files is not None else teacher_manifest(folder)
        summary["weights_id"] = weights_id(model)
        if not isinstance(sanity, dict) or sanity.get("version") != SANITY_VERSION:
            split = task["train"]
            if config.teacher_train_fraction < 1:
                split = split.subset(_teacher_subset(len(split), config))
            summary["sanity"] = teacher_sanity(config, task, tokenizer, split, summary["dev"], device,
                                               summary["precision"])
        atomic_write_json(summary_path, summary)
    return model, {**summary, "folder": str(folder)}


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
