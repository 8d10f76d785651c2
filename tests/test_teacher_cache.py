"""The on-disk teacher-output cache: equal to running the teacher, keyed by its inputs, and never
used when damaged."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kd_env.batching import BatchSampler
from kd_env.knowledge import make_knowledge
from kd_env.data import load_task
from kd_env.models import MLPClassifier, ModelOutputs, SequenceClassifier, layer_map, load_hf_classifier, load_tokenizer
from kd_env.teacher import CacheError, LiveTeacher, TeacherCache, fingerprint_module

CPU = torch.device("cpu")
ALL_FIELDS = ("logits", "hidden_cls", "hidden_tokens", "attentions")
# rows of the training split, deliberately unsorted and of different lengths
BATCH_ROWS = [7, 0, 33, 12, 5, 60]


class TextSetup:
    def __init__(self, tiny_bert_dir: Path, text_csv: Path):
        self.task = load_task(str(text_csv))
        self.tokenizer = load_tokenizer(str(tiny_bert_dir))
        self.teacher = SequenceClassifier(load_hf_classifier(str(tiny_bert_dir), 2, attentions=True)).eval()
        self.sampler = BatchSampler(self.task, self.task["train"], self.tokenizer, max_len=16)
        self.mapping = layer_map(self.teacher.num_layers, 2, "skip")
        self.batch = self.sampler.batch(np.array(BATCH_ROWS))

    def key(self, fields=ALL_FIELDS, **changes) -> str:
        args = {"teacher_fingerprint": fingerprint_module(self.teacher),
                "split_fingerprint": self.task["train"].fingerprint(), "tokenizer_key": "tiny:107",
                "max_len": 16, "mapping": self.mapping, "fields": fields}
        args.update(changes)
        return TeacherCache.cache_key(**args)

    def open(self, root: Path, fields=ALL_FIELDS) -> TeacherCache:
        return TeacherCache.build_or_open(root, self.key(fields), self.teacher, self.sampler, self.mapping,
                                          fields, CPU, batch_size=16, progress=False)

    def live(self, fields=ALL_FIELDS) -> ModelOutputs:
        return LiveTeacher(self.teacher, self.mapping, fields, CPU).outputs(self.batch)


@pytest.fixture(scope="module")
def text(tiny_bert_dir, text_csv) -> TextSetup:
    return TextSetup(tiny_bert_dir, text_csv)


def assert_matches_live(cached: ModelOutputs, live: ModelOutputs, mask: torch.Tensor | None) -> None:
    """Cached outputs equal live ones on real tokens (fp16 tolerance) and are zero on padding."""
    torch.testing.assert_close(cached.logits, live.logits, rtol=1e-5, atol=1e-5)
    assert len(cached.hidden) == len(live.hidden)
    for hc, hl in zip(cached.hidden, live.hidden):
        assert hc.shape == hl.shape and hc.dtype == torch.float32
        if mask is None:
            torch.testing.assert_close(hc, hl, rtol=1e-2, atol=1e-2)
            continue
        real = mask.bool()
        torch.testing.assert_close(hc[real], hl[real], rtol=1e-2, atol=1e-2)
        assert bool((hc[~real] == 0).all())
    if live.attentions is None:
        assert cached.attentions is None
        return
    assert len(cached.attentions) == len(live.attentions)
    real = mask.bool()
    pair = (real[:, None, :, None] & real[:, None, None, :]).expand_as(live.attentions[0])
    for ac, al in zip(cached.attentions, live.attentions):
        assert ac.shape == al.shape
        torch.testing.assert_close(ac[pair], al[pair], rtol=1e-2, atol=2e-3)
        assert bool((ac[~pair] == 0).all())


def test_text_cache_equals_live_teacher(text, tmp_path):
    cache = text.open(tmp_path)
    assert cache.path == tmp_path / text.key()
    assert set(cache.fields) == set(ALL_FIELDS) and cache.num_layers == len(text.mapping) == 3
    assert cache.num_heads == 4 and cache.manifest["num_examples"] == len(text.sampler)
    mask = text.batch["attention_mask"]
    assert int(mask.sum(1).min()) < mask.shape[1]  # the batch really has padding
    out = cache.outputs(text.batch)
    assert out.hidden[0].shape == (len(BATCH_ROWS), mask.shape[1], 32)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (len(BATCH_ROWS), 4, mask.shape[1], mask.shape[1])
    assert_matches_live(out, text.live(), mask)
    # a batch in another order gives the same rows, reordered
    perm = [3, 0, 5, 1, 4, 2]
    again = cache.outputs(text.sampler.batch(np.array(BATCH_ROWS)[perm]))
    torch.testing.assert_close(again.logits, out.logits[perm])


def test_text_cache_cls_only(text, tmp_path):
    fields = ("logits", "hidden_cls")
    cache = text.open(tmp_path, fields)
    assert sorted(p.name for p in cache.path.iterdir()) == ["hidden_cls.npy", "logits.npy", "manifest.json"]
    out = cache.outputs(text.batch)
    live = text.live(fields)
    assert out.attentions is None and live.attentions is None
    assert all(h.shape == (len(BATCH_ROWS), 1, 32) for h in out.hidden)
    for hc, hl in zip(out.hidden, live.hidden):
        torch.testing.assert_close(hc[:, 0], hl[:, 0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out.logits, live.logits, rtol=1e-5, atol=1e-5)


def test_mlp_cache_equals_live_teacher(tmp_path):
    task = load_task("digits")
    torch.manual_seed(0)
    teacher = MLPClassifier(64, [32, 48, 32], 10).eval()
    sampler = BatchSampler(task, task["train"])
    mapping = layer_map(3, 2, "skip")
    assert mapping == [0, 2, 3]
    fields = ("logits", "hidden_cls", "hidden_tokens")
    key = TeacherCache.cache_key(fingerprint_module(teacher), task["train"].fingerprint(), "none", 0, mapping, fields)
    cache = TeacherCache.build_or_open(tmp_path, key, teacher, sampler, mapping, fields, CPU, progress=False)
    assert "hidden_tokens" not in cache.fields  # one "token" per example: [CLS] states suffice
    batch = sampler.batch(np.array([100, 3, 57, 999, 0]))
    out = cache.outputs(batch)
    assert [tuple(h.shape) for h in out.hidden] == [(5, 1, 64), (5, 1, 48), (5, 1, 32)]  # per-layer widths
    assert_matches_live(out, LiveTeacher(teacher, mapping, fields, CPU).outputs(batch), None)


def test_rows_held_in_memory_equal_the_memory_mapped_ones(text, tmp_path, monkeypatch):
    """Small per-example arrays are read into memory at open; larger ones stay memory-mapped.
    Both give the same rows, bit for bit, for token states and for [CLS] states."""
    batch = text.sampler.batch(np.array(BATCH_ROWS))  # unsorted rows
    for fields in (("logits", "hidden_cls", "hidden_tokens"), ("logits", "hidden_cls")):
        held = text.open(tmp_path, fields)
        assert set(held.held) == {"logits", "hidden_cls"}
        with monkeypatch.context() as m:
            m.setattr(TeacherCache, "HOLD_BYTES", 0)
            mapped = TeacherCache(held.path, text.key(fields), verify="size")
        assert mapped.held == {}
        a, b = held.outputs(batch), mapped.outputs(batch)
        assert torch.equal(a.logits, b.logits)
        assert len(a.hidden) == len(b.hidden) and all(torch.equal(x, y) for x, y in zip(a.hidden, b.hidden))


def test_cache_key_depends_on_every_input(text):
    base = text.key()
    assert text.key() == base
    assert text.key(fields=tuple(reversed(ALL_FIELDS))) == base  # a set of fields: order is irrelevant
    changed = {
        "teacher": text.key(teacher_fingerprint="0" * 20),
        "split": text.key(split_fingerprint=text.task["dev"].fingerprint()),
        "tokenizer": text.key(tokenizer_key="tiny:108"),
        "max_len": text.key(max_len=17),
        "mapping": text.key(mapping=[0, 1, 3]),
        "fields": text.key(fields=("logits", "hidden_cls")),
    }
    assert len(set(changed.values()) | {base}) == len(changed) + 1
    # and the fingerprints it is made of follow the content
    other = SequenceClassifier(load_hf_classifier(str(text.teacher.model.name_or_path), 2))
    assert fingerprint_module(other) == fingerprint_module(text.teacher)
    with torch.no_grad():
        other.model.classifier.bias.add_(1e-3)
    assert fingerprint_module(other) != fingerprint_module(text.teacher)
    assert text.task["train"].subset([0, 1]).fingerprint() != text.task["train"].subset([1, 0]).fingerprint()


def test_reopening_does_not_rebuild(text, tmp_path, monkeypatch):
    first = text.open(tmp_path)
    first.close()

    def no_build(*args, **kwargs):
        raise AssertionError("an intact cache must be reused, not rebuilt")

    monkeypatch.setattr(TeacherCache, "build", staticmethod(no_build))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = text.open(tmp_path)
    assert_matches_live(again.outputs(text.batch), text.live(), text.batch["attention_mask"])


def _truncate(path: Path, text: TextSetup) -> None:
    f = path / "hidden_tokens.npy"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _flip(path: Path, text: TextSetup) -> None:
    f = path / "hidden_tokens.npy"
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 8):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))  # same size: only the checksum can tell


def _other_key(path: Path, text: TextSetup) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["key"] = text.key(teacher_fingerprint="another-teacher")
    (path / "manifest.json").write_text(json.dumps(manifest))


def _no_manifest(path: Path, text: TextSetup) -> None:
    (path / "manifest.json").unlink()  # as if killed before the manifest was written


def _garbage_manifest(path: Path, text: TextSetup) -> None:
    (path / "manifest.json").write_text("{not json")


def _missing_array(path: Path, text: TextSetup) -> None:
    (path / "attentions.npy").unlink()


@pytest.mark.parametrize("damage", [_truncate, _flip, _other_key, _no_manifest, _garbage_manifest, _missing_array],
                         ids=lambda f: f.__name__.strip("_"))
def test_damaged_cache_is_rejected_and_rebuilt(text, tmp_path, damage):
    cache = text.open(tmp_path)
    path, key = cache.path, text.key()
    cache.close()
    del cache
    damage(path, text)
    with pytest.raises(CacheError):
        TeacherCache(path, key)
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        rebuilt = text.open(tmp_path)
    assert rebuilt.path == path
    TeacherCache(path, key)  # passes every check again
    assert_matches_live(rebuilt.outputs(text.batch), text.live(), text.batch["attention_mask"])


def test_leftover_temporary_folder_is_not_used(text, tmp_path):
    key = text.key()
    # a half-written build from a killed process: a plausible manifest, broken arrays
    source = text.open(tmp_path / "elsewhere")
    leftover = tmp_path / f".{key}.tmp-0badc0de"
    shutil.copytree(source.path, leftover)
    for f in leftover.glob("*.npy"):
        f.write_bytes(b"\x93NUMPY garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is rejected: the leftover is never looked at
        cache = text.open(tmp_path)
    assert cache.path == tmp_path / key
    assert_matches_live(cache.outputs(text.batch), text.live(), text.batch["attention_mask"])
    with pytest.raises(CacheError):
        TeacherCache(leftover, key)


def test_failed_build_leaves_nothing_behind(text, tmp_path):
    class FailingTeacher(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, batch, attentions=False):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("teacher crashed mid-build")
            return self.inner(batch, attentions=attentions)

    teacher = FailingTeacher(text.teacher)
    with pytest.raises(RuntimeError, match="mid-build"):
        TeacherCache.build_or_open(tmp_path, text.key(), teacher, text.sampler, text.mapping, ALL_FIELDS, CPU,
                                   batch_size=16, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_cache_pooled_vectors_equal_live_teacher(tiny_bert_dir, text, tmp_path, pooling):
    """``hidden_pooled`` stores each mapped layer's sentence vector under the teacher's pooling;
    a feature loss on the cached outputs equals the one on the live teacher's."""
    torch.manual_seed(0)
    teacher = SequenceClassifier(load_hf_classifier(str(tiny_bert_dir), 2), pooling).eval()
    fields = ("logits", "hidden_pooled")
    key = text.key(fields, teacher_fingerprint=fingerprint_module(teacher))
    cache = TeacherCache.build_or_open(tmp_path, key, teacher, text.sampler, text.mapping, fields, CPU,
                                       batch_size=16, progress=False)
    assert cache.manifest["pooling"] == pooling
    out = cache.outputs(text.batch)
    live = LiveTeacher(teacher, text.mapping, fields, CPU).outputs(text.batch)
    assert out.pooling == live.pooling == pooling
    for j in range(len(text.mapping)):
        assert out.hidden[j].shape == (len(BATCH_ROWS), 1, 32)
        torch.testing.assert_close(out.pooled(j), live.pooled(j), rtol=1e-2, atol=1e-2)
    if pooling == "mean":  # the mean really differs from the first token
        assert not torch.allclose(live.pooled(2), live.hidden[2][:, 0], atol=1e-3)
    (feature,) = make_knowledge(["feature"])
    student = LiveTeacher(teacher, text.mapping, fields, CPU).outputs(text.batch)
    student.hidden = [h + 0.3 * torch.randn_like(h) for h in student.hidden]
    torch.testing.assert_close(feature(student, out, text.batch), feature(student, live, text.batch),
                               rtol=1e-2, atol=1e-3)


