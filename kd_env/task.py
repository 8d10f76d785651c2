"""What a task is: its splits (:class:`Split`: texts or feature vectors, and labels) and how it is
scored (:class:`TaskData`).  :mod:`kd_env.data` loads tasks (and re-exports these names)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["Split", "TaskData"]


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
