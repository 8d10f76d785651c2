"""The distillation engine: phases with knowledge weights, budget, state, seeding, crashes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import kd_env
from kd_env import DistillConfig, build_distiller, get_preset
from kd_env.runtime import resolve_threads, usable_cpus
from kd_env.knowledge import KNOWLEDGE_REGISTRY, register_knowledge
from kd_env.teacher import LiveTeacher, TeacherCache, cache_root, fingerprint_module

ONES = np.ones(4)


@pytest.fixture(scope="module")
def quick():
    """The ``quick`` preset's distiller (digits; MLP teacher fine-tuned once per session)."""
    distiller = build_distiller(get_preset("quick"))
    yield distiller
    distiller.close()


@pytest.fixture
def fresh(quick):
    quick.reset(0)
    return quick


def _params(distiller) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in distiller.student.named_parameters()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _moments(distiller) -> dict:
    return {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
            for i, s in distiller.optimizer.state_dict()["state"].items()}


def _same_moments(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[i].keys() == b[i].keys() and all(torch.equal(torch.as_tensor(a[i][k]), torch.as_tensor(b[i][k])) for k in a[i])
        for i in a)


def test_quick_preset_builds(quick):
    cfg = quick.config
    assert cfg.task == "digits" and quick.task.kind == "features"
    assert quick.knowledge_names == list(kd_env.DEFAULT_KNOWLEDGE)
    assert isinstance(quick.teacher, TeacherCache)
    assert quick.teacher.path.parent == cache_root() / "teacher_outputs"
    assert cache_root() == Path(os.environ["KD_ENV_CACHE"])  # the session's sandbox, not ~/.cache
    assert quick.layer_map == [0, 2, 3]  # 3-layer MLP teacher -> 2-layer student, skip
    assert quick.teacher_metrics["test"]["accuracy"] > 0.8  # the teacher learned digits
    assert len(quick.probe_indices) == min(cfg.dev_probe_size, len(quick.dev_data))


def test_zero_weights_phase_changes_nothing_but_the_budget(fresh):
    fresh.train_phase(ONES)  # make optimizer moments exist
    params, moments, step = _params(fresh), _moments(fresh), fresh.step
    result = fresh.train_phase(np.zeros(4))
    assert fresh.step == step + fresh.config.steps_per_action
    assert result.steps == fresh.config.steps_per_action and result.trained_steps == 0
    assert _same(params, _params(fresh))
    assert _same_moments(moments, _moments(fresh))
    assert fresh.scheduler.last_epoch == fresh.step  # the schedule stays aligned with the budget
    assert result.total_loss == 0.0 and result.grad_norm == 0.0
    assert np.all(np.isfinite(result.losses)) and np.all(result.losses > 0)  # still measured
    assert not result.crashed


def test_masked_phase_trains(fresh):
    before = _params(fresh)
    result = fresh.train_phase([1, 0, 1, 0])
    after = _params(fresh)
    assert result.trained_steps == result.steps == fresh.config.steps_per_action
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) - 1
    assert np.all(np.isfinite(result.losses)) and result.total_loss > 0 and result.grad_norm > 0
    assert 0.0 <= result.student_accuracy <= 1.0 and 0.0 <= result.agreement <= 1.0
    assert result.teacher_kl >= 0 and result.entropy >= 0
    d = result.to_dict()
    assert isinstance(d["losses"], list) and len(d["losses"]) == 4


def test_response_only_lowers_kl_to_teacher(fresh):
    first = fresh.train_phase([0, 1, 0, 0])
    for _ in range(2):
        last = fresh.train_phase([0, 1, 0, 0])
    assert last.teacher_kl < first.teacher_kl


def test_state_dict_round_trip_is_exact(fresh):
    fresh.train_phase(ONES)
    state = fresh.state_dict()
    a = fresh.train_phase([1.0, 0.5, 0.0, 2.0])
    params_a = _params(fresh)
    fresh.load_state_dict(state)
    b = fresh.train_phase([1.0, 0.5, 0.0, 2.0])
    np.testing.assert_array_equal(a.losses, b.losses)
    assert a.total_loss == b.total_loss and a.student_ce == b.student_ce
    assert _same(params_a, _params(fresh))
    assert fresh.step == 2 * fresh.config.steps_per_action


