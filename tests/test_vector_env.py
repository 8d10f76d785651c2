"""The batched vector env: N students trained as one batched model give what N single envs give.

Tolerance: observations and rewards within ``TOL`` (1e-5; a batched matmul sums in another order
than a single one, so values differ in the last bits, measured at ~1e-6 after whole episodes),
terminations, instances and infos' flags exactly, and each student's final dev and test metric
equal (the same predictions on every example).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import kd_env
from kd_env import KnowledgeSelectionEnv, register_knowledge
from kd_env.knowledge import KNOWLEDGE_REGISTRY
from kd_env.batched import BatchedKDVectorEnv

TOL = 1e-5


def _run_pair(n: int, actions_fn, seed: int = 11, options=None, steps=None, **kwargs):
    """Run ``n`` single envs and a batched env of ``n`` copies side by side on the same actions
    (``actions_fn(step) -> (n, K)``); returns per-step arrays of both and the final envs."""
    singles = [KnowledgeSelectionEnv(**kwargs) for _ in range(n)]
    venv = BatchedKDVectorEnv(n, **kwargs)
    per_copy = options if isinstance(options, list) else [options] * n
    first = [e.reset(seed=seed + i, options=per_copy[i]) for i, e in enumerate(singles)]
    obs_b, info_b = venv.reset(seed=seed, options=options)
    record = {"obs_s": [np.stack([o for o, _ in first])], "obs_b": [obs_b], "rew_s": [], "rew_b": [],
              "term_s": [], "term_b": [], "inst_s": [[i["instance"] for _, i in first]],
              "inst_b": [list(info_b["instance"])]}
    t = 0
    while True:
        actions = actions_fn(t)
        results = [e.step(a) for e, a in zip(singles, actions)]
        obs, rew, term, trunc, info = venv.step(actions)
        record["obs_s"].append(np.stack([r[0] for r in results]))
        record["obs_b"].append(obs)
        record["rew_s"].append([r[1] for r in results])
        record["rew_b"].append(rew)
        record["term_s"].append([r[2] for r in results])
        record["term_b"].append(term)
        t += 1
        if all(r[2] for r in results) or (steps is not None and t >= steps):
            break
    return record, singles, venv


def _assert_same_run(record, singles, venv):
    for key in ("obs", "rew"):
        a, b = np.asarray(record[f"{key}_s"], np.float64), np.asarray(record[f"{key}_b"], np.float64)
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=TOL, rtol=0, err_msg=key)
    assert np.array_equal(np.asarray(record["term_s"]), np.asarray(record["term_b"]))
    assert record["inst_s"] == record["inst_b"]
    for single, copy in zip(singles, venv.envs):
        for split in ("dev", "test"):
            a, b = single.distiller.evaluate(split), copy.distiller.evaluate(split)
            assert a["main"] == b["main"], split
            assert abs(a["loss"] - b["loss"]) < TOL


def _random_masks(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return lambda t: rng.integers(0, 2, (n, k))  # all-zero masks and single terms included


def test_batched_equals_single_envs_on_digits_masks():
    record, singles, venv = _run_pair(4, _random_masks(4, 4), config="digits")
    try:
        assert len(record["rew_s"]) == 15  # the whole episode: 150 steps in phases of 10
        _assert_same_run(record, singles, venv)
        assert np.abs(np.asarray(record["rew_s"])).sum() > 0  # the students did learn something
    finally:
        venv.close()


def test_batched_equals_single_envs_in_weights_mode():
    rng = np.random.default_rng(1)
    record, singles, venv = _run_pair(3, lambda t: rng.uniform(0, 1, (3, 4)).astype(np.float32), config="quick",
                                      action_mode="weights")
    try:
        _assert_same_run(record, singles, venv)
    finally:
        venv.close()


def test_batched_equals_single_envs_on_instances_with_per_copy_options():
    # each copy its own situation (the instance set draws them), Dynamic KD's weighting in two copies
    options = [None, {"example_weighting": "uncertainty"}, None, {"example_weighting": "uncertainty"}]
    kwargs = dict(config="digits", instances="digits", reward="dev_metric_delta")
    record, singles, venv = _run_pair(4, _random_masks(4, 4, seed=2), options=options, **kwargs)
    try:
        _assert_same_run(record, singles, venv)
        assert len(set(record["inst_b"][0])) > 1  # the copies train in different situations
    finally:
        venv.close()


def test_batched_equals_single_envs_on_the_between_env_and_paired_replays():
    kwargs = dict(kd_env.INSTANCE_ENV_IDS["kd_env/DigitsKD-BetweenOracle-v0"])
    kwargs["config"] = kwargs.pop("config")
    record, singles, venv = _run_pair(3, _random_masks(3, 5, seed=3), **kwargs)
    try:
        _assert_same_run(record, singles, venv)
        assert len(record["rew_s"]) == 1  # one decision per episode
        # a replayed start: every copy begins its next episode exactly where its last one began
        obs, _ = venv.reset(options={"replay": True})
        assert np.array_equal(obs, record["obs_b"][0])
        assert [c.distiller.step for c in venv.envs] == [0, 0, 0]
    finally:
        venv.close()


def test_make_vec_gives_the_batched_env_for_digits_ids():
    venv = gym.make_vec("kd_env/QuickKD-v0", num_envs=2)
    try:
        assert isinstance(venv, BatchedKDVectorEnv)
        assert venv.single_action_space == gym.spaces.MultiBinary(4)
        obs, _ = venv.reset(seed=0)
        assert obs.shape == (2, *venv.single_observation_space.shape)
    finally:
        venv.close()


def _whole_episode(venv):
    """Reset and run one QuickKD episode (4 phases) of every copy with all knowledge; the last step's results."""
    venv.reset(seed=0)
    for _ in range(4):
        result = venv.step(np.ones((venv.num_envs, 4), dtype=np.int8))
    return result