def test_teacher_cache_key_follows_the_tokenizer_not_its_install_path(tiny_bert_dir, tmp_path):
    """Two installs of one model (another virtual environment, another clone) share the teacher
    cache; a tokenizer that encodes differently gets its own."""
    import shutil

    from kd_env.batching import tokenizer_fingerprint
    from kd_env.models import load_tokenizer

    copy = tmp_path / "elsewhere" / "tiny-bert"
    shutil.copytree(tiny_bert_dir, copy)
    first, second = load_tokenizer(str(tiny_bert_dir)), load_tokenizer(str(copy))
    assert first.name_or_path != second.name_or_path
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(second) == tokenizer_fingerprint(first)
    second.add_tokens(["kdenvnewtoken"])  # a tokenizer that changes after its first fingerprint
    assert tokenizer_fingerprint(second) != tokenizer_fingerprint(first)
    assert tokenizer_fingerprint(load_tokenizer(str(copy))) == tokenizer_fingerprint(first)
    assert tokenizer_fingerprint(None) == "none"


def test_a_second_builder_keeps_the_cache_another_process_placed(tmp_path):
    """Two processes building the same cache at once (two runners on a new situation): the one
    that finishes second keeps the first one's complete cache, which readers may hold open,
    instead of deleting it under them; it replaces only a bad one."""
    task = load_task("digits")
    torch.manual_seed(0)
    teacher = MLPClassifier(64, [32, 48, 32], 10).eval()
    sampler = BatchSampler(task, task["train"])
    mapping = layer_map(3, 2, "skip")
    fields = ("logits", "hidden_cls")
    key = TeacherCache.cache_key(fingerprint_module(teacher), task["train"].fingerprint(), "none", 0, mapping, fields)
    first = TeacherCache.build_or_open(tmp_path, key, teacher, sampler, mapping, fields, CPU, progress=False)
    placed = (tmp_path / key / "manifest.json").stat().st_mtime_ns
    reader = first.outputs(sampler.batch(np.arange(4)))
    # the second builder started before the first one's cache existed, and finishes now
    TeacherCache.build(tmp_path / key, key, teacher, sampler, mapping, fields, CPU, progress=False)
    assert (tmp_path / key / "manifest.json").stat().st_mtime_ns == placed  # kept, not replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # its own copy cleaned up
    again = first.outputs(sampler.batch(np.arange(4)))
    torch.testing.assert_close(again.logits, reader.logits)
    # a bad cache in the way is replaced
    (tmp_path / key / "hidden_cls.npy").unlink()
    TeacherCache.build(tmp_path / key, key, teacher, sampler, mapping, fields, CPU, progress=False)
    TeacherCache(tmp_path / key, key, verify="full", device=CPU)