def _trajectory(distiller, seed: int) -> tuple[list, dict]:
    distiller.reset(seed)
    losses = [distiller.train_phase(w).losses.tolist() for w in ([1, 1, 0, 0], [0, 1, 1, 1])]
    return losses, _params(distiller)


def test_reset_is_seeded(quick):
    l1, p1 = _trajectory(quick, 3)
    l2, p2 = _trajectory(quick, 3)
    assert l1 == l2 and _same(p1, p2)
    l3, p3 = _trajectory(quick, 4)
    assert l3 != l1 and not _same(p1, p3)
    quick.reset(3)
    assert quick.step == 0 and quick.position == 0 and quick.budget_left == quick.total_steps


@pytest.mark.parametrize(("weights", "match"), [
    (np.ones(3), r"shape \(4,\).*finetune.*relation.*\(3,\)"),
    (np.ones((2, 4)), r"shape \(4,\)"),
    ([1, np.nan, 0, 0], "finite"),
    ([1, np.inf, 0, 0], "finite"),
    ([1, -0.5, 0, 0], ">= 0"),
])
def test_bad_weights_raise(fresh, weights, match):
    params, step = _params(fresh), fresh.step
    with pytest.raises(ValueError, match=match):
        fresh.train_phase(weights)
    assert fresh.step == step and _same(params, _params(fresh))


@pytest.fixture
def nan_knowledge():
    name = "test_nan_loss"

    @register_knowledge(name, needs=("logits",))
    def nan_loss(student, teacher, batch):
        return student.logits.sum() * float("nan")

    yield name
    KNOWLEDGE_REGISTRY.pop(name, None)


def test_nan_knowledge_crashes_the_phase_safely(nan_knowledge):
    distiller = build_distiller(get_preset("quick", knowledge=("finetune", nan_knowledge)))
    # not selected: the NaN term is reported as NaN and training with the others goes on
    ok = distiller.train_phase([1, 0])
    assert not ok.crashed and ok.trained_steps == distiller.config.steps_per_action
    assert np.isfinite(ok.losses[0]) and np.isnan(ok.losses[1])
    params = _params(distiller)
    step = distiller.step
    result = distiller.train_phase([1, 1])
    assert result.crashed
    assert result.trained_steps == 0 and result.steps == 1
    assert distiller.step == step + 1  # the crashing step is spent
    assert _same(params, _params(distiller))
    assert distiller.student_is_finite()
    assert all(torch.isfinite(p).all() for p in distiller.student.parameters())
    assert distiller.measure().crashed
    distiller.close()


def test_measure_consumes_nothing(fresh):
    fresh.train_phase(ONES)
    params, step, position = _params(fresh), fresh.step, fresh.position
    first = fresh.measure()
    assert fresh.step == step and fresh.position == position and _same(params, _params(fresh))
    assert first.steps == 0 and not first.crashed and np.all(np.isfinite(first.losses))
    np.testing.assert_array_equal(fresh.measure().losses, first.losses)
    assert fresh.student.training  # back in training mode


def test_second_build_reuses_teacher_and_cache(quick, monkeypatch):
    import kd_env.build as build

    def fail(*args, **kwargs):
        raise AssertionError("the fine-tuned teacher and its cache must be reused")

    monkeypatch.setattr(build, "train_classifier", fail)
    monkeypatch.setattr(TeacherCache, "build", staticmethod(fail))
    again = build_distiller(get_preset("quick"))
    assert again.teacher.path == quick.teacher.path
    assert again.teacher_metrics == quick.teacher_metrics
    again.close()


def test_budget_is_capped(fresh):
    total = fresh.total_steps
    result = fresh.train_phase(ONES, steps=total + 25)
    assert result.steps == total and fresh.step == total and fresh.budget_left == 0
    params = _params(fresh)
    after = fresh.train_phase(ONES)
    assert after.steps == 0 and after.trained_steps == 0 and fresh.step == total
    assert _same(params, _params(fresh))


