"""Tokenization and batching: a split encoded once (unpadded), batches padded to their longest
example (dynamic padding), and the sampler that turns a split into batches."""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any, Iterable

import numpy as np
import torch

from .task import Split, TaskData

__all__ = ["encode_split", "collate", "BatchSampler", "to_device", "tokens_per_example", "length_grouped_order",
           "tokenizer_fingerprint"]


_ENCODE_CACHE: dict[tuple, list[dict[str, np.ndarray]]] = {}


def _tokenizer_key(tokenizer: Any) -> str:
    return f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}:{len(tokenizer)}"


#: a fixed text whose encoding shows how a tokenizer normalises (case, accents, punctuation)
_PROBE_TEXT = "Kd-Env probe: Ünïcode, CAPS & digits 123... don't"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What a tokenizer does, independent of where it is installed: its class, vocabulary,
    special tokens and the ids it gives a fixed probe text (sha256, 24 hex digits).  The teacher
    cache is keyed on it, so that two installs of the same model share one cache (keyed on the
    install path, every fresh virtual environment rebuilt its own 177 MB cache)."""
    if tokenizer is None:
        return "none"
    try:
        size, digest = _FINGERPRINTS[tokenizer]
        if size == len(tokenizer):  # tokens added since: computed afresh
            return digest
    except (KeyError, TypeError):
        pass
    ident = {"class": type(tokenizer).__name__, "size": len(tokenizer),
             "vocab": sorted(tokenizer.get_vocab().items()),
             "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
             "probe": [int(i) for i in tokenizer(_PROBE_TEXT)["input_ids"]]}
    digest = hashlib.sha256(json.dumps(ident, ensure_ascii=False).encode()).hexdigest()[:24]
    try:
        _FINGERPRINTS[tokenizer] = (len(tokenizer), digest)
    except TypeError:  # not weak-referenceable: computed again next time
        pass
    return digest


_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[int, str]]" = weakref.WeakKeyDictionary()


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


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``batch``'s tensors on ``device`` (copied without blocking where the device allows)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def tokens_per_example(sampler: BatchSampler) -> np.ndarray:
    """Number of tokens of each example (text) or ones (features)."""
    if sampler.kind != "text":
        return np.ones(len(sampler), dtype=np.int64)
    return np.asarray([len(e["input_ids"]) for e in sampler.encoded], dtype=np.int64)



def length_grouped_order(order: np.ndarray, lengths: np.ndarray, batch_size: int, group: int,
                         rng: np.random.Generator) -> np.ndarray:
    """``order`` rearranged so that each run of ``batch_size`` consecutive entries is a batch of
    examples of similar length (dynamic padding then pads little), still random at the scale of
    the epoch.

    ``order`` (a shuffled permutation) is cut into megabatches of ``group`` batches; each
    megabatch is sorted by length (longest first, ties in shuffled order) and cut into batches,
    and the batches of a megabatch are shuffled with ``rng``.  Examples left over after the last
    full batch stay at the end, so the batch boundaries fall every ``batch_size`` entries.  With
    ``group`` <= 1 the order is returned unchanged (the batches are plain random batches).
    """
    order = np.asarray(order)
    if group <= 1 or len(order) < batch_size:
        return order
    full = len(order) - len(order) % batch_size
    out = []
    for start in range(0, full, group * batch_size):
        mega = order[start : min(full, start + group * batch_size)]
        mega = mega[np.argsort(-lengths[mega], kind="stable")]
        batches = mega.reshape(-1, batch_size)
        out.append(batches[rng.permutation(len(batches))].reshape(-1))
    out.append(order[full:])
    return np.concatenate(out)
