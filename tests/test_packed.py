"""Issue 41's faster text step: token packing, the relation loss's shared Gram matrices, the
fused optimizer and the evaluation precision.  Each must give the numbers of the path it
replaces (up to float rounding), which these tests compare directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kd_env import DistillConfig, build_distiller
from kd_env.knowledge import fsp_mse, fsp_mse_chain
from kd_env.models import SequenceClassifier, load_hf_classifier, truncate_layers
from kd_env.packed import packed_hidden_states, supports_packing


def _classifier(tiny_bert_dir, pooling: str) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(truncate_layers(load_hf_classifier(str(tiny_bert_dir), 2), [1, 2]), pooling)


def _batch(lengths: list[int], width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (len(lengths), width), generator=gen)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask  # padding id 0 after each sentence, as collate pads
    types = torch.zeros_like(ids)
    types[:, 3:] = 1  # a sentence pair's second segment: token types must follow their tokens
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}


def _no_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    for layer in model.model.base_model.encoder.layer:
        layer.attention.self.dropout.p = 0.0


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_forward_gives_the_padded_forward_outputs(tiny_bert_dir, pooling):
    model = _classifier(tiny_bert_dir, pooling).eval()
    assert model.can_pack and not model.packing
    batch = _batch([9, 2, 5, 9, 1, 7, 3], width=11)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = model(batch)
        assert model.use_packing(True)
        out = model(batch)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cls, ref.cls, rtol=1e-5, atol=1e-5)
    assert len(out.hidden) == len(ref.hidden) == 3
    for h, r in zip(out.hidden, ref.hidden):
        assert h.shape == r.shape
        torch.testing.assert_close(h[mask], r[mask], rtol=1e-5, atol=1e-5)  # every real token
        assert torch.all(h[~mask] == 0)  # padding is zero, not computed


@pytest.mark.parametrize("groups", [1, 2, 3, 7, 50])
def test_packed_states_do_not_depend_on_the_attention_blocks(tiny_bert_dir, groups):
    model = _classifier(tiny_bert_dir, "mean").eval()
    batch = _batch([4, 8, 1, 8, 6, 2, 5], width=8, seed=1)
    with torch.no_grad():
        one = packed_hidden_states(model.model.base_model, batch["input_ids"], batch["attention_mask"],
                                   batch["token_type_ids"], groups=1)
        many = packed_hidden_states(model.model.base_model, batch["input_ids"], batch["attention_mask"],
                                    batch["token_type_ids"], groups=groups)
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_gradients_equal_the_padded_ones(tiny_bert_dir, pooling):
    """In training (dropout off so that both passes draw nothing) every parameter's gradient of a
    loss on the logits and the masked hidden states is the padded forward's."""
    model = _classifier(tiny_bert_dir, pooling).train()
    _no_dropout(model)
    batch = _batch([6, 3, 6, 1, 4], width=6, seed=2)
    m = batch["attention_mask"].unsqueeze(-1).float()
    grads = []
    for packed in (False, True):
        model.use_packing(packed)
        model.zero_grad()
        out = model(batch)
        loss = out.logits.square().sum() + sum(((h * m) ** 2).mean() for h in out.hidden)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_attention_maps_and_other_layouts_use_the_models_own_forward(tiny_bert_dir):
    model = SequenceClassifier(load_hf_classifier(str(tiny_bert_dir), 2, attentions=True), "mean").eval()
    assert model.use_packing(True)
    with torch.no_grad():
        out = model(_batch([3, 5], width=5), attentions=True)
    assert out.attentions is not None and len(out.attentions) == 3  # the padded path gives the maps
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    other = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2,
                                                                 hidden_dim=32, max_position_embeddings=16))
    assert not supports_packing(other.base_model)
    wrapped = SequenceClassifier(other, "mean")
    assert not wrapped.can_pack and wrapped.use_packing(True) is False