def test_next_step_autoreset_starts_a_new_episode_with_reward_zero():
    venv = BatchedKDVectorEnv(2, config="quick")
    try:
        _, _, term, _, _ = _whole_episode(venv)
        assert term.all()
        obs, rew, term, trunc, info = venv.step(np.ones((2, 4), dtype=np.int8))  # the autoreset step trains nothing
        assert not term.any() and np.all(rew == 0)
        assert np.all(info["optimizer_steps"] == 0) and np.all(info["phase"] == 0)
        assert np.all(obs[:, 0] == 0)  # budget used: none
    finally:
        venv.close()


def test_same_step_autoreset_returns_the_final_observation_in_info():
    venv = BatchedKDVectorEnv(2, config="quick", autoreset_mode="same_step")
    try:
        obs, _, term, _, info = _whole_episode(venv)
        assert term.all()
        assert np.all(obs[:, 0] == 0)  # already the next episode's first observation
        assert info["final_obs"][0][0] == 1.0  # the ended episode's: its whole budget used
        assert np.all(info["final_info"]["optimizer_steps"] == 40)
    finally:
        venv.close()


def test_bad_actions_are_refused_before_any_student_trains():
    venv = BatchedKDVectorEnv(2, config="quick")
    try:
        venv.reset(seed=0)
        before = venv.batch.snapshot()
        with pytest.raises(ValueError, match=r"copy 1: invalid action \[1, 2, 0, 0\] \(not binary\); expected MultiBinary"):
            venv.step(np.array([[1, 0, 0, 0], [1, 2, 0, 0]]))
        with pytest.raises(ValueError, match="leading dimension of num_envs=2"):
            venv.step(np.ones((3, 4), dtype=np.int8))
        assert torch.equal(before, venv.batch.snapshot())
        assert [c.distiller.step for c in venv.envs] == [0, 0]
        venv.step(np.ones((2, 4), dtype=np.int8))  # still usable
    finally:
        venv.close()