def test_phases_follow_the_config(fresh):
    cfg = fresh.config
    steps = [fresh.train_phase(ONES).steps for _ in range(cfg.num_phases)]
    assert steps == [cfg.steps_per_action] * cfg.num_phases and sum(steps) == cfg.total_steps == fresh.step


def test_evaluate(fresh):
    probe = fresh.evaluate("probe")
    assert probe["loss"] > 0 and np.isfinite(probe["loss"])
    assert 0.0 <= probe["main"] <= 1.0 and probe["main"] == probe["accuracy"]
    assert fresh.evaluate("probe") == probe  # deterministic, and evaluation does not train
    for _ in range(3):
        fresh.train_phase([1, 1, 0, 0])
    trained = fresh.evaluate("probe")
    assert trained["loss"] < probe["loss"]
    test = fresh.evaluate("test")
    assert 0.0 <= test["main"] <= 1.0
    with pytest.raises(ValueError, match="probe"):
        fresh.evaluate("bogus")


def test_cls_embeddings(fresh):
    fresh.train_phase(ONES)
    s, t = fresh.cls_embeddings()
    assert s.shape == (fresh.config.student_hidden,) and t.shape == (128,)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(t))


# --------------------------------------------------------------------------------------------
# the text path: tiny BERT teacher, local CSV task
# --------------------------------------------------------------------------------------------

TEXT_KNOWLEDGE = ("finetune", "response", "feature", "relation", "attention")


def _text_config(tiny_bert_dir, text_csv, **changes) -> DistillConfig:
    settings = dict(task=str(text_csv), teacher=str(tiny_bert_dir), student_layers=1, max_len=16, batch_size=8,
                    total_steps=4, steps_per_action=2, teacher_max_steps=2, train_examples=32, dev_probe_size=16,
                    progress=False, knowledge=TEXT_KNOWLEDGE)
    return DistillConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def text_phase(tiny_bert_dir, text_csv):
    distiller = build_distiller(_text_config(tiny_bert_dir, text_csv))
    result = distiller.train_phase(np.ones(5))
    yield distiller, result
    distiller.close()


def test_text_path_with_cache(text_phase):
    distiller, result = text_phase
    assert isinstance(distiller.teacher, TeacherCache)
    assert set(distiller.teacher.fields) == {"logits", "hidden_pooled", "hidden_tokens", "attentions"}
    assert distiller.teacher.path.is_relative_to(cache_root() / "teacher_outputs")
    assert distiller.teacher.manifest["num_examples"] == len(distiller.train_data) == 32
    assert distiller.layer_map == [0, 3] and distiller.student.num_layers == 1
    assert result.steps == result.trained_steps == 2 and not result.crashed
    assert result.losses.shape == (5,) and np.all(np.isfinite(result.losses)) and np.all(result.losses > 0)
    probe = distiller.evaluate("probe")
    assert 0.0 <= probe["main"] <= 1.0 and np.isfinite(probe["loss"])
    s, t = distiller.cls_embeddings()
    assert s.shape == (32,) and t.shape == (32,)


def test_text_path_live_teacher_matches_cache(text_phase, tiny_bert_dir, text_csv):
    _, cached = text_phase
    live = build_distiller(_text_config(tiny_bert_dir, text_csv, use_teacher_cache=False))
    assert isinstance(live.teacher, LiveTeacher)
    result = live.train_phase(np.ones(5))
    # fp16-stored hidden states and attentions vs float32 live ones (the response term is ~1e-5 here)
    np.testing.assert_allclose(result.losses, cached.losses, rtol=2e-2, atol=1e-7)
    assert result.student_ce == pytest.approx(cached.student_ce, rel=1e-3)
    live.close()