def test_relation_chain_equals_the_pairwise_loss():
    gen = torch.Generator().manual_seed(3)
    student = [torch.randn(4, 7, 6, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(4)]
    teacher = [torch.randn(4, 7, 6, dtype=torch.float64, generator=gen) for _ in range(4)]
    mask = torch.ones(4, 7)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    for m in (mask, None):
        pairwise = torch.stack([fsp_mse(student[j - 1], student[j], teacher[j - 1], teacher[j], m)
                                for j in range(1, 4)]).mean()
        chain = fsp_mse_chain(student, teacher, m)
        torch.testing.assert_close(chain, pairwise, rtol=1e-12, atol=0)
        for a, b in zip(torch.autograd.grad(chain, student), torch.autograd.grad(pairwise, student)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def _text_config(tiny_bert_dir, text_csv, **changes) -> DistillConfig:
    return DistillConfig(task=str(text_csv), teacher=str(tiny_bert_dir), student_layers=2, max_len=16,
                         batch_size=8, total_steps=4, steps_per_action=2, teacher_max_steps=2, train_examples=32,
                         dev_probe_size=16, progress=False, precision="fp32", pooling="mean", **changes)


def test_the_text_student_packs_fuses_its_optimizer_and_trains_as_before(tiny_bert_dir, text_csv):
    """Built from a config, the text student packs and uses fused AdamW; the same seed trained
    with packing off (Hugging Face's padded forward) ends with the same weights to float rounding
    when nothing random differs (dropout off)."""
    packed = build_distiller(_text_config(tiny_bert_dir, text_csv))
    padded = build_distiller(_text_config(tiny_bert_dir, text_csv, token_packing=False))
    try:
        assert packed.student.model.packing and not padded.student.model.packing
        assert packed.optimizer.defaults["fused"] and padded.optimizer.defaults["fused"]
        for d in (packed, padded):
            _no_dropout(d.student.model)
            d.reset(0)
            for _ in range(2):
                d.train_phase(np.ones(d.num_knowledge))
        for (name, a), (_, b) in zip(packed.student.named_parameters(), padded.student.named_parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        assert packed.evaluate("test")["main"] == padded.evaluate("test")["main"]
    finally:
        packed.close()
        padded.close()


def test_mlp_students_keep_the_foreach_optimizer():
    d = build_distiller(DistillConfig(task="digits", teacher="mlp", total_steps=2, steps_per_action=1,
                                      teacher_epochs=1, train_examples=64, dev_probe_size=16, progress=False))
    try:
        assert d.optimizer.defaults["foreach"] and not d.optimizer.defaults.get("fused")
    finally:
        d.close()


def test_eval_precision_is_checked_resolved_and_used(tiny_bert_dir, text_csv, monkeypatch):
    with pytest.raises(ValueError, match=r"config\.eval_precision must be one of \['auto', 'fp32', 'bf16'\]"):
        DistillConfig(eval_precision="fp16")
    assert DistillConfig().eval_precision == "fp32"
    from kd_env.config import get_preset

    assert get_preset("text3").eval_precision == "auto"  # the text students evaluate as they train
    d = build_distiller(_text_config(tiny_bert_dir, text_csv, student_precision="bf16", eval_precision="auto"))
    try:
        assert d.eval_precision == "bf16"
        seen = []
        linear = next(m for m in d.student.modules() if isinstance(m, nn.Linear))
        hook = linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        bf16 = d.evaluate("probe")
        d.eval_precision = "fp32"
        fp32 = d.evaluate("probe")
        hook.remove()
        assert set(seen) == {torch.bfloat16, torch.float32}
        assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)
    finally:
        d.close()


# ---- the cheaper dropout mask ---------------------------------------------------------------


def test_dropout_zeroes_the_rate_and_rescales_the_rest():
    from kd_env.packed import dropout

    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, 0.1)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.003  # 6 sigma of a 0.1 rate at 400k draws
    p_used = round(0.1 * 32768) / 32768
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p_used)))
    assert abs(y.mean().item() - 1.0) < 0.004  # inverted dropout keeps the mean
    # both 15-bit fields of the random integers are used, and neither is stuck
    assert 0.09 < 1 - kept[:200_000].float().mean().item() < 0.11
    assert 0.09 < 1 - kept[200_000:].float().mean().item() < 0.11


def test_dropout_off_paths_return_the_input_and_odd_shapes_work():
    from kd_env.packed import dropout

    x = torch.randn(3, 5, 7)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    y = dropout(x, 0.5)  # 105 elements: an odd count
    assert y.shape == x.shape
    assert 0 < int((y == 0).sum()) < x.numel()
    assert torch.allclose(y[y != 0], x[y != 0] * 2)


def test_dropout_is_seeded_by_torch_and_its_gradient_is_the_mask():
    from kd_env.packed import dropout

    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(5)
    a = dropout(x, 0.25)
    torch.manual_seed(5)
    b = dropout(x, 0.25)
    assert torch.equal(a, b)
    a.sum().backward()
    expected = (a.detach() != 0).float() / (1 - round(0.25 * 32768) / 32768)
    assert torch.allclose(x.grad, expected)


def test_attention_with_dropout_is_the_fused_kernel_when_nothing_is_dropped(monkeypatch):
    import kd_env.packed as packed

    torch.manual_seed(1)
    q, k, v = (torch.randn(3, 2, 6, 8) for _ in range(3))
    mask = (torch.arange(6)[None, :] < torch.tensor([6, 4, 2])[:, None])[:, None, None, :]
    fused = packed._attention(q, k, v, mask, 0.0, None)
    monkeypatch.setattr(packed, "dropout", lambda x, p, training=True: x)
    manual = packed._attention(q, k, v, mask, 0.3, None)
    assert torch.allclose(fused, manual, atol=1e-5)