def test_bad_construction_arguments_name_what_is_valid():
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        BatchedKDVectorEnv(0, config="quick")
    with pytest.raises(ValueError, match="autoreset_mode must be 'next_step' or 'same_step'"):
        BatchedKDVectorEnv(1, config="quick", autoreset_mode="disabled")
    with pytest.raises(ValueError, match="device must be .cpu., .cuda., .cuda:<index>. or .auto., got .tpu."):
        BatchedKDVectorEnv(1, config="quick", device="tpu")


def test_step_before_reset_is_an_error():
    venv = BatchedKDVectorEnv(1, config="quick")
    try:
        with pytest.raises(RuntimeError, match="call reset"):
            venv.step(np.ones((1, 4), dtype=np.int8))
    finally:
        venv.close()


def test_a_crashing_copy_ends_its_episode_as_a_single_env_does():
    # a learning rate of 1e30 makes the first update non-finite: the single env's crash rules
    record, singles, venv = _run_pair(2, lambda t: np.ones((2, 4), dtype=np.int8), config="quick", lr=1e30)
    try:
        assert record["term_s"][-1] == [True, True] and list(record["term_b"][-1]) == [True, True]
        np.testing.assert_allclose(record["rew_b"], record["rew_s"], atol=TOL)
        assert all(c.history[-1]["crashed"] for c in venv.envs)
        assert venv.batch.finite().all()  # restored to the last finite state
    finally:
        venv.close()


def test_a_users_knowledge_is_batched_with_vmap():
    name = "test_logit_mse_vector"

    @register_knowledge(name, needs=("logits",))
    def logit_mse(student, teacher, batch):
        return ((student.logits - teacher.logits) ** 2).mean()

    try:
        knowledge = ["finetune", name]
        record, singles, venv = _run_pair(2, _random_masks(2, 2, seed=4), config="quick", knowledge=knowledge)
        try:
            assert venv.batch._hand is None  # a user's knowledge trains through autograd
            _assert_same_run(record, singles, venv)
        finally:
            venv.close()
    finally:
        KNOWLEDGE_REGISTRY.pop(name, None)


def test_a_knowledge_vmap_cannot_batch_names_itself():
    name = "test_item_knowledge_vector"

    @register_knowledge(name, needs=("logits",))
    def item_loss(student, teacher, batch):
        return student.logits.mean() * float(teacher.logits.max().item() > 0)

    try:
        with pytest.raises(ValueError, match=f"knowledge '{name}' cannot be batched over students with torch.func.vmap "
                                             r"\(RuntimeError: vmap: .*\.item\(\)"):
            venv = BatchedKDVectorEnv(1, config="quick", knowledge=["finetune", name])
            venv.reset(seed=0)  # the first observation measures every knowledge term
    finally:
        KNOWLEDGE_REGISTRY.pop(name, None)


def test_text_students_are_refused_with_a_clear_error(tiny_bert_dir, text_csv):
    with pytest.raises(ValueError, match="MLP students of feature tasks"):
        BatchedKDVectorEnv(1, config="text", task=str(text_csv), teacher=str(tiny_bert_dir), max_len=24,
                           total_steps=4, steps_per_action=2)