def test_text_path_second_build_reuses_teacher_and_cache(text_phase, tiny_bert_dir, text_csv, monkeypatch):
    import kd_env.build as build

    first, _ = text_phase

    def fail(*args, **kwargs):
        raise AssertionError("the fine-tuned teacher and its cache must be reused")

    monkeypatch.setattr(build, "train_classifier", fail)
    monkeypatch.setattr(TeacherCache, "build", staticmethod(fail))
    again = build_distiller(_text_config(tiny_bert_dir, text_csv))
    assert again.teacher.path == first.teacher.path  # the reloaded teacher has the same fingerprint
    again.close()


def test_text_reset_redraws_only_the_head(text_phase):
    distiller, _ = text_phase
    model = distiller.student.model.model

    def snapshot(seed):
        distiller.reset(seed)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    a, b, c = snapshot(1), snapshot(1), snapshot(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])
    encoder = [k for k in a if not k.startswith("classifier.")]
    assert encoder and all(torch.equal(a[k], c[k]) for k in encoder)  # pre-trained layers kept


# --------------------------------------------------------------------------------------------
# the situation of an instance: label noise, label fraction, per-example weighting
# --------------------------------------------------------------------------------------------


def _engine_terms(distiller, active: list[int]):
    """The engine's knowledge terms on the first 32 examples of the epoch (eval mode, so that two
    calls see the same student outputs)."""
    batch = distiller._train_batch(distiller.order[:32])
    distiller.student.eval()
    try:
        terms, _, student_out, teacher_out = distiller._losses(batch, active, list(range(distiller.num_knowledge)))
    finally:
        distiller.student.train()
    return batch, terms, student_out, teacher_out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize(("n", "noise", "num_labels"), [(100, 0.1, 2), (1437, 0.2, 10), (7, 0.3, 3), (50, 0.98, 4)])
def test_label_noise_flips_exactly_round_noise_n_seeded(n, noise, num_labels):
    from kd_env.engine import student_label_view

    labels = np.arange(n) % num_labels
    flips = {}
    for seed in (0, 0, 1):
        noisy, mask = student_label_view(labels, num_labels, get_preset("quick", label_noise=noise, seed=seed))
        assert mask is None and noisy.shape == labels.shape and noisy.dtype == labels.dtype
        changed = np.flatnonzero(noisy != labels)  # every flipped label differs from its original
        assert len(changed) == round(noise * n)
        assert noisy.min() >= 0 and noisy.max() < num_labels
        if seed in flips:  # the same seed flips the same examples to the same labels
            assert np.array_equal(changed, flips[seed][0]) and np.array_equal(noisy, flips[seed][1])
        flips[seed] = (changed, noisy)
    assert not np.array_equal(flips[0][0], flips[1][0])  # another seed, other examples
    assert student_label_view(labels, num_labels, get_preset("quick", seed=0)) == (None, None)


def test_label_fraction_masks_round_fraction_n_seeded():
    from kd_env.engine import student_label_view

    labels = np.arange(200) % 10
    masks = [student_label_view(labels, 10, get_preset("quick", label_fraction=0.15, seed=s))[1] for s in (3, 3, 4)]
    assert all(m.dtype == bool and m.sum() == 30 for m in masks)
    assert np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])
    tiny = student_label_view(labels, 10, get_preset("quick", label_fraction=0.001, seed=0))[1]
    assert tiny.sum() == 1  # at least one labelled example


@pytest.fixture(scope="module")
def situation():
    """The quick preset with a quarter of the labels and 10% of them flipped."""
    distiller = build_distiller(get_preset("quick", label_fraction=0.25, label_noise=0.1, seed=5))
    yield distiller
    distiller.close()


