"""The teacher's outputs for the student: cached on disk (:class:`TeacherCache`) or computed on
every batch (:class:`LiveTeacher`).

The teacher's outputs on the distillation examples (logits; hidden states at the mapped layers,
[CLS] only or every token; attention maps) are computed in one pass and stored as memory-mapped
``.npy`` files under the cache root (``$KD_ENV_CACHE`` or ``~/.cache/kd_env``), so no distillation
step of any episode runs the teacher.

A cache folder is keyed by a hash of everything its content depends on (teacher weights, task
split content, tokenizer, ``max_len``, layer map, stored fields).  It is written to a temporary
folder and renamed into place only when complete, with a manifest holding the key and a
checksum per file; at open the key, the shapes and the checksums are checked, and a cache that
fails any check is deleted and rebuilt, never used.  :mod:`kd_env.teacher` (the teacher's
fine-tuning) re-exports these names.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .batching import BatchSampler, to_device, tokens_per_example
from .io import atomic_write_json, progress_bar
from .io import fsync_dir as _fsync_dir
from .models import ModelOutputs, align_teacher
from .runtime import autocast

__all__ = ["CACHE_FORMAT", "CacheError", "cache_root", "fingerprint_module", "TeacherCache", "LiveTeacher"]

CACHE_FORMAT = 1


class CacheError(RuntimeError):
    """A teacher cache failed a check (missing, truncated, corrupt or built for other inputs)."""


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache root: ``override``, else ``$KD_ENV_CACHE``, else ``~/.cache/kd_env``."""
    root = override or os.environ.get("KD_ENV_CACHE") or Path.home() / ".cache" / "kd_env"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def fingerprint_module(module: nn.Module) -> str:
    """A hash of a module's parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


class LiveTeacher:
    """Runs the teacher on every batch (what KD toolkits do), in ``precision`` as a cache would be
    built; same interface as the cache."""

    def __init__(self, teacher: nn.Module, mapping: Sequence[int], fields: Sequence[str], device: torch.device,
                 precision: str = "fp32"):
        self.teacher = teacher.to(device).eval()
        self.mapping = list(mapping)
        self.fields = tuple(fields)
        self.device = device
        self.precision = precision

    @torch.no_grad()
    def outputs(self, batch: dict[str, torch.Tensor]) -> ModelOutputs:
        with autocast(self.precision, self.device):
            out = align_teacher(self.teacher(batch, attentions="attentions" in self.fields), self.mapping)
        return out.float()

    def close(self) -> None:
        pass


class TeacherCache:
    """Memory-mapped teacher outputs for one split, read by example index.

    Use :meth:`build_or_open`; the constructor opens an existing, verified folder.

    Files: ``logits.npy`` (N, C) float32; ``hidden_pooled.npy`` and ``hidden_cls.npy``
    (N, k+1, H) float16 (each mapped layer's sentence vector under the teacher's pooling, and
    its first token);
    ``hidden_tokens.npy`` (total tokens, k+1, H) float16 with ``token_offsets.npy`` (N+1,);
    ``attentions.npy`` (flat float16) with ``attention_offsets.npy`` (N+1,).
    """

    FIELDS = ("logits", "hidden_pooled", "hidden_cls", "hidden_tokens", "attentions")
    #: per-example arrays up to this size (as float32) are read into memory once at open (every step then
    #: gathers its rows with one torch index instead of sorting, reading and re-ordering the
    #: memory map: most of the digits step's cache read)
    HOLD_BYTES = 64 * 2**20

    def __init__(self, path: str | os.PathLike, key: str, verify: str = "full", device: torch.device | None = None):
        self.path = Path(path)
        self.device = device or torch.device("cpu")
        self.manifest = self._verify(self.path, key, verify)
        self.fields = tuple(self.manifest["fields"])
        self.num_layers = int(self.manifest["num_layers"])
        self.num_heads = int(self.manifest.get("num_heads", 0))
        self.arrays = {name: np.load(self.path / info["file"], mmap_mode="r")
                       for name, info in self.manifest["files"].items()}
        self.held = {name: torch.from_numpy(np.array(self.arrays[name], dtype=np.float32))  # float32: read as used
                     for name in ("logits", "hidden_pooled", "hidden_cls")
                     if name in self.arrays and self.arrays[name].size * 4 <= self.HOLD_BYTES}

    # ---- checks ---------------------------------------------------------------------------
    @staticmethod
    def _verify(path: Path, key: str, verify: str) -> dict:
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise CacheError(f"{path}: no manifest (incomplete or not a teacher cache)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise CacheError(f"{path}: unreadable manifest ({exc})") from None
        if manifest.get("format") != CACHE_FORMAT:
            raise CacheError(f"{path}: cache format {manifest.get('format')} != {CACHE_FORMAT}")
        if manifest.get("key") != key:
            raise CacheError(f"{path}: built for other inputs (key {manifest.get('key')} != {key})")
        for info in manifest.get("files", {}).values():
            f = path / info["file"]
            if not f.exists():
                raise CacheError(f"{path}: missing {info['file']}")
            if f.stat().st_size != info["bytes"]:
                raise CacheError(f"{path}: {info['file']} has {f.stat().st_size} bytes, expected {info['bytes']} (truncated?)")
            if verify == "full" and _file_sha256(f) != info["sha256"]:
                raise CacheError(f"{path}: checksum mismatch in {info['file']} (corrupt)")
            try:
                arr = np.load(f, mmap_mode="r")
            except ValueError as exc:
                raise CacheError(f"{path}: {info['file']} is not a valid array ({exc})") from None
            if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
                raise CacheError(f"{path}: {info['file']} shape/dtype {arr.shape}/{arr.dtype} != manifest")
        return manifest

    # ---- build ----------------------------------------------------------------------------
    @staticmethod
    def cache_key(teacher_fingerprint: str, split_fingerprint: str, tokenizer_key: str, max_len: int,
                  mapping: Sequence[int], fields: Sequence[str], precision: str = "fp32") -> str:
        ident = {"format": CACHE_FORMAT, "teacher": teacher_fingerprint, "split": split_fingerprint,
                 "tokenizer": tokenizer_key, "max_len": max_len, "mapping": list(mapping), "fields": sorted(fields)}
        if precision != "fp32":  # fp32 caches keep the keys they had before precision was an option
            ident["precision"] = precision
        payload = json.dumps(ident, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    @classmethod
    def build_or_open(cls, root: str | os.PathLike, key: str, teacher: nn.Module, sampler: BatchSampler,
                      mapping: Sequence[int], fields: Sequence[str], device: torch.device,
                      batch_size: int = 64, verify: str = "full", progress: bool = True,
                      precision: str = "fp32") -> "TeacherCache":
        """Open the cache for ``key`` under ``root``; build it (atomically, the teacher running in
        ``precision``) when absent or bad."""
        root = Path(root)
        path = root / key
        if path.exists():
            try:
                return cls(path, key, verify=verify, device=device)
            except CacheError as exc:
                import warnings

                warnings.warn(f"teacher cache rejected, rebuilding: {exc}", RuntimeWarning, stacklevel=2)
                shutil.rmtree(path, ignore_errors=True)
        cls.build(path, key, teacher, sampler, mapping, fields, device, batch_size, progress, precision)
        return cls(path, key, verify="size", device=device)

    @staticmethod
    def _placed_by_another(path: Path, key: str) -> bool:
        """Whether a complete cache for ``key`` is at ``path`` (another process built the same
        outputs meanwhile: keep it, since readers may hold it open); a bad one there is removed."""
        if not path.exists():
            return False
        try:
            TeacherCache._verify(path, key, "size")
            return True
        except CacheError:
            shutil.rmtree(path, ignore_errors=True)
            return False

    @staticmethod
    @torch.no_grad()
    def build(path: Path, key: str, teacher: nn.Module, sampler: BatchSampler, mapping: Sequence[int],
              fields: Sequence[str], device: torch.device, batch_size: int = 64, progress: bool = True,
              precision: str = "fp32") -> None:
        """Compute the teacher outputs for every example of ``sampler`` (the teacher running in
        ``precision``: ``fp32`` or ``bf16`` autocast) and write them to ``path``."""
        fields = [f for f in TeacherCache.FIELDS if f in set(fields) | {"logits"}]
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            teacher = teacher.to(device).eval()
            n = len(sampler)
            lengths = tokens_per_example(sampler)
            k1 = len(mapping)
            if sampler.kind != "text" and "hidden_tokens" in fields:
                # feature inputs have one "token": every-token states are the [CLS] states
                fields = [f for f in TeacherCache.FIELDS if f in (set(fields) - {"hidden_tokens"}) | {"hidden_cls"}]
            pooling = getattr(teacher, "pooling", "cls")
            probe = teacher(sampler.batch(np.arange(min(2, n))), attentions="attentions" in fields)
            aligned = align_teacher(probe, mapping)
            widths = [int(h.shape[-1]) for h in aligned.hidden]
            width = max(widths)
            num_labels = aligned.logits.shape[-1]
            heads = aligned.attentions[0].shape[1] if aligned.attentions else 0
            tok_off = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=tok_off[1:])
            att_sizes = (k1 - 1) * heads * lengths.astype(np.int64) ** 2
            att_off = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(att_sizes, out=att_off[1:])
            from numpy.lib.format import open_memmap

            arrays: dict[str, np.ndarray] = {"logits": open_memmap(tmp / "logits.npy", "w+", np.float32, (n, num_labels))}
            for name in ("hidden_pooled", "hidden_cls"):
                if name in fields:
                    arrays[name] = open_memmap(tmp / f"{name}.npy", "w+", np.float16, (n, k1, width))
            if "hidden_tokens" in fields:
                arrays["hidden_tokens"] = open_memmap(tmp / "hidden_tokens.npy", "w+", np.float16,
                                                      (int(tok_off[-1]), k1, width))
                arrays["token_offsets"] = open_memmap(tmp / "token_offsets.npy", "w+", np.int64, (n + 1,))
                arrays["token_offsets"][:] = tok_off
            if "attentions" in fields:
                arrays["attentions"] = open_memmap(tmp / "attentions.npy", "w+", np.float16, (int(att_off[-1]),))
                arrays["attention_offsets"] = open_memmap(tmp / "attention_offsets.npy", "w+", np.int64, (n + 1,))
                arrays["attention_offsets"][:] = att_off
            order = np.argsort(lengths, kind="stable")
            batches = range(0, n, batch_size)
            for start in progress_bar(batches, len(batches), "cache teacher outputs", progress, leave=False):
                idx = order[start : start + batch_size]
                batch = to_device(sampler.batch(idx), device)
                with autocast(precision, device):
                    out = align_teacher(teacher(batch, attentions="attentions" in fields), mapping)
                arrays["logits"][idx] = out.logits.float().cpu().numpy()
                hidden = [h.float().cpu() for h in out.hidden]
                if "hidden_cls" in fields or "hidden_tokens" in fields:
                    hidden = [nn.functional.pad(h, (0, width - h.shape[-1])) for h in hidden]
                    stacked = torch.stack(hidden, dim=2).numpy()  # (B, T, k+1, W)
                if "hidden_cls" in fields:
                    arrays["hidden_cls"][idx] = stacked[:, 0]
                if "hidden_pooled" in fields:
                    pooled = [nn.functional.pad(out.pooled(j).float().cpu(), (0, width - w)) for j, w in enumerate(widths)]
                    arrays["hidden_pooled"][idx] = torch.stack(pooled, dim=1).numpy()
                for row, i in enumerate(idx):
                    length = int(lengths[i])
                    if "hidden_tokens" in fields:
                        arrays["hidden_tokens"][tok_off[i] : tok_off[i + 1]] = stacked[row, :length]
                    if "attentions" in fields:
                        att = torch.stack([a[row, :, :length, :length] for a in out.attentions]).float().cpu().numpy()  # type: ignore[union-attr]
                        arrays["attentions"][att_off[i] : att_off[i + 1]] = att.reshape(-1)
            files = {}
            for name, arr in arrays.items():
                arr.flush()  # type: ignore[attr-defined]  # np.memmap arrays
                fname = f"{name}.npy"
                del arr
                f = tmp / fname
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
                files[name] = {"file": fname, "bytes": f.stat().st_size, "sha256": _file_sha256(f),
                               "shape": list(np.load(f, mmap_mode="r").shape),
                               "dtype": str(np.load(f, mmap_mode="r").dtype)}
            arrays.clear()
            manifest = {"format": CACHE_FORMAT, "key": key, "fields": fields, "num_examples": n, "pooling": pooling,
                        "precision": precision,
                        "num_layers": k1, "num_heads": heads, "hidden_widths": widths,
                        "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write_json(tmp / "manifest.json", manifest)
            _fsync_dir(tmp)
            if TeacherCache._placed_by_another(path, key):
                shutil.rmtree(tmp, ignore_errors=True)
                return
            try:
                os.replace(tmp, path)
            except OSError:  # another process placed its copy between the check and the rename
                if not TeacherCache._placed_by_another(path, key):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return
            _fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # ---- read -----------------------------------------------------------------------------
    def size_bytes(self) -> int:
        return sum(info["bytes"] for info in self.manifest["files"].values())

    def outputs(self, batch: dict[str, torch.Tensor]) -> ModelOutputs:
        """Teacher outputs for ``batch`` (by its ``index``), aligned to the student and padded to
        the batch's token width."""
        idx = batch["index"].cpu().numpy()
        logits = self._rows("logits", idx)
        mask = batch.get("attention_mask")
        widths = self.manifest.get("hidden_widths")
        hidden: list[torch.Tensor] = []
        if "hidden_tokens" in self.fields and mask is not None:
            tokens, offs = self.arrays["hidden_tokens"], self.arrays["token_offsets"]
            starts, ends = np.asarray(offs[idx]), np.asarray(offs[idx + 1])
            # gathered as stored (float16), then one float32 copy per layer: a quarter of the bytes
            # written of a float32 (B, T, k+1, W) buffer, and contiguous per-layer states
            buf = np.zeros((len(idx), mask.shape[1], self.num_layers, tokens.shape[-1]), tokens.dtype)
            for row, (a, b) in enumerate(zip(starts, ends)):
                buf[row, : b - a] = tokens[a:b]
            full = torch.from_numpy(buf)
            hidden = [full[:, :, j].float() for j in range(self.num_layers)]
        elif "hidden_pooled" in self.fields or "hidden_cls" in self.fields:
            name = "hidden_pooled" if "hidden_pooled" in self.fields else "hidden_cls"
            full = self._rows(name, idx).float()  # (B, k+1, W)
            hidden = [full[:, j].unsqueeze(1) for j in range(self.num_layers)]
        if widths and hidden:
            hidden = [h[..., : int(w)] for h, w in zip(hidden, widths)]
        attentions = None
        if "attentions" in self.fields:
            offs = self.arrays["attention_offsets"]
            width_t = mask.shape[1]  # type: ignore[union-attr]
            k, heads = self.num_layers - 1, self.num_heads
            buf = np.zeros((k, len(idx), heads, width_t, width_t), np.float32)
            for row, i in enumerate(idx):
                a, b = int(offs[i]), int(offs[i + 1])
                length = int(round(math.sqrt((b - a) / max(1, k * heads))))
                buf[:, row, :, :length, :length] = np.asarray(self.arrays["attentions"][a:b]).reshape(k, heads, length, length)
            attentions = [torch.from_numpy(buf[j]) for j in range(k)]
        dev = self.device
        return ModelOutputs(logits=logits.to(dev), hidden=[h.to(dev) for h in hidden],
                            attentions=None if attentions is None else [a.to(dev) for a in attentions],
                            cls=None, mask=None if mask is None else mask.to(dev),
                            pooling=self.manifest.get("pooling", "cls"))

    def _rows(self, name: str, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (in that order) of the per-example array ``name`` (held: float32; else as stored)."""
        if name in self.held:
            return self.held[name].index_select(0, torch.from_numpy(idx))
        # fancy indexing on a memmap needs sorted indices for speed; undo the sort
        rows = np.asarray(self.arrays[name][np.sort(idx)])
        return torch.from_numpy(rows[np.argsort(np.argsort(idx))])

    def close(self) -> None:
        self.arrays = {}
        self.held = {}