def test_hand_written_backwards_equal_autograd_of_the_same_expressions():
    # the batched env's loss pieces with a backward by hand (kd_env.batched), in float64 against
    # autograd on the plain expressions they replace
    from kd_env.batched.losses import _PooledFeature, _RelationProduct
    from kd_env.batched.states import _ProjectedMoments

    torch.manual_seed(0)
    n, b, d, width = 3, 5, 4, 7
    h = torch.randn(n, b, d, dtype=torch.float64, requires_grad=True)
    p = torch.randn(n, width, d, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, b, width, dtype=torch.float64)
    a, c = torch.randn(n, b, dtype=torch.float64), torch.randn(n, b, dtype=torch.float64)
    sq, dot = _ProjectedMoments.apply(h, p, t)
    grads = torch.autograd.grad((a * sq + c * dot).sum(), (h, p))
    projected = torch.bmm(h, p.transpose(1, 2))
    sq_ref, dot_ref = (projected * projected).sum(-1), (projected * t).sum(-1)
    grads_ref = torch.autograd.grad((a * sq_ref + c * dot_ref).sum(), (h, p))
    torch.testing.assert_close((sq, dot), (sq_ref, dot_ref))
    torch.testing.assert_close(grads, grads_ref)

    sq_s = (torch.rand(n, b, dtype=torch.float64) + 0.1).requires_grad_(True)
    dot_s = torch.randn(n, b, dtype=torch.float64, requires_grad=True)
    sq_t = torch.rand(n, b, dtype=torch.float64) + 0.1
    value = _PooledFeature.apply(sq_s, dot_s, sq_t)
    grads = torch.autograd.grad((a * value).sum(), (sq_s, dot_s))
    ns, nt = sq_s.sqrt().clamp_min(1e-12), sq_t.sqrt().clamp_min(1e-12)
    value_ref = sq_s / (ns * ns) + sq_t / (nt * nt) - 2 * dot_s / (ns * nt)
    torch.testing.assert_close(value, value_ref)
    torch.testing.assert_close(grads, torch.autograd.grad((a * value_ref).sum(), (sq_s, dot_s)))

    inputs = [torch.randn(n, b, dtype=torch.float64, requires_grad=k < 4) for k in range(6)]
    value = _RelationProduct.apply(*inputs)
    assert (value == 0).any() and (value > 0).any()  # both sides of the clamp
    sa, sb, da, db, ta, tb = inputs
    value_ref = (sa * sb - 2 * da * db + ta * tb).clamp_min(0)
    torch.testing.assert_close(value, value_ref)
    torch.testing.assert_close(torch.autograd.grad((a * value).sum(), inputs[:4]),
                               torch.autograd.grad((a * value_ref).sum(), inputs[:4]))


