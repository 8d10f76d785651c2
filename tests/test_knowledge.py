"""The knowledge registry and the built-in knowledge losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_env.knowledge import (
    DEFAULT_KNOWLEDGE,
    KNOWLEDGE_REGISTRY,
    Knowledge,
    fsp_matrix,
    fsp_mse,
    knowledge_names,
    make_knowledge,
    register_knowledge,
)
from kd_env.models import ModelOutputs

B, T, H, HEADS, C, LAYERS = 3, 5, 6, 2, 4, 2
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])


def _student(seed: int = 0):
    """Student outputs built from leaf tensors (so their gradients can be inspected)."""
    g = torch.Generator().manual_seed(seed)
    leaves = {
        "logits": torch.randn(B, C, generator=g, dtype=torch.float64).requires_grad_(),
        "hidden": [torch.randn(B, T, H, generator=g, dtype=torch.float64).requires_grad_() for _ in range(LAYERS + 1)],
        "scores": [torch.randn(B, HEADS, T, T, generator=g, dtype=torch.float64).requires_grad_() for _ in range(LAYERS)],
    }
    key_mask = (1 - MASK)[:, None, None, :].bool()
    atts = [s.masked_fill(key_mask, float("-inf")).softmax(-1) for s in leaves["scores"]]
    out = ModelOutputs(logits=leaves["logits"], hidden=list(leaves["hidden"]), attentions=atts,
                       cls=leaves["hidden"][-1][:, 0], mask=MASK)
    return out, leaves


def _teacher_like(student: ModelOutputs, noise: float = 0.0, seed: int = 1) -> ModelOutputs:
    """Detached copies of the student's outputs, optionally perturbed (attention kept a
    probability map)."""
    g = torch.Generator().manual_seed(seed)
    jitter = lambda x: x.detach().clone() + noise * torch.randn(x.shape, generator=g, dtype=x.dtype)  # noqa: E731
    atts = []
    for a in student.attentions:
        a = jitter(a).clamp_min(0) * (MASK[:, None, None, :])
        atts.append(a / a.sum(-1, keepdim=True).clamp_min(1e-12))
    return ModelOutputs(logits=jitter(student.logits), hidden=[jitter(h) for h in student.hidden],
                        attentions=atts, cls=None, mask=MASK)


def _value(loss: torch.Tensor) -> float:
    return float(loss.detach())


def _batch():
    return {"labels": torch.tensor([0, 3, 1]), "attention_mask": MASK}


KD_CASES = [
    ("response", {}),
    ("feature", {"tokens": "cls"}),
    ("feature", {"tokens": "all"}),
    ("feature", {"tokens": "cls", "layers": "intermediate"}),
    ("relation", {}),
    ("attention", {}),
]


@pytest.mark.parametrize(("name", "params"), KD_CASES)
def test_loss_zero_when_teacher_equals_student(name, params):
    (k,) = make_knowledge([name], {name: params} if params else None)
    student, _ = _student()
    loss = k(student, _teacher_like(student), _batch())
    assert loss.ndim == 0
    # response reads teacher logits in float32 (as cached); the rest stays in float64
    assert abs(_value(loss)) < (1e-6 if name == "response" else 1e-10)


@pytest.mark.parametrize(("name", "params"), KD_CASES)
def test_loss_positive_when_perturbed_and_gradients_reach_student_only(name, params):
    (k,) = make_knowledge([name], {name: params} if params else None)
    student, leaves = _student()
    teacher = _teacher_like(student, noise=0.3)
    loss = k(student, teacher, _batch())
    assert _value(loss) > 1e-4
    loss.backward()
    grads = {"logits": leaves["logits"].grad, "hidden": [h.grad for h in leaves["hidden"]],
             "scores": [s.grad for s in leaves["scores"]]}
    reached = [g for g in [grads["logits"], *grads["hidden"], *grads["scores"]] if g is not None]
    assert reached and any(float(g.abs().sum()) > 0 for g in reached)
    assert all(torch.isfinite(g).all() for g in reached)
    for t in [teacher.logits, *teacher.hidden, *teacher.attentions]:
        assert not t.requires_grad and t.grad is None
    if name == "response":
        assert grads["logits"] is not None and all(g is None for g in grads["hidden"])
    if name in ("feature", "relation"):
        assert grads["logits"] is None
    if name == "attention":
        assert all(g is not None for g in grads["scores"]) and grads["logits"] is None


def test_finetune_is_cross_entropy_to_labels():
    (k,) = make_knowledge(["finetune"])
    assert k.needs == ()
    student, leaves = _student()
    batch = _batch()
    loss = k(student, None, batch)  # needs no teacher at all
    torch.testing.assert_close(loss, F.cross_entropy(student.logits, batch["labels"]))
    loss.backward()
    assert leaves["logits"].grad is not None
    # regression heads (one output) use MSE
    reg = ModelOutputs(logits=torch.tensor([[0.5], [2.0]]))
    torch.testing.assert_close(k(reg, None, {"labels": torch.tensor([1.0, 1.0])}), torch.tensor(0.625))


def test_feature_all_ignores_padding():
    (k,) = make_knowledge(["feature"], {"feature": {"tokens": "all"}})
    student, _ = _student()
    teacher = _teacher_like(student)
    for h in teacher.hidden:
        h[MASK == 0] += 100.0  # only padded positions differ
    assert abs(_value(k(student, teacher, _batch()))) < 1e-10
    teacher.hidden[1][0, 0, 0] += 1.0  # a real token differs: mean over real tokens x width x layers
    expected = 1.0 / (int(MASK.sum()) * H) / LAYERS
    assert _value(k(student, teacher, _batch())) == pytest.approx(expected)


def test_feature_cls_uses_normalised_vectors():
    (k,) = make_knowledge(["feature"])
    assert k.needs == ("hidden_pooled",)
    assert make_knowledge(["feature"], {"feature": {"tokens": "cls"}})[0].needs == ("hidden_cls",)
    student, _ = _student()
    teacher = _teacher_like(student)
    teacher.hidden = [3.0 * h for h in teacher.hidden]  # same directions
    assert abs(_value(k(student, teacher, _batch()))) < 1e-10
    assert make_knowledge(["feature"], {"feature": {"tokens": "all"}})[0].needs == ("hidden_tokens",)
    with pytest.raises(ValueError, match="tokens"):
        make_knowledge(["feature"], {"feature": {"tokens": "mean"}})
    with pytest.raises(ValueError, match="layers"):
        make_knowledge(["feature"], {"feature": {"layers": "top"}})


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_response_is_t_squared_kl(temperature):
    (k,) = make_knowledge(["response"], {"response": {"temperature": temperature}})
    student, _ = _student()
    teacher = _teacher_like(student, noise=0.5)
    p_t = F.softmax(teacher.logits / temperature, -1)
    p_s = F.softmax(student.logits / temperature, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    torch.testing.assert_close(k(student, teacher, _batch()), kl * temperature**2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan")])
def test_response_invalid_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        make_knowledge(["response"], {"response": {"temperature": temperature}})


@pytest.mark.parametrize("with_mask", [True, False])
def test_fsp_mse_equals_mse_of_fsp_matrices(with_mask):
    g = torch.Generator().manual_seed(3)
    shapes = [(4, 7, 5), (4, 7, 3), (4, 7, 5), (4, 7, 3)]
    a_s, b_s, a_t, b_t = (torch.randn(s, generator=g, dtype=torch.float64) for s in shapes)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5, [1] * 6 + [0]]) if with_mask else None
    direct = ((fsp_matrix(a_s, b_s, mask) - fsp_matrix(a_t, b_t, mask)) ** 2).mean()
    torch.testing.assert_close(fsp_mse(a_s, b_s, a_t, b_t, mask), direct)
    assert fsp_matrix(a_s, b_s, mask).shape == (4, 5, 3)
    if with_mask:  # padded tokens do not count: fsp over the real tokens only
        torch.testing.assert_close(fsp_matrix(a_s[2:3, :2], b_s[2:3, :2], None), fsp_matrix(a_s, b_s, mask)[2:3])


def test_relation_pairs_consecutive_layers():
    (k,) = make_knowledge(["relation"])
    student, _ = _student()
    teacher = _teacher_like(student, noise=0.2)
    expected = torch.stack([fsp_mse(student.hidden[j - 1], student.hidden[j], teacher.hidden[j - 1],
                                    teacher.hidden[j], MASK) for j in range(1, LAYERS + 1)]).mean()
    torch.testing.assert_close(k(student, teacher, _batch()), expected)
    assert k.cost == 1.5


def test_attention_needs_maps():
    (k,) = make_knowledge(["attention"])
    assert k.student_attentions
    with pytest.raises(ValueError, match="attention"):
        k.check(student_heads=0, teacher_heads=12)  # an MLP student has no attention
    with pytest.raises(ValueError, match="attention"):
        k.check(student_heads=4, teacher_heads=0)
    k.check(student_heads=4, teacher_heads=12)  # different head counts are fine (head-averaged)
    student, _ = _student()
    with pytest.raises(ValueError, match="attention maps"):
        k(ModelOutputs(logits=student.logits, hidden=student.hidden, attentions=None), _teacher_like(student), {})
    for name in ("finetune", "response", "feature", "relation"):
        make_knowledge([name])[0].check(0, 0)  # no attention needed: never an error


def test_attention_head_count_mismatch_averages_heads():
    (k,) = make_knowledge(["attention"])
    student, _ = _student()
    teacher = _teacher_like(student)
    # teacher with twice the heads, each pair averaging to the student's head-mean
    teacher.attentions = [torch.cat([a, a], dim=1) for a in teacher.attentions]
    assert abs(_value(k(student, teacher, _batch()))) < 1e-10


@pytest.fixture
def registry_guard():
    """Remove knowledge types a test registers."""
    before = dict(KNOWLEDGE_REGISTRY)
    yield
    KNOWLEDGE_REGISTRY.clear()
    KNOWLEDGE_REGISTRY.update(before)


def test_register_function_knowledge(registry_guard):
    @register_knowledge("test_logit_mse", needs=("logits",), cost=0.5)
    def logit_mse(student, teacher, batch, scale: float = 1.0):
        return scale * ((student.logits - teacher.logits) ** 2).mean()

    assert "test_logit_mse" in knowledge_names()
    (k,) = make_knowledge(["test_logit_mse"], {"test_logit_mse": {"scale": 3.0}})
    assert isinstance(k, Knowledge)
    assert k.name == "test_logit_mse" and k.needs == ("logits",) and k.cost == 0.5
    assert not k.student_attentions
    student, _ = _student()
    teacher = _teacher_like(student, noise=0.1)
    expected = 3.0 * ((student.logits - teacher.logits) ** 2).mean()
    torch.testing.assert_close(k(student, teacher, _batch()), expected)
    ks = make_knowledge(["finetune", "test_logit_mse"])  # order kept: the action-bit order
    assert [x.name for x in ks] == ["finetune", "test_logit_mse"]
    with pytest.raises(TypeError, match="unknown parameters"):
        make_knowledge(["test_logit_mse"], {"test_logit_mse": {"weight": 2}})


def test_register_class_knowledge(registry_guard):
    @register_knowledge("test_cls_distance")
    class ClsDistance(Knowledge):
        needs = ("hidden_cls",)

        def __call__(self, student, teacher, batch):
            return (student.hidden[-1][:, 0] - teacher.hidden[-1][:, 0]).abs().mean()

    (k,) = make_knowledge(["test_cls_distance"])
    assert isinstance(k, ClsDistance) and k.name == "test_cls_distance" and k.needs == ("hidden_cls",)
    with pytest.raises(TypeError, match="no parameters"):
        make_knowledge(["test_cls_distance"], {"test_cls_distance": {"p": 1}})


def test_register_rejects_unknown_needs(registry_guard):
    with pytest.raises(ValueError, match="unknown teacher outputs"):
        register_knowledge("test_bad_needs", needs=("gradients",))(lambda s, t, b: s.logits.sum())
    assert "test_bad_needs" not in KNOWLEDGE_REGISTRY
    with pytest.raises(TypeError):
        register_knowledge("test_not_callable")(42)


def test_duplicate_registration(registry_guard):
    @register_knowledge("test_dup")
    def first(student, teacher, batch):
        return student.logits.sum() * 0

    def second(student, teacher, batch):
        return student.logits.sum() * 0 + 1

    with pytest.raises(ValueError, match="already registered"):
        register_knowledge("test_dup")(second)
    with pytest.raises(ValueError, match="already registered"):
        register_knowledge("response")(second)
    assert KNOWLEDGE_REGISTRY["response"].__name__ == "Response"  # unchanged
    register_knowledge("test_dup", overwrite=True)(second)
    student, _ = _student()
    assert _value(make_knowledge(["test_dup"])[0](student, None, {})) == 1.0


def test_make_knowledge_errors():
    with pytest.raises(ValueError) as err:
        make_knowledge(["finetune", "telepathy"])
    assert "telepathy" in str(err.value)
    assert all(name in str(err.value) for name in knowledge_names())
    with pytest.raises(ValueError, match="at least one"):
        make_knowledge([])
    with pytest.raises(ValueError, match="duplicate"):
        make_knowledge(["response", "response"])
    with pytest.raises(ValueError, match="not in use"):
        make_knowledge(["finetune"], {"response": {"temperature": 2}})


def test_builtin_registry_contents():
    assert set(DEFAULT_KNOWLEDGE) | {"attention"} <= set(knowledge_names())
    assert DEFAULT_KNOWLEDGE == ("finetune", "response", "feature", "relation")
    needs = {k.name: k.needs for k in make_knowledge([*DEFAULT_KNOWLEDGE, "attention"])}
    assert needs == {"finetune": (), "response": ("logits",), "feature": ("hidden_pooled",),
                     "relation": ("hidden_tokens",), "attention": ("attentions",)}


# --------------------------------------------------------------------------------------------
# per-example losses, example weightings (Dynamic KD) and partly labelled batches
# --------------------------------------------------------------------------------------------


def _tiny_dynamic_kd_batch():
    """2 examples, 2 classes.  Student logits (0, 0) and (ln 3, 0): probabilities (1/2, 1/2) and
    (3/4, 1/4); teacher logits (ln 3, 0) and (0, 0); gold labels 0 and 1."""
    student = ModelOutputs(logits=torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64,
                                               requires_grad=True))
    teacher = ModelOutputs(logits=torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], dtype=torch.float64))
    return student, teacher, {"labels": torch.tensor([0, 1])}


def test_uncertainty_weights_and_weighted_terms_match_a_hand_computation():
    from kd_env.knowledge import EXAMPLE_WEIGHTINGS

    student, teacher, batch = _tiny_dynamic_kd_batch()
    # u_i = entropy / log 2 (C = 2): example 1 is uniform -> 1; example 2:
    # -(3/4 log2 3/4 + 1/4 log2 1/4) = 3/4 (2 - log2 3) + 1/4 * 2 = 2 - 3/4 log2 3 = 0.8112781...
    u = [1.0, 2.0 - 0.75 * math.log2(3.0)]
    assert u[1] == pytest.approx(0.8112781244591328, abs=1e-15)
    weights = EXAMPLE_WEIGHTINGS["uncertainty"](student, teacher, batch)
    assert sorted(weights) == ["finetune", "response"]
    torch.testing.assert_close(weights["response"].double(), torch.tensor(u, dtype=torch.float64))
    torch.testing.assert_close(weights["finetune"].double(), 1 - torch.tensor(u, dtype=torch.float64))

    # finetune: CE of example 1 (label 0, p = 1/2) is ln 2, of example 2 (label 1, p = 1/4) is ln 4;
    # the weighted term is sum_i (1 - u_i) CE_i / 2 = (0 * ln 2 + (1 - u_2) ln 4) / 2
    finetune, response = make_knowledge(["finetune", "response"])  # response: temperature 2
    by_hand = ((1 - u[0]) * math.log(2.0) + (1 - u[1]) * math.log(4.0)) / 2
    got = finetune.weighted(student, teacher, batch, weights["finetune"])
    assert _value(got) == pytest.approx(by_hand, abs=1e-7)  # the weights are float32

    # response at T = 2: logits / 2 give (1/2, 1/2) and (a, b) with a = sqrt3 / (1 + sqrt3), b = 1 - a
    # (e^{ln3/2} = sqrt 3); KL(teacher || student) per example, times T^2 = 4, weighted by u_i
    a = math.sqrt(3.0) / (1 + math.sqrt(3.0))
    b = 1 - a
    kl_1 = a * math.log(a / 0.5) + b * math.log(b / 0.5)  # teacher (a, b), student (1/2, 1/2)
    kl_2 = 0.5 * math.log(0.5 / a) + 0.5 * math.log(0.5 / b)  # teacher (1/2, 1/2), student (a, b)
    by_hand = (u[0] * kl_1 + u[1] * kl_2) / 2 * 4
    got = response.weighted(student, teacher, batch, weights["response"])
    assert _value(got) == pytest.approx(by_hand, abs=1e-7)
    # unit weights give back the plain (batch-mean) terms
    ones = torch.ones(2, dtype=torch.float64)
    for k in (finetune, response):
        torch.testing.assert_close(k.weighted(student, teacher, batch, ones), k(student, teacher, batch))
    # the weights carry no gradient (the student's outputs are detached for them)
    assert not weights["response"].requires_grad


def test_uncertainty_kd_is_the_sum_of_the_weighted_terms_by_hand():
    student, teacher, batch = _tiny_dynamic_kd_batch()
    u = [1.0, 2.0 - 0.75 * math.log2(3.0)]
    finetune_by_hand = ((1 - u[0]) * math.log(2.0) + (1 - u[1]) * math.log(4.0)) / 2
    a = math.sqrt(3.0) / (1 + math.sqrt(3.0))
    b = 1 - a
    kl = [a * math.log(a / 0.5) + b * math.log(b / 0.5), 0.5 * math.log(0.5 / a) + 0.5 * math.log(0.5 / b)]
    response_by_hand = (u[0] * kl[0] + u[1] * kl[1]) / 2 * 4
    (k,) = make_knowledge(["uncertainty_kd"])
    assert k.needs == ("logits",) and k.cost == 2.0
    loss = k(student, teacher, batch)
    assert _value(loss) == pytest.approx(finetune_by_hand + response_by_hand, abs=1e-7)
    loss.backward()  # the gradient flows through both terms, not through the weights
    assert student.logits.grad is not None and torch.isfinite(student.logits.grad).all()


def test_uncertainty_kd_alone_trains_as_dynamic_kd():
    import gymnasium as gym
    import numpy as np

    import kd_env  # noqa: F401 - registers the env ids
    from agents import make_agent, run_episode

    env = gym.make("kd_env/QuickKD-v0", knowledge=[*DEFAULT_KNOWLEDGE, "uncertainty_kd"])
    plain = gym.make("kd_env/QuickKD-v0")
    try:
        ours = run_episode(env, make_agent("fixed:00001", env), seed=5)
        theirs = run_episode(plain, make_agent("dynamic_kd", plain), seed=5)
        assert ours["final_probe_metric"] == theirs["final_probe_metric"]
        for p, q in zip(env.unwrapped.distiller.student.parameters(), plain.unwrapped.distiller.student.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
    finally:
        env.close()
        plain.close()


def test_finetune_with_a_label_mask_ignores_unlabelled_examples():
    (finetune,) = make_knowledge(["finetune"])
    student, leaves = _student()  # 3 examples, 4 classes
    labels = torch.tensor([2, 0, 3])
    label_mask = torch.tensor([True, False, True])
    loss = finetune(student, None, {"labels": labels, "label_mask": label_mask})
    # the mean CE over the labelled examples 0 and 2 only
    torch.testing.assert_close(loss, F.cross_entropy(student.logits[[0, 2]], labels[[0, 2]]))
    loss.backward()
    grad = leaves["logits"].grad
    assert torch.equal(grad[1], torch.zeros(C, dtype=grad.dtype))  # no gradient from the unlabelled row
    assert bool((grad[[0, 2]].abs().sum(-1) > 0).all())
    # what an unlabelled example's label says does not matter
    relabelled = finetune(student, None, {"labels": torch.tensor([2, 1, 3]), "label_mask": label_mask})
    torch.testing.assert_close(relabelled, loss)
    # with per-example weights (Dynamic KD) the mask still holds: weighted mean over labelled rows
    student2, leaves2 = _student()
    w = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    weighted = finetune.weighted(student2, None, {"labels": labels, "label_mask": label_mask}, w)
    ce = F.cross_entropy(student2.logits, labels, reduction="none")
    torch.testing.assert_close(weighted, (0.25 * ce[0] + 1.0 * ce[2]) / 2)
    weighted.backward()
    assert torch.equal(leaves2["logits"].grad[1], torch.zeros(C, dtype=torch.float64))
