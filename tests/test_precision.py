"""Numeric precision of the teacher: the config value, how ``auto`` resolves, and bf16 fine-tuning
and caching that record their precision and are kept apart from fp32 ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kd_env.runtime as runtime
from kd_env import DistillConfig, build_distiller, get_preset
from kd_env.batching import BatchSampler
from kd_env.build import teacher_precision
from kd_env.data import load_task
from kd_env.models import MLPClassifier
from kd_env.runtime import autocast, cpu_has_fast_bf16, resolve_precision
from kd_env.teacher import TeacherCache, train_classifier

CPU = torch.device("cpu")


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", "FP32", ""])
def test_bad_precision_names_the_valid_ones(bad):
    with pytest.raises(ValueError, match=r"config\.precision must be one of \['auto', 'fp32', 'bf16'\]"):
        DistillConfig(precision=bad)
    with pytest.raises(ValueError, match=r"\['auto', 'fp32', 'bf16'\]"):
        resolve_precision(bad, CPU)
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        autocast("auto", CPU)


def test_precision_defaults_to_auto_and_survives_a_round_trip():
    assert DistillConfig().precision == "auto"
    assert DistillConfig.from_dict(DistillConfig(precision="bf16").to_dict()).precision == "bf16"


@pytest.mark.parametrize("flags, expected", [("fpu sse avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", True),
                                             ("fpu sse avx512f avx512_bf16", True),
                                             ("fpu sse avx2 avx512f", False)])
def test_bf16_support_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_fast_bf16(str(cpuinfo)) is expected
    assert cpu_has_fast_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("amx, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu_flag(monkeypatch, amx, expected):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: amx)
    assert resolve_precision("auto", CPU) == expected
    # explicit values are kept whatever the CPU
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_auto_keeps_mlp_teachers_in_fp32(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    task = load_task("digits", seed=0)
    assert teacher_precision(get_preset("quick"), task, CPU) == "fp32"
    assert teacher_precision(get_preset("quick", precision="bf16"), task, CPU) == "bf16"


def test_bf16_fine_tuning_runs_and_records_its_precision():
    task = load_task("digits", seed=0)
    sampler = BatchSampler(task, task["train"])
    summaries = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = MLPClassifier(task["train"].features.shape[1], [64], task.num_labels)
        summaries[precision] = train_classifier(model, sampler, epochs=1, lr=3e-3, batch_size=64, seed=0,
                                                device=CPU, max_steps=12, progress=False, precision=precision)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert summaries["fp32"]["precision"] == "fp32" and summaries["bf16"]["precision"] == "bf16"
    # same start, same batches: bf16 rounding moves the loss a little, not a lot
    assert np.isfinite(summaries["bf16"]["final_loss"])
    assert summaries["bf16"]["final_loss"] != summaries["fp32"]["final_loss"]
    assert summaries["bf16"]["final_loss"] == pytest.approx(summaries["fp32"]["final_loss"], rel=0.1)


def _text_config(tiny_bert_dir, text_csv, **changes) -> DistillConfig:
    return DistillConfig(task=str(text_csv), teacher=str(tiny_bert_dir), student_layers=1, max_len=16,
                         batch_size=8, total_steps=2, steps_per_action=2, teacher_max_steps=2, train_examples=24,
                         dev_probe_size=16, progress=False, knowledge=("finetune", "response", "feature"),
                         **changes)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bf16_text_teacher_is_cached_apart_and_records_its_precision(tiny_bert_dir, text_csv, pooling):
    fp32 = build_distiller(_text_config(tiny_bert_dir, text_csv, precision="fp32", pooling=pooling))
    bf16 = build_distiller(_text_config(tiny_bert_dir, text_csv, precision="bf16", pooling=pooling))
    assert fp32.teacher_metrics["precision"] == "fp32" and "precision" not in fp32.teacher_metrics["ident"]
    assert bf16.teacher_metrics["precision"] == bf16.teacher_metrics["fine_tune"]["precision"] == "bf16"
    assert bf16.teacher_metrics["ident"]["precision"] == "bf16"
    assert bf16.teacher.manifest["precision"] == "bf16" and fp32.teacher.manifest["precision"] == "fp32"
    assert bf16.teacher.path != fp32.teacher.path
    phase = bf16.train_phase(np.ones(3))
    assert phase.trained_steps == 2 and np.all(np.isfinite(phase.losses))
    # the bf16 cache holds what the teacher gives under bf16 autocast, in float32 for the student
    out = bf16.teacher.outputs(bf16._train_batch(np.arange(8)))
    assert out.logits.dtype == torch.float32 and all(h.dtype == torch.float32 for h in out.hidden)
    assert bf16.teacher.manifest["pooling"] == pooling
    again = build_distiller(_text_config(tiny_bert_dir, text_csv, precision="bf16", pooling=pooling))
    assert again.teacher.path == bf16.teacher.path and again.teacher_metrics["precision"] == "bf16"
    for d in (fp32, bf16, again):
        d.close()


def test_auto_on_an_amx_cpu_fine_tunes_the_text_teacher_in_bf16(tiny_bert_dir, text_csv, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    d = build_distiller(_text_config(tiny_bert_dir, text_csv))
    assert d.config.precision == "auto" and d.teacher_metrics["precision"] == "bf16"
    live = build_distiller(_text_config(tiny_bert_dir, text_csv, use_teacher_cache=False))
    assert live.teacher.precision == "bf16"
    batch = d._train_batch(np.arange(8))
    # the same bf16 teacher, run live or read from the cache (padded differently: bf16 tolerance)
    torch.testing.assert_close(live.teacher.outputs(batch).logits, d.teacher.outputs(batch).logits,
                               rtol=2e-2, atol=1e-2)
    d.close()
    live.close()


def test_cache_key_keeps_fp32_keys_and_separates_bf16():
    args = ("teacher", "split", "tok:1", 16, [0, 2], ["logits"])
    assert TeacherCache.cache_key(*args) == TeacherCache.cache_key(*args, precision="fp32")
    assert TeacherCache.cache_key(*args, precision="bf16") != TeacherCache.cache_key(*args)


def test_student_precision_defaults_to_fp32_and_auto_follows_the_teacher_rule(monkeypatch):
    from kd_env.build import student_precision

    assert DistillConfig().student_precision == "fp32"
    with pytest.raises(ValueError, match=r"config\.student_precision must be one of \['auto', 'fp32', 'bf16'\]"):
        DistillConfig(student_precision="half")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    digits = load_task("digits", seed=0)
    assert student_precision(get_preset("quick", student_precision="auto"), digits, CPU) == "fp32"  # MLP
    assert student_precision(get_preset("quick", student_precision="bf16"), digits, CPU) == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert student_precision(get_preset("text3", student_precision="auto"), digits, CPU) == "fp32"


def test_bf16_student_trains_under_autocast_with_fp32_weights_and_losses(tiny_bert_dir, text_csv):
    """A bf16 student step: its linear layers run in bf16 (checked by a hook), its weights,
    gradients and knowledge losses stay fp32, the losses are those of the fp32 step to bf16
    accuracy, and evaluation is fp32 (the same metric as an fp32 model with those weights)."""
    fp32 = build_distiller(_text_config(tiny_bert_dir, text_csv, precision="fp32"))
    bf16 = build_distiller(_text_config(tiny_bert_dir, text_csv, precision="fp32", student_precision="bf16"))
    try:
        assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
        seen = []
        hook = next(m for m in bf16.student.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(
            lambda m, i, o: seen.append(o.dtype))
        batch = bf16._train_batch(np.arange(8))
        bf16.student.eval()  # no dropout: the two forward passes differ only by precision
        fp32.student.eval()
        with torch.no_grad():
            terms, values, out, _ = bf16._losses(batch, [], [0, 1, 2])
            ref_terms, _, _, _ = fp32._losses(batch, [], [0, 1, 2])
        hook.remove()
        assert seen == [torch.bfloat16]
        assert out.logits.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
        for i in terms:
            torch.testing.assert_close(terms[i], ref_terms[i], rtol=5e-2, atol=1e-3)
        before = {n: p.detach().clone() for n, p in bf16.student.named_parameters() if p.requires_grad}
        phase = bf16.train_phase(np.ones(3))
        assert phase.trained_steps == 2 and np.all(np.isfinite(phase.losses)) and not phase.crashed
        moved = [n for n, p in bf16.student.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
        assert moved and all(p.dtype == torch.float32 for p in bf16.student.parameters())
        # evaluation runs in fp32 whatever the training precision
        fp32.student.load_state_dict(bf16.student.state_dict())
        assert bf16.evaluate("probe") == fp32.evaluate("probe")
    finally:
        fp32.close()
        bf16.close()
