"""The checks on a task's splits that every data route passes through (a CSV/TSV file, a local
folder with ``train``/``dev``/``test`` files, a local GLUE folder, a hub dataset), once, before
anything is trained.  Each error names the file (or hub split) and the numbers.

Minimums (``docs/reliability.md``, "Data checks"):

* train: at least :data:`MIN_TRAIN_EXAMPLES` (8) examples: a few of each class of a binary task
  and one small batch; fewer cannot train a teacher or a student to anything;
* dev and test: at least :data:`MIN_EVAL_EXAMPLES` (2) examples each: with one example a score
  is all or nothing (the dev probe's reward and the test metric could only be 0 or 1).

A split carved out of train when its file is missing (:data:`CARVE_FRACTION`, 10%) is at least
:data:`MIN_EVAL_EXAMPLES` large, and the carve is refused (:func:`check_carve`) when it would
leave train below its minimum.

A classification task needs at least two classes in train (:func:`check_task`), and its class
ids must lie in ``0..num_labels-1``.  The file-level checks (encoding, ragged rows, labels) are
in :mod:`kd_env.tables`, which reads every local file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from .task import TaskData

__all__ = ["MIN_TRAIN_EXAMPLES", "MIN_EVAL_EXAMPLES", "CARVE_FRACTION", "MINIMUMS", "carve_size",
           "check_carve", "check_task"]

#: the fewest training examples a task may have
MIN_TRAIN_EXAMPLES = 8
#: the fewest examples of the dev split and of the test split, each
MIN_EVAL_EXAMPLES = 2
#: the share of train carved out for a dev or test split that has no file
CARVE_FRACTION = 0.1
#: the minimums in words, for messages
MINIMUMS = (f"at least {MIN_TRAIN_EXAMPLES} are needed for train and {MIN_EVAL_EXAMPLES} for each of dev "
            f"and test")


def carve_size(n: int) -> int:
    """How many of ``n`` training examples are carved out for one missing split: 10%, rounded,
    and never fewer than :data:`MIN_EVAL_EXAMPLES`."""
    return max(MIN_EVAL_EXAMPLES, int(round(CARVE_FRACTION * n)))


def _fewest_rows(plan: Callable[[int], Sequence[int]]) -> int:
    n = 1
    while n - sum(plan(n)) < MIN_TRAIN_EXAMPLES:
        n += 1
    return n


def check_carve(source: str, n: int, carved: Sequence[str], plan: Callable[[int], Sequence[int]],
                files_hint: bool = True) -> None:
    """Refuse to carve ``carved`` (split names) out of ``n`` training examples when the rest
    would be fewer than :data:`MIN_TRAIN_EXAMPLES`.

    Args:
        source: the file the examples come from (named in the message).
        n: its number of examples.
        carved: the splits carved out of it, in ``plan``'s order.
        plan: the sizes of the carved splits for a file of a given size.
        files_hint: say that a file for each carved split would do too (a folder's train file).

    Raises:
        ValueError: with the sizes the carve would give and the fewest rows that would do.
    """
    if not carved:
        return
    sizes = list(plan(n))
    left = n - sum(sizes)
    if left >= MIN_TRAIN_EXAMPLES:
        return
    parts = " and ".join(f"{split} ({size})" for split, size in zip(carved, sizes))
    hint = f", or add {' and '.join(f'a {s} file' for s in carved)}" if files_hint else ""
    raise ValueError(
        f"{source}: {n} example{'s' if n != 1 else ''}; carving {parts} out of them leaves train "
        f"{max(left, 0)}; {MINIMUMS}, so this file needs at least {_fewest_rows(plan)} rows{hint}"
    )


def _class_list(labels: np.ndarray, names: Sequence[str] | None) -> list:
    ids = sorted(int(y) for y in np.unique(labels))
    return [names[i] if names is not None and 0 <= i < len(names) else i for i in ids]


def check_task(task: "TaskData", sources: Mapping[str, str]) -> None:
    """Check a task's splits: sizes, classes, class ids.  Called by every loader of a user's or
    GLUE data (:func:`kd_env.data.load_local`, :func:`kd_env.data.load_glue`) on what it built.

    Args:
        task: the task, its splits built.
        sources: split name -> where it came from (a file, "carved from <file>", a hub split),
            named in the messages.

    Raises:
        ValueError: a split below its minimum size (with its size and the minimums), fewer than
            two classes in train (with the classes found), or a class id outside
            ``0..num_labels-1`` (with the valid range).
    """
    for split in ("train", "dev", "test"):
        if split not in task.splits:
            continue
        n = len(task.splits[split])
        least = MIN_TRAIN_EXAMPLES if split == "train" else MIN_EVAL_EXAMPLES
        if n < least:
            raise ValueError(f"{sources.get(split, task.name)}: {split} has {n} example{'s' if n != 1 else ''}; "
                             f"{MINIMUMS}; add examples")
    if task.is_regression:
        return
    names = task.label_names
    for split, data in task.splits.items():
        labels = np.asarray(data.labels)
        bad = labels[(labels < 0) | (labels >= task.num_labels)]
        if bad.size:
            raise ValueError(f"{sources.get(split, task.name)}: {split} has class id {int(bad[0])}; class ids of "
                             f"task {task.name!r} must be 0..{task.num_labels - 1} ({task.num_labels} classes)")
    train = task.splits["train"]
    found = _class_list(train.labels, names)
    if len(found) < 2:
        others = {split: _class_list(s.labels, names) for split, s in task.splits.items() if split != "train"}
        raise ValueError(f"{sources.get('train', task.name)}: train has {len(found)} class ({found}); a classification "
                         f"task needs at least 2 classes in train (classes found in the other splits: {others})")
