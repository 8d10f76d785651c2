"""Reliability, bad input: every kind of wrong input fails at once with an error that names what
is wrong and what would be valid, and starts no training and writes no run or cache files.

Also property tests (hypothesis) on the env: under random valid actions the observation's
statistics lie inside its declared bounds before clipping; random invalid actions always raise
``ValueError`` and leave the env's state untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tests.helpers import assert_same, outside_bounds, unclipped_observation

import kd_env  # noqa: F401 - registers the env ids
from agents import make_agent
from experiments import glue_ac
from kd_env import KnowledgeSelectionEnv, get_preset

QUICK = "kd_env/QuickKD-v0"
K = 4  # QuickKD's knowledge types: finetune, response, feature, relation



# ---- the bad-input table ---------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a case needs: a private folder (its cache and run output live there) and fixtures."""

    tmp: Path
    request: pytest.FixtureRequest

    @property
    def cache(self) -> str:
        return str(self.tmp / "cache")

    @property
    def out(self) -> Path:
        return self.tmp / "runs"

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def file(self, name: str, text: str) -> str:
        path = self.tmp / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return str(path)

    def text_env(self, task: str, **kw) -> KnowledgeSelectionEnv:
        """A text env on ``task`` with the tiny BERT teacher (unless ``teacher`` is given)."""
        kw.setdefault("teacher", str(self.fixture("tiny_bert_dir")))
        return gym.make(QUICK, task=task, cache_dir=self.cache, max_len=16, batch_size=8, **kw)

    def glue_ac(self, *argv: str) -> None:
        glue_ac.main([*argv, "--out", str(self.out), "--name", "bad"])