def test_engine_trains_on_the_students_labels_and_only_labelled_examples(situation):
    d = situation
    gold = d.train_data.labels
    n = len(gold)
    assert int(d.label_mask.sum()) == round(0.25 * n)
    assert int((d.student_labels != gold).sum()) == round(0.1 * n)
    batch, terms, student_out, _ = _engine_terms(d, active=[0])
    idx = d.order[:32]
    assert torch.equal(batch["labels"], torch.from_numpy(d.student_labels[idx]))  # noisy, not gold
    assert torch.equal(batch["label_mask"], torch.from_numpy(d.label_mask[idx]))
    labelled = batch["label_mask"].bool()
    assert 0 < int(labelled.sum()) < 32
    # the finetune term: mean CE over the labelled examples; zero gradient on the others
    logits = student_out.logits
    torch.testing.assert_close(terms[0], torch.nn.functional.cross_entropy(logits[labelled], batch["labels"][labelled]))
    logits.retain_grad()
    terms[0].backward()
    assert torch.equal(logits.grad[~labelled], torch.zeros_like(logits.grad[~labelled]))
    assert bool((logits.grad[labelled].abs().sum(-1) > 0).all())
    # the teacher's terms still use every example: response on all 32 rows has gradient everywhere
    d.student.zero_grad(set_to_none=True)
    _, terms, student_out, _ = _engine_terms(d, active=[1])
    student_out.logits.retain_grad()
    terms[1].backward()
    assert bool((student_out.logits.grad.abs().sum(-1) > 0).all())
    d.student.zero_grad(set_to_none=True)


def test_engine_uncertainty_weighting_matches_the_formula(fresh):
    fresh.set_example_weighting(None)
    _, plain, _, _ = _engine_terms(fresh, active=[])
    fresh.set_example_weighting("uncertainty")
    try:
        batch, weighted, student_out, teacher_out = _engine_terms(fresh, active=[])
    finally:
        fresh.set_example_weighting(None)
    logits = student_out.logits.detach().double().numpy()
    labels = batch["labels"].numpy()
    p = _softmax(logits)
    u = -(p * np.log(p)).sum(-1) / np.log(logits.shape[1])  # normalised entropy, in [0, 1]
    ce = -np.log(p[np.arange(len(labels)), labels])
    t = fresh.knowledge[1].temperature
    p_s, p_t = _softmax(logits / t), _softmax(teacher_out.logits.double().numpy() / t)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(-1) * t * t
    assert float(plain[0]) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(plain[1]) == pytest.approx(kl.mean(), rel=1e-5)
    assert float(weighted[0]) == pytest.approx(((1 - u) * ce).mean(), rel=1e-5)  # finetune: 1 - u_i
    assert float(weighted[1]) == pytest.approx((u * kl).mean(), rel=1e-5)  # response: u_i
    assert 0 < u.min() and u.max() < 1
    assert float(weighted[2]) == float(plain[2]) and float(weighted[3]) == float(plain[3])  # not weighted
    with pytest.raises(ValueError, match="uncertainty"):
        fresh.set_example_weighting("no_such_weighting")


def test_text_initial_measure_sees_what_the_first_training_step_sees(text_phase):
    """The initial observation (``measure``) is taken as a phase's statistics are: train mode,
    dropout on; the RNG is restored, so it sees exactly what the first optimizer step sees
    (it used to be eval mode: another quantity than every later observation)."""
    distiller, _ = text_phase
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in distiller.student.modules())
    distiller.reset(3)
    rng = torch.get_rng_state()
    measured = distiller.measure()
    assert torch.equal(torch.get_rng_state(), rng) and distiller.step == 0
    first_step = distiller.train_phase(np.ones(5), steps=1)
    np.testing.assert_allclose(measured.losses, first_step.losses, rtol=1e-5)
    for name in ("student_ce", "student_accuracy", "teacher_kl", "agreement", "entropy"):
        assert getattr(measured, name) == pytest.approx(getattr(first_step, name), rel=1e-5), name