@pytest.mark.parametrize("kwargs, weighting", [
    (dict(config="quick"), False),
    (dict(config="quick", label_fraction=0.5, knowledge=["finetune", "response", "feature", "relation", "uncertainty_kd"],
          knowledge_params={"feature": {"tokens": "all", "layers": "intermediate"}, "response": {"temperature": 1.0}}),
     True),
])
def test_written_out_step_equals_autograd_on_the_same_batch(kwargs, weighting):
    # the batched env's step without autograd (kd_env.batched.handstep._HandStep): every term's value, the
    # prediction statistics and the gradient of any weighting of the terms equal those of the
    # autograd forms (batched_knowledge_loss) on the same batch, to float rounding
    venv = BatchedKDVectorEnv(4, **kwargs)
    try:
        venv.reset(seed=0, options=[None, {"example_weighting": "uncertainty"}] * 2 if weighting else None)
        batch = venv.batch
        hand = batch._hand
        assert hand is not None  # the built-in knowledge of an MLP student: written out
        if "knowledge_params" in kwargs:
            assert batch.knowledge[2].tokens == "all" and batch.knowledge[2].layers == "intermediate"
        k = len(batch.knowledge)
        for _ in range(2):  # the second step after an update: other parameters, other statistics
            idx = np.stack([d._next_indices() for d in batch.distillers])
            narrow = torch.empty((batch.n, idx.shape[1], batch._hand_width))  # the columns the step gathers
            data, teacher = batch._batch_at(idx, out=narrow)
            if kwargs.get("label_fraction"):
                assert "label_mask" in data and (data["label_mask"] == 0).any()
            coef = torch.rand(batch.n, k, generator=torch.Generator().manual_seed(k)) * (torch.rand(batch.n, k) > 0.3)
            state = hand.forward(data, teacher, hand.uncertainty_rows())
            hand.backward(state, coef)
            grads = batch.grad_flat.clone()
            data, teacher_full = batch._batch_at(idx)  # the same rows, all of the table's fields
            with torch.enable_grad():
                s_out = batch.forward(data["features"], teacher_full.hidden, teacher_full.input_moments)
                terms = batch._terms(s_out, teacher_full, data, range(k), range(k))
                values = torch.stack([terms[j] for j in range(k)], 1)
                for p in batch.params.values():
                    p.grad = None
                (values * coef).sum().backward()
            batch._collect_grads()
            torch.testing.assert_close(state.values, values.detach(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(state.stats, batch._prediction_values(s_out, teacher_full, data),
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grads, batch.grad_flat, rtol=1e-4, atol=1e-6)
            assert grads.abs().max() > 0
            batch._adamw(np.ones(batch.n, dtype=bool), coef.numpy() > 0)
    finally:
        venv.close()


def test_copies_of_one_config_share_one_block_of_the_data_table():
    venv = BatchedKDVectorEnv(4, config="quick")
    try:
        venv.reset(seed=0)
        assert venv.batch.table.shape[0] == 1  # one (data, teacher) pair: one block for the four copies
        venv.step(np.ones((4, 4), dtype=np.int8))
        venv.reset(seed=5)
        assert venv.batch.table.shape[0] == 1
    finally:
        venv.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (perf/batched_env_gpu.py measures it on one)")
def test_batched_env_on_cuda_equals_cpu():
    kwargs = dict(config="quick")
    results = []
    for device in ("cpu", "cuda"):
        venv = BatchedKDVectorEnv(2, device=device, **kwargs)
        try:
            venv.reset(seed=0)
            rewards = [venv.step(np.ones((2, 4), dtype=np.int8))[1] for _ in range(4)]
            results.append(np.asarray(rewards))
        finally:
            venv.close()
    np.testing.assert_allclose(results[0], results[1], atol=1e-4)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap of kl_div, a reference here
def test_each_knowledge_type_owns_its_batched_form_and_a_subclass_gets_vmap():
    # the built-in types point at their written-out forms; those equal their single forms mapped
    # over the students with vmap (Knowledge.batched's default), and a subclass (which may change
    # the loss) gets that default unless it writes its own
    from kd_env.knowledge import Feature, Knowledge, Relation

    class LooserRelation(Relation):
        pass

    assert LooserRelation.batched is Knowledge.batched and Feature.batched is not Knowledge.batched
    venv = BatchedKDVectorEnv(3, config="quick", label_fraction=0.5,
                              knowledge=["finetune", "response", "feature", "relation", "uncertainty_kd"])
    try:
        venv.reset(seed=0)
        batch = venv.batch
        data, teacher = batch._batch_at(np.stack([d._next_indices() for d in batch.distillers]))
        s_out = batch.forward(data["features"], teacher.hidden, teacher.input_moments)
        for kn in batch.knowledge:
            assert type(kn).batched is not Knowledge.batched
            torch.testing.assert_close(kn.batched(s_out, teacher, data, {}), Knowledge.batched(kn, s_out, teacher, data, {}),
                                       rtol=1e-4, atol=1e-5)
    finally:
        venv.close()


def test_a_phase_runner_is_the_envs_declared_extension_point():
    # what the batched copies plug into: the default runner's results, counted on the way
    from kd_env import PhaseRunner

    class Counting(PhaseRunner):
        def __init__(self):
            self.calls = {"build": 0, "train": 0, "probe": 0}

        def build_distiller(self, config):
            self.calls["build"] += 1
            return super().build_distiller(config)

        def train_phase(self, distiller, weights):
            self.calls["train"] += 1
            return super().train_phase(distiller, weights)

        def probe(self, distiller):
            self.calls["probe"] += 1
            return super().probe(distiller)

    runner = Counting()
    plain, counted = KnowledgeSelectionEnv("quick"), KnowledgeSelectionEnv("quick", phase_runner=runner)
    try:
        for env in (plain, counted):
            env.reset(seed=3)
        for _ in range(2):
            a, b = plain.step(np.ones(4, dtype=np.int8)), counted.step(np.ones(4, dtype=np.int8))
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1] == b[1]
        assert runner.calls == {"build": 1, "train": 2, "probe": 2}
    finally:
        plain.close()
        counted.close()