def _three_label_bert(ctx: Ctx) -> str:
    """The tiny BERT with a 3-label head, saved like a teacher fine-tuned on a 3-class task."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    src = ctx.fixture("tiny_bert_dir")
    folder = ctx.tmp / "bert3"
    config = BertConfig.from_pretrained(src, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return str(folder)


def _yaml(ctx: Ctx, text: str) -> str:
    return ctx.file("config.yaml", text)


@dataclass
class Case:
    id: str
    run: Callable[[Ctx], Any]
    error: type | tuple[type, ...]
    #: substrings the message must hold: what is wrong, and what is valid (where a finite set exists)
    says: tuple[str, ...]


CSV_MISSING = "sentence,label\ngood film,1\n"
CSV_WORD_LABEL = "text,label\na good film,1\na dull film,positive\n"
CSV_NEGATIVE_LABEL = "text,label\na good film,1\na dull film,-1\n"
CSV_EMPTY_TEXT = "text,label\na good film,1\nbad,0\n,0\n"
CSV_HEADER_ONLY = "text,label\n"
TSV_FLOAT_LABEL = "text\tlabel\na good film\t1\na dull film\t0.5\n"
QUICK_GLUE_AC = ("--preset", "quick", "--methods", "vanilla_kd", "--seeds", "0", "--episodes", "0")

CASES = [
    # names that do not exist
    Case("unknown_task", lambda c: gym.make(QUICK, task="no_such_task", cache_dir=c.cache), ValueError,
         ("'no_such_task'", "digits", "rt-polarity", "sst2", ".csv")),
    Case("unknown_model_offline", lambda c: c.text_env(str(c.fixture("text_csv")), teacher="no-org/no-such-model"),
         FileNotFoundError, ("'no-org/no-such-model'", "HF_HUB_OFFLINE", "minilm-l6", "local path")),
    Case("unknown_knowledge", lambda c: gym.make(QUICK, knowledge=("finetune", "telepathy"), cache_dir=c.cache),
         ValueError, ("'telepathy'", "finetune", "response", "feature", "relation")),
    Case("unknown_observation", lambda c: gym.make(QUICK, observation="pixels", cache_dir=c.cache), ValueError,
         ("'pixels'", "summary", "cls", "dict")),
    Case("unknown_reward", lambda c: gym.make(QUICK, reward="accuracy_gain", cache_dir=c.cache), ValueError,
         ("'accuracy_gain'", "dev_loss_delta", "final_metric")),
    Case("unknown_agent", lambda c: make_agent("alphazero", c.fixture("quick_env")), ValueError,
         ("'alphazero'", "ac", "ppo", "random_hard", "fixed:<bits>")),
    Case("unknown_preset", lambda c: KnowledgeSelectionEnv(config="turbo"), ValueError,
         ("'turbo'", "quick", "digits", "text", "paper")),
    Case("unknown_preset_get_preset", lambda c: get_preset("Quick"), ValueError, ("'Quick'", "quick")),
    Case("unknown_action_mode", lambda c: gym.make(QUICK, action_mode="soft", cache_dir=c.cache), ValueError,
         ("'soft'", "mask", "weights")),
    Case("unknown_config_key", lambda c: gym.make(QUICK, total_stepz=10, cache_dir=c.cache), ValueError,
         ("total_stepz", "total_steps", "steps_per_action")),
    # knowledge the models cannot give; a teacher head for another task
    Case("attention_on_mlp", lambda c: gym.make(QUICK, knowledge=("finetune", "attention"), cache_dir=c.cache),
         ValueError, ("'attention'", "attention maps", "MLP", "finetune", "relation")),
    Case("teacher_label_count", lambda c: c.text_env(str(c.fixture("text_csv")), teacher=_three_label_bert(c)),
         ValueError, ("3 labels", "has 2")),
    # broken local data files: the file (and line) is named
    Case("csv_missing_column", lambda c: c.text_env(c.file("missing.csv", CSV_MISSING)), ValueError,
         ("missing.csv", "missing column(s) ['text']", "sentence")),
    Case("csv_word_label", lambda c: c.text_env(c.file("word.csv", CSV_WORD_LABEL)), ValueError,
         ("word.csv:3", "'positive'", "integers 0..C-1")),
    Case("csv_negative_label", lambda c: c.text_env(c.file("negative.csv", CSV_NEGATIVE_LABEL)), ValueError,
         ("negative.csv:3", "'-1'", "integers 0..C-1")),
    Case("csv_empty_text", lambda c: c.text_env(c.file("empty_text.csv", CSV_EMPTY_TEXT)), ValueError,
         ("empty_text.csv:4", "empty text", "'text'")),
    Case("csv_header_only", lambda c: c.text_env(c.file("header.csv", CSV_HEADER_ONLY)), ValueError,
         ("header.csv", "no rows", "text[,text_b],label")),
    Case("csv_empty_file", lambda c: c.text_env(c.file("empty.csv", "")), ValueError,
         ("empty.csv", "no rows", "text[,text_b],label")),
    Case("tsv_float_label", lambda c: c.text_env(c.file("float.tsv", TSV_FLOAT_LABEL)), ValueError,
         ("float.tsv:3", "'0.5'", "integers 0..C-1")),
    # budgets
    Case("steps_per_action_zero", lambda c: gym.make(QUICK, steps_per_action=0, cache_dir=c.cache), ValueError,
         ("steps_per_action", "positive integer", "0")),
    Case("total_steps_negative", lambda c: gym.make(QUICK, total_steps=-5, cache_dir=c.cache), ValueError,
         ("total_steps", "positive integer", "-5")),
    Case("total_steps_zero", lambda c: gym.make(QUICK, total_steps=0, cache_dir=c.cache), ValueError,
         ("total_steps", "positive integer")),
    Case("phase_longer_than_budget", lambda c: gym.make(QUICK, steps_per_action=50, cache_dir=c.cache), ValueError,
         ("steps_per_action (50)", "total_steps (40)")),
    Case("config_wrong_type_python", lambda c: gym.make(QUICK, knowledge="finetune", cache_dir=c.cache), ValueError,
         ("config.knowledge", "list of knowledge type names", "response")),
    # the main job: flags and config files
    Case("glue_ac_seeds_not_integers", lambda c: c.glue_ac("--preset", "quick", "--seeds", "a,b"), SystemExit,
         ("--seeds takes integers", "'a,b'", "0,1,2", "0-4")),
    Case("glue_ac_unknown_preset", lambda c: c.glue_ac("--preset", "turbo"), SystemExit,
         ("'turbo'", "quick", "digits", "paper")),
    Case("glue_ac_unknown_reward", lambda c: c.glue_ac(*QUICK_GLUE_AC, "--reward", "accuracy_gain"), SystemExit,
         ("'accuracy_gain'", "dev_loss_delta")),
    Case("glue_ac_unknown_agent", lambda c: c.glue_ac("--preset", "quick", "--agent", "alphazero"), SystemExit,
         ("'alphazero'", "ac_q", "ppo")),
    Case("glue_ac_yaml_unknown_key",
         lambda c: c.glue_ac("--config", _yaml(c, "preset: quick\nepisode: 3\n")), SystemExit,
         ("['episode']", "episodes", "seeds")),
    Case("glue_ac_yaml_episodes_word",
         lambda c: c.glue_ac("--config", _yaml(c, "preset: quick\nepisodes: three\n")), SystemExit,
         ("'episodes'", "integer", "'three'")),
    Case("glue_ac_yaml_seeds_words",
         lambda c: c.glue_ac("--config", _yaml(c, "preset: quick\nseeds: [a, b]\n")), SystemExit,
         ("seeds", "integers", "['a', 'b']")),
    Case("glue_ac_yaml_total_steps_string",
         lambda c: c.glue_ac("--config", _yaml(c, "preset: quick\ndistill: {total_steps: '10'}\n")), SystemExit,
         ("total_steps", "positive integer", "'10'")),
    Case("glue_ac_yaml_knowledge_number",
         lambda c: c.glue_ac("--config", _yaml(c, "preset: quick\ndistill: {knowledge: 5}\n")), SystemExit,
         ("knowledge", "5", "list of knowledge type names", "response")),
    Case("glue_ac_yaml_distill_not_mapping",
         lambda c: c.glue_ac("--config", _yaml(c, "preset: quick\ndistill: 5\n")), SystemExit,
         ("'distill'", "mapping", "5")),
    Case("glue_ac_yaml_methods_string",
         lambda c: c.glue_ac("--config", _yaml(c, "preset: quick\nmethods: selector\n")), SystemExit,
         ("'methods'", "list", "'selector'")),
    Case("glue_ac_yaml_not_yaml",
         lambda c: c.glue_ac("--config", _yaml(c, "preset: [quick\n")), SystemExit,
         ("config.yaml", "not a plain YAML mapping", "episodes")),
    Case("glue_ac_yaml_list",
         lambda c: c.glue_ac("--config", _yaml(c, "- preset\n- quick\n")), SystemExit,
         ("config.yaml", "expected a mapping", "episodes")),
    # the main job: inputs that only the env build can check must also leave no run folder
    Case("glue_ac_bad_csv",
         lambda c: c.glue_ac(*QUICK_GLUE_AC, "--task", c.file("empty_text.csv", CSV_EMPTY_TEXT),
                             "--teacher", str(c.fixture("tiny_bert_dir"))), SystemExit,
         ("empty_text.csv:4", "empty text")),
    Case("glue_ac_offline_model",
         lambda c: c.glue_ac(*QUICK_GLUE_AC, "--task", str(c.fixture("text_csv")), "--teacher", "no-org/no-model"),
         SystemExit, ("'no-org/no-model'", "minilm-l6")),
    Case("glue_ac_attention_on_mlp",
         lambda c: c.glue_ac(*QUICK_GLUE_AC, "--config",
                             _yaml(c, "distill: {knowledge: [finetune, attention]}\n")), SystemExit,
         ("'attention'", "finetune", "response")),
]


@pytest.fixture(scope="module")
def quick_env():
    env = gym.make(QUICK)
    yield env
    env.close()


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_and_writes_nothing(case: Case, tmp_path, request, capsys):
    ctx = Ctx(tmp_path, request)
    with pytest.raises(case.error) as excinfo:
        case.run(ctx)
    err = capsys.readouterr().err
    if isinstance(excinfo.value, SystemExit):
        code = excinfo.value.code
        # argparse prints its message and exits with 2; our own checks exit with the message
        message = err if code == 2 else str(code)
        assert code != 0 and code is not None, "a bad input must not exit with success"
        assert message.strip() and "Traceback" not in err, err
    else:
        message = str(excinfo.value)
    for part in case.says:
        assert part in message, f"{part!r} not in: {message}"
    # nothing trained or written: no teacher, no teacher-output cache, no run folder
    assert _files_under(ctx.tmp / "cache") == []
    assert _files_under(ctx.out) == [] and not ctx.out.exists()


def test_the_table_covers_every_kind_of_input_the_issue_lists():
    ids = {c.id for c in CASES}
    needed = {"unknown_task", "unknown_model_offline", "unknown_knowledge", "unknown_observation", "unknown_reward",
              "unknown_agent", "unknown_preset", "attention_on_mlp", "teacher_label_count", "csv_missing_column",
              "csv_word_label", "csv_empty_text", "csv_header_only", "csv_empty_file", "steps_per_action_zero",
              "total_steps_negative", "glue_ac_seeds_not_integers", "glue_ac_yaml_unknown_key",
              "glue_ac_yaml_episodes_word", "glue_ac_yaml_total_steps_string", "glue_ac_yaml_knowledge_number"}
    assert needed <= ids, sorted(needed - ids)


# ---- property tests on the env ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def envs():
    """One QuickKD env per action mode (4 phases per episode), without wall-clock infos."""
    made = {mode: gym.make(QUICK, action_mode=mode, record_time=False) for mode in ("mask", "weights")}
    yield made
    for env in made.values():
        env.close()


MASK_DTYPES = [np.int8, np.int64, np.uint8, np.bool_, np.float32, np.float64]
WEIGHT_DTYPES = [np.float32, np.float64]


@st.composite
def valid_actions(draw, mode: str) -> np.ndarray | list:
    if mode == "mask":
        bits = draw(st.lists(st.integers(0, 1), min_size=K, max_size=K))
        dtype = draw(st.sampled_from(MASK_DTYPES))
        as_list = draw(st.booleans())
        return bits if as_list else np.asarray(bits).astype(dtype)
    dtype = draw(st.sampled_from(WEIGHT_DTYPES))
    width = 32 if dtype == np.float32 else 64
    tiny = float(np.nextafter(dtype(0), dtype(1)))  # the smallest subnormal
    values = st.one_of(st.sampled_from([0.0, 1.0, tiny]),
                       st.floats(0.0, 1.0, width=width))
    return draw(hnp.arrays(dtype, (K,), elements=values))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(["mask", "weights"]), seed=st.integers(0, 2**31 - 2), data=st.data())
def test_random_valid_actions_keep_unclipped_statistics_in_bounds(envs, mode, seed, data):
    env = envs[mode]
    space = env.observation_space
    obs, _ = env.reset(seed=seed)
    assert space.contains(obs)
    assert outside_bounds(space, unclipped_observation(env)) == []
    terminated, phases = False, 0
    while not terminated:
        action = data.draw(valid_actions(mode), label=f"action {phases}")
        obs, reward, terminated, truncated, info = env.step(action)
        phases += 1
        assert space.contains(obs), (obs, space)
        # obs is clipped into the space: the statistics before clipping are what can go wrong
        assert outside_bounds(space, unclipped_observation(env)) == [], f"phase {phases} needed clipping"
        assert np.all(np.isfinite(obs)) and math.isfinite(reward) and not truncated
        assert obs[0] == pytest.approx(min(1.0, phases * 10 / 40))  # the budget fraction
        assert np.allclose(obs[-K:], np.asarray(action, np.float64))  # the last action, as applied
        assert not info["crashed"]
    assert phases == 4


def _bad_shape(mode: str):
    elements = st.integers(0, 1) if mode == "mask" else st.floats(0, 1)
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6).filter(lambda s: s != (K,))
    return hnp.arrays(np.float64, shapes, elements=elements)


def _with_one(value_strategy, mode: str):
    """A length-K action, valid except for one entry drawn from ``value_strategy``."""
    ok = st.integers(0, 1).map(float) if mode == "mask" else st.floats(0, 1)
    return st.tuples(st.lists(ok, min_size=K, max_size=K), st.integers(0, K - 1), value_strategy).map(
        lambda t: np.asarray([*t[0][:t[1]], t[2], *t[0][t[1] + 1:]], dtype=np.float64))


def _as_float32(a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # huge values become inf: still invalid
        return a.astype(np.float32)


def invalid_actions(mode: str):
    non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
    if mode == "mask":
        out_of_space = st.one_of(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x not in (0, 1)),
                                 st.integers(-10**6, 10**6).filter(lambda x: x not in (0, 1)))
    else:
        out_of_space = st.one_of(st.floats(max_value=0, exclude_max=True, allow_infinity=False),
                                 st.floats(min_value=1, exclude_min=True, allow_infinity=False))
    typed = st.sampled_from([
        np.array(["1", "0", "1", "0"]), np.array([b"1"] * K), np.full(K, 0.5 + 0.5j), np.array([1, 0, 1, 0], complex),
        np.array([1, 0, 1, 0], dtype=object), np.array([0.5] * K, dtype=object), "1010", b"\x01\x00\x01\x00",
        None, {"finetune": 1}, [[1, 0], [1]], [1, 0, "1", 0], object(), np.datetime64("2024-01-01"),
        np.array(["2024-01-01"] * K, dtype="datetime64[D]"), [None] * K,
    ])
    return st.one_of(_bad_shape(mode), _with_one(non_finite, mode), _with_one(out_of_space, mode), typed,
                     _with_one(out_of_space, mode).map(_as_float32)
                     .filter(lambda a: not ((a == 0) | (a == 1)).all() if mode == "mask"
                             else bool(((a < 0) | (a > 1)).any())))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(["mask", "weights"]), phases_before=st.integers(0, 3), data=st.data())
def test_random_invalid_actions_raise_and_change_nothing(envs, mode, phases_before, data):
    env = envs[mode]
    env.reset(seed=phases_before)
    good = np.ones(K, np.int8) if mode == "mask" else np.full(K, 0.5, np.float32)
    for _ in range(phases_before):  # mid-episode too, with optimizer moments and history
        env.step(good)
    base = env.unwrapped
    before = base.state_dict()
    torch_rng, numpy_rng = torch.get_rng_state(), np.random.get_state()
    bad = data.draw(invalid_actions(mode), label="bad action")
    with pytest.raises(ValueError) as excinfo:
        env.step(bad)
    expected = "MultiBinary(4)" if mode == "mask" else "Box(0, 1, (4,), float32)"
    assert expected in str(excinfo.value) and "finetune" in str(excinfo.value)
    assert_same(base.state_dict(), before)
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert_same(list(np.random.get_state()), list(numpy_rng))
    # and the env goes on as if nothing happened
    _, _, terminated, _, info = env.step(good)
    assert info["phase"] == phases_before + 1 and terminated == (phases_before == 3)