def test_unset_threads_never_exceed_the_usable_cpus(monkeypatch):
    """Issue 13 item 9: with ``threads=None`` torch kept its default (the machine's cores) even
    when this process may use fewer CPUs: oversubscription."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert usable_cpus() == 1
    torch.set_num_threads(4)
    distiller = build_distiller(get_preset("quick", threads=None))
    distiller.close()
    assert torch.get_num_threads() == 1
    assert resolve_threads(3) == 3  # an explicit count is kept
    monkeypatch.delattr(os, "sched_getaffinity")  # platforms without it: the CPU count
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    torch.set_num_threads(8)
    assert usable_cpus() == 3 and resolve_threads(None) == 3
    torch.set_num_threads(2)
    assert resolve_threads(None) == 2  # never more than torch's own default


@pytest.mark.parametrize("init_from", ["pretrained", "teacher"])
def test_mean_pooling_end_to_end(tiny_bert_dir, text_csv, init_from):
    """``pooling="mean"``: the teacher is fine-tuned and saved with its pooled head, found again
    by the next build (same test metrics, no second fine-tuning), and the student reads the
    same pooled vectors the feature loss matches."""
    config = _text_config(tiny_bert_dir, text_csv, pooling="mean", knowledge=("finetune", "response", "feature"),
                          student_init_from=init_from)
    first = build_distiller(config)
    try:
        assert first.teacher_model.pooling == first.student.model.pooling == "mean"
        assert first.teacher.fields == ("logits", "hidden_pooled") and first.teacher.manifest["pooling"] == "mean"
        assert first.teacher_metrics["ident"]["pooling"] == "mean"
        first.reset(seed=0)
        result = first.train_phase(np.ones(3))
        assert result.trained_steps == 2 and np.all(np.isfinite(result.losses))
    finally:
        first.close()
    again = build_distiller(config)
    try:
        assert again.teacher_metrics == first.teacher_metrics
        assert fingerprint_module(again.teacher_model) == fingerprint_module(first.teacher_model)
    finally:
        again.close()
    cls_teacher = build_distiller(_text_config(tiny_bert_dir, text_csv, knowledge=("finetune", "response")))
    try:  # a cls teacher is another teacher (its own folder), and keeps the folder it always had
        assert "pooling" not in cls_teacher.teacher_metrics["ident"]
        assert cls_teacher.teacher_model.pooling == "cls"
    finally:
        cls_teacher.close()


def test_bad_pooling_is_rejected():
    with pytest.raises(ValueError, match=r"config.pooling must be one of \['cls', 'mean'\], got 'max'"):
        DistillConfig(pooling="max")


def test_step_timer_times_every_part_and_changes_nothing(quick):
    """Issue 15: the profile of a step (engine_speed) comes from the step itself, which it leaves
    as it was."""
    from kd_env.runtime import StepTimer

    quick.reset(0)
    plain = quick.train_phase(ONES, steps=3)
    params = _params(quick)
    quick.reset(0)
    quick.step_timer = timer = StepTimer(quick.device)
    try:
        timed = quick.train_phase(ONES, steps=3)
    finally:
        quick.step_timer = None
    assert _same(params, _params(quick))
    np.testing.assert_array_equal(timed.losses, plain.losses)
    ms = timer.milliseconds_per_step()
    assert timer.steps == 3 and list(ms) == list(StepTimer.PARTS)
    assert all(v >= 0 for v in ms.values()) and 0 < sum(ms.values()) <= 1000 * timed.seconds / 3 + 1e-6
    timer.clear()
    assert timer.steps == 0 and timer.milliseconds_per_step() == {}


def test_length_grouped_order_keeps_the_examples_and_groups_by_length():
    from kd_env.batching import length_grouped_order

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=103)
    order = rng.permutation(103)
    grouped = length_grouped_order(order, lengths, batch_size=8, group=4, rng=np.random.default_rng(1))
    assert sorted(grouped.tolist()) == list(range(103))  # a permutation: nothing lost or repeated
    assert grouped[96:].tolist() == order[96:].tolist()  # the 7 left over stay at the end
    for start in range(0, 96, 32):  # each megabatch of 4 batches holds the same examples, by length
        mega, batches = order[start:start + 32], grouped[start:start + 32].reshape(-1, 8)
        assert set(batches.ravel().tolist()) == set(mega.tolist())
        spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
        assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(spans, spans[1:]))  # disjoint length bands
    padded = lambda o: sum(lengths[b].max() * 8 for b in o[:96].reshape(-1, 8))
    assert padded(grouped) < 0.8 * padded(order)
    assert length_grouped_order(order, lengths, 8, 1, rng) is order  # off: unchanged, no draw
    assert length_grouped_order(order, lengths, 8, 0, rng) is order


def test_length_grouping_in_the_engine(tiny_bert_dir, text_csv):
    from kd_env.batching import tokens_per_example

    plain = build_distiller(_text_config(tiny_bert_dir, text_csv, total_steps=8, steps_per_action=4))
    grouped = build_distiller(_text_config(tiny_bert_dir, text_csv, total_steps=8, steps_per_action=4,
                                           length_grouping=2))
    try:
        lengths = tokens_per_example(plain.train_data)
        for d in (plain, grouped):
            d.reset(seed=3)
        # off: the order is the seeded permutation, exactly as before the option existed
        assert plain.order.tolist() == np.random.default_rng(3).permutation(32).tolist()
        assert sorted(grouped.order.tolist()) == list(range(32))
        batches = grouped.order.reshape(-1, 8)
        spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches[:2])
        assert spans[0][1] <= spans[1][0]
        result = grouped.train_phase(np.ones(5))
        assert result.trained_steps == 4 and np.all(np.isfinite(result.losses))
        state = grouped.state_dict()
        again = grouped.train_phase(np.ones(5)).losses
        grouped.load_state_dict(state)
        np.testing.assert_array_equal(grouped.train_phase(np.ones(5)).losses, again)  # resumable
    finally:
        plain.close()
        grouped.close()


@pytest.mark.parametrize("value", [-1, 2.5, True, "16"])
def test_bad_length_grouping_is_rejected(value):
    with pytest.raises(ValueError, match=r"config\.length_grouping must be an integer"):
        DistillConfig(length_grouping=value)


@pytest.mark.parametrize("value", [-1, 2.5, True, "16"])
def test_bad_teacher_length_grouping_is_rejected(value):
    with pytest.raises(ValueError, match=r"config\.teacher_length_grouping must be an integer"):
        DistillConfig(teacher_length_grouping=value)


def test_teacher_length_grouping_fine_tunes_on_batches_of_similar_length(tiny_bert_dir, text_csv):
    from kd_env.batching import BatchSampler, tokens_per_example
    from kd_env.data import load_task
    from kd_env.models import SequenceClassifier, load_hf_classifier, load_tokenizer
    from kd_env.teacher import train_classifier

    task = load_task(str(text_csv))
    sampler = BatchSampler(task, task["train"], load_tokenizer(str(tiny_bert_dir)), 16)
    lengths = tokens_per_example(sampler)
    seen: list[np.ndarray] = []
    read = sampler.batch
    sampler.batch = lambda idx: (seen.append(np.asarray(idx)), read(idx))[1]
    model = SequenceClassifier(load_hf_classifier(str(tiny_bert_dir), task.num_labels), "mean")
    steps = len(sampler) // 8
    fit = train_classifier(model, sampler, epochs=1, lr=1e-3, batch_size=8, seed=0, device=torch.device("cpu"),
                           progress=False, max_steps=steps, length_grouping=2)
    assert fit["steps"] == steps and np.isfinite(fit["final_loss"])
    for first, second in zip(seen[0::2], seen[1::2]):  # each megabatch of 2 batches: disjoint length bands
        (lo, hi), (lo2, hi2) = sorted([(lengths[first].min(), lengths[first].max()),
                                       (lengths[second].min(), lengths[second].max())])
        assert hi <= lo2
    assert len(np.unique(np.concatenate(seen))) == steps * 8  # one epoch: every example at most once


def test_grouped_teacher_is_a_teacher_of_its_own_and_builds_are_timed(tiny_bert_dir, text_csv, tmp_path):
    import json

    for grouping in (0, 2):
        d = build_distiller(_text_config(tiny_bert_dir, text_csv, teacher_length_grouping=grouping, cache_dir=str(tmp_path)))
        assert set(d.build_seconds) == {"teacher", "teacher_cache"} and min(d.build_seconds.values()) >= 0
        d.close()
    idents = [json.loads(p.read_text())["ident"] for p in sorted((tmp_path / "teachers").glob("*/teacher.json"))]
    assert len(idents) == 2  # two teachers, cached apart; the ungrouped one keeps its old key (no new field)
    assert sorted(i.get("length_grouping", 0) for i in idents) == [0, 2]
