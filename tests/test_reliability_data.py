"""Reliability, a user's small or odd data (issue 38, item 2): every route (a CSV/TSV file, a local
folder with train/dev/test files, GLUE from a folder or the hub) is checked once, as it is loaded,
and each fault gets an answer that names the file (and the line where it applies) and the numbers:
too few examples, one class, labels that are not ``0..C-1`` (remapped, shown once), a file that is
not UTF-8 or has a byte-order mark, a row with more or fewer fields than the header.

All sentences are invented here.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from kd_env import data
from kd_env.data import LabelMappingWarning, load_task
from kd_env.datacheck import MIN_EVAL_EXAMPLES, MIN_TRAIN_EXAMPLES

MINIMUMS = "at least 8 are needed for train and 2 for each of dev and test"


def _lines(n: int, labels: list[str] | None = None, start: int = 0) -> list[str]:
    """``n`` CSV rows of invented text, labels cycling through ``labels`` (default 0, 1)."""
    labels = labels or ["0", "1"]
    return [f"a made up remark number {start + i} on blue widgets,{labels[i % len(labels)]}" for i in range(n)]


def _csv(path: Path, rows: list[str], header: str = "text,label", encoding: str = "utf-8") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join([header, *rows]) + "\n").encode(encoding))
    return str(path)


def _load_quietly(path: str, **kw):
    """Load, failing on any warning (no remap, no carve note expected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_task(path, **kw)


def test_minimums_are_the_documented_ones():
    assert (MIN_TRAIN_EXAMPLES, MIN_EVAL_EXAMPLES) == (8, 2)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert "## Data checks" in doc and MINIMUMS in doc


# ---- sizes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, train_left", [(1, 0), (2, 0), (3, 0), (5, 1), (10, 6), (11, 7)])
def test_a_small_csv_is_refused_with_the_numbers(tmp_path, n, train_left):
    path = _csv(tmp_path / "small.csv", _lines(n))
    with pytest.raises(ValueError) as err:
        load_task(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {n} example")
    assert f"carving dev (2) and test (2) out of them leaves train {train_left}" in message
    assert MINIMUMS in message and "needs at least 12 rows" in message
    assert "zero-size" not in message


def test_the_smallest_csv_that_passes_has_splits_at_their_minimums(tmp_path):
    task = _load_quietly(_csv(tmp_path / "twelve.csv", _lines(12)))
    assert {s: len(task[s]) for s in ("train", "dev", "test")} == {"train": 8, "dev": 2, "test": 2}
    task = _load_quietly(_csv(tmp_path / "fifteen.csv", _lines(15)))
    assert {s: len(task[s]) for s in ("train", "dev", "test")} == {"train": 11, "dev": 2, "test": 2}


def test_a_folder_whose_carve_would_leave_train_too_small_is_refused(tmp_path):
    folder = tmp_path / "tiny_folder"
    train = _csv(folder / "train.csv", _lines(11))
    with pytest.raises(ValueError) as err:
        load_task(str(folder))
    message = str(err.value)
    assert message.startswith(f"{train}: 11 examples; carving test (2) and dev (2) out of them leaves train 7")
    assert MINIMUMS in message and "needs at least 12 rows, or add a test file and a dev file" in message
    # with a dev file, only test is carved: 11 - 2 = 9 is enough
    _csv(folder / "dev.csv", _lines(2, start=100))
    with pytest.warns(UserWarning, match=r"carved test \(2 examples\)"):
        task = load_task(str(folder))
    assert [len(task[s]) for s in ("train", "dev", "test")] == [9, 2, 2]


@pytest.mark.parametrize("split, n", [("train", 5), ("dev", 1), ("test", 1)])
def test_a_folder_file_below_its_minimum_is_refused_naming_it(tmp_path, split, n):
    folder = tmp_path / "folder"
    sizes = {"train": 20, "dev": 4, "test": 4, split: n}
    paths = {s: _csv(folder / f"{s}.csv", _lines(k, start=100 * i)) for i, (s, k) in enumerate(sizes.items())}
    with pytest.raises(ValueError) as err:
        load_task(str(folder))
    example = "example" if n == 1 else "examples"
    assert str(err.value) == f"{paths[split]}: {split} has {n} {example}; {MINIMUMS}; add examples"


def test_local_glue_files_are_checked_too(tmp_path):
    sst = tmp_path / "SST-2"
    _write_tsv(sst / "train.tsv", "sentence\tlabel", [f"made up phrase {i}\t{i % 2}" for i in range(20)])
    _write_tsv(sst / "dev.tsv", "sentence\tlabel", ["one made up phrase\t1"])
    with pytest.raises(ValueError, match=re.escape(f"{sst / 'dev.tsv'}: test has 1 example; {MINIMUMS}")):
        load_task("sst2", data_dir=tmp_path)
    _write_tsv(sst / "train.tsv", "sentence\tlabel", [f"made up phrase {i}\t{i % 2}" for i in range(9)])
    with pytest.raises(ValueError, match=re.escape(f"{sst / 'train.tsv'}: 9 examples; carving dev (2) out of "
                                                   f"them leaves train 7; {MINIMUMS}, so this file needs at least 10")):
        load_task("sst2", data_dir=tmp_path)


def _write_tsv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


class _FakeHubSplit(dict):
    """What ``datasets.load_dataset(...)[split]`` is indexed with here: a column name."""


def _fake_hub(monkeypatch, train_labels: list[int], dev_labels: list[int]) -> None:
    import datasets

    def split(labels: list[int], word: str) -> _FakeHubSplit:
        return _FakeHubSplit(sentence=[f"{word} invented phrase {i}" for i in range(len(labels))], label=labels)

    hub = {"train": split(train_labels, "train"), "validation": split(dev_labels, "dev")}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub)


def test_a_hub_dataset_goes_through_the_same_checks(monkeypatch):
    _fake_hub(monkeypatch, [0, 1] * 10, [0, 1, 1])
    task = load_task("sst2")  # a well-formed one loads
    assert [len(task[s]) for s in ("train", "dev", "test")] == [18, 2, 3]
    _fake_hub(monkeypatch, [1] * 20, [0, 1, 1])
    with pytest.raises(ValueError) as err:
        load_task("sst2")
    assert str(err.value).startswith("hub:glue/sst2 train split: train has 1 class ([1]); a classification task "
                                     "needs at least 2 classes in train")
    _fake_hub(monkeypatch, [0, 1] * 10, [1])
    with pytest.raises(ValueError, match=re.escape(f"hub:glue/sst2 validation split: test has 1 example; {MINIMUMS}")):
        load_task("sst2")
    _fake_hub(monkeypatch, [0, 1] * 10, [0, 1, -1])  # GLUE's hidden test labels are -1
    with pytest.raises(ValueError, match=re.escape("hub:glue/sst2 validation split: test has class id -1; class ids "
                                                   "of task 'sst2' must be 0..1 (2 classes)")):
        load_task("sst2")


# ---- classes ---------------------------------------------------------------------------------------


def test_one_class_is_refused_listing_the_classes_found(tmp_path):
    path = _csv(tmp_path / "one_class.csv", _lines(30, ["0"]))
    with pytest.raises(ValueError) as err:
        load_task(path)
    assert str(err.value) == (f"{path} (train: the rest of its rows): train has 1 class ([0]); a classification "
                              f"task needs at least 2 classes in train (classes found in the other splits: "
                              f"{{'dev': [0], 'test': [0]}})")


def test_one_class_in_train_is_refused_even_when_dev_has_another(tmp_path):
    folder = tmp_path / "folder"
    train = _csv(folder / "train.csv", _lines(20, ["pos"]))
    _csv(folder / "dev.csv", _lines(4, ["pos", "neg"], start=100))
    _csv(folder / "test.csv", _lines(4, ["pos", "neg"], start=200))
    with pytest.raises(ValueError) as err:
        load_task(str(folder))
    assert str(err.value).startswith(f"{train}: train has 1 class (['pos']); a classification task needs at least "
                                     f"2 classes in train (classes found in the other splits: "
                                     f"{{'dev': ['neg', 'pos'], 'test': ['neg', 'pos']}})")
    # the classes named by labels= do not make up for the missing examples
    with pytest.raises(ValueError, match=re.escape("train has 1 class (['pos'])")):
        load_task(str(folder), labels=["neg", "pos"])


# ---- labels ----------------------------------------------------------------------------------------


def test_labels_0_to_c_minus_1_are_used_as_they_are_without_a_word(tmp_path):
    task = _load_quietly(_csv(tmp_path / "ids.csv", _lines(30, ["2", "0", "1"])))
    assert task.label_names is None and task.num_labels == 3
    for split in task.splits.values():
        for text, y in zip(split.texts, split.labels):
            assert y == [2, 0, 1][int(text.split()[5]) % 3]


def test_labels_1_to_c_are_remapped_and_the_mapping_shown_once(tmp_path):
    path = _csv(tmp_path / "stars.csv", _lines(30, ["1", "2", "3"]))
    with pytest.warns(LabelMappingWarning) as record:
        task = load_task(path)
    assert len(record) == 1
    assert str(record[0].message) == (
        f"{path}: integer labels [1, 2, 3] are not 0..2, so they are mapped to class ids in numeric order: "
        f"'1' -> 0, '2' -> 1, '3' -> 2 (3 classes). Pass labels= (DistillConfig.labels, --labels) with the names "
        f"in class-id order to choose another order or class count")
    assert task.num_labels == 3 and task.label_names == ["1", "2", "3"]  # not 4 classes, class 0 empty
    for split in task.splits.values():
        for text, y in zip(split.texts, split.labels):
            assert y == int(text.split()[5]) % 3  # label 1 -> class 0 ...


def test_integer_labels_with_a_gap_are_remapped_unless_labels_keeps_them(tmp_path):
    path = _csv(tmp_path / "gap.csv", _lines(20, ["0", "2"]))
    with pytest.warns(LabelMappingWarning, match=r"integer labels \[0, 2\] are not 0\.\.1.*'0' -> 0, '2' -> 1"):
        task = load_task(path)
    assert task.num_labels == 2 and task.label_names == ["0", "2"]
    kept = _load_quietly(path, labels=["0", "1", "2"])  # the user says: three classes, 1 unseen
    assert kept.num_labels == 3
    assert sorted(set(np.concatenate([s.labels for s in kept.splits.values()]).tolist())) == [0, 2]


def test_class_names_get_sorted_ids_and_the_mapping_shown_once(tmp_path):
    path = _csv(tmp_path / "named.csv", _lines(20, ["pos", "neg"]))
    with pytest.warns(LabelMappingWarning) as record:
        task = load_task(path)
    assert len(record) == 1 and task.label_names == ["neg", "pos"]
    assert str(record[0].message).startswith(f"{path}: class names get ids in sorted order: 'neg' -> 0, 'pos' -> 1 "
                                             f"(2 classes)")
    assert _load_quietly(path, labels=["pos", "neg"]).label_names == ["pos", "neg"]  # named by the user: no word


def test_a_folder_shows_one_mapping_for_all_its_files(tmp_path):
    folder = tmp_path / "folder"
    files = [_csv(folder / f"{s}.csv", _lines(k, ["1", "2"], start=100 * i))
             for i, (s, k) in enumerate({"train": 20, "dev": 4, "test": 4}.items())]
    with pytest.warns(LabelMappingWarning) as record:
        task = load_task(str(folder))
    assert len(record) == 1 and str(record[0].message).startswith(", ".join(files) + ": integer labels [1, 2]")
    assert task.label_names == ["1", "2"]


def test_a_negative_integer_label_is_still_refused(tmp_path):
    path = _csv(tmp_path / "negative.csv", _lines(20, ["1", "-1"]))
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: label '-1' is not a class index; labels must be "
                                                   f"integers 0..C-1, or all class names")):
        load_task(path)


# ---- encodings -------------------------------------------------------------------------------------


def test_a_byte_order_mark_is_dropped_and_text_found(tmp_path):
    path = _csv(tmp_path / "excel.csv", _lines(20), encoding="utf-8-sig")
    assert Path(path).read_bytes().startswith(b"\xef\xbb\xbf")
    task = _load_quietly(path)
    assert sum(len(s) for s in task.splits.values()) == 20
    assert all(t.startswith("a made up remark") for s in task.splits.values() for t in s.texts)


def test_a_non_utf8_file_names_the_file_line_and_byte(tmp_path):
    rows = _lines(20)
    rows[4] = "a made up caf\u00e9 remark on blue widgets,1"  # line 6 of the file
    path = _csv(tmp_path / "latin1.csv", rows, encoding="cp1252")
    offset = Path(path).read_bytes().index(b"\xe9")
    with pytest.raises(ValueError) as err:
        load_task(path)
    message = str(err.value)
    assert message.startswith(f"{path}:6: not UTF-8: byte 0xe9 at byte offset {offset} ")
    assert "save the file as UTF-8" in message and "CSV UTF-8" in message
    assert not isinstance(err.value, UnicodeDecodeError)


def test_the_byte_offset_counts_the_byte_order_mark(tmp_path):
    path = tmp_path / "bom_then_bad.tsv"
    path.write_bytes(b"\xef\xbb\xbftext\tlabel\nfine words\t0\nbad \xff byte\t1\n")
    assert path.read_bytes().index(b"\xff") == 31  # 3 (the mark) + 11 (header) + 13 (line 2) + 4
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: not UTF-8: byte 0xff at byte offset 31 ")):
        load_task(str(path))


def test_a_local_glue_file_that_is_not_utf8_is_named(tmp_path):
    cola = tmp_path / "CoLA"
    cola.mkdir()
    (cola / "train.tsv").write_bytes(b"src\t1\t\tsome words\nsrc\t0\t*\tna\xefve words\n")
    (cola / "dev.tsv").write_text("src\t1\t\tother words\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{cola / 'train.tsv'}:2: not UTF-8: byte 0xef at byte offset")):
        load_task("cola", data_dir=tmp_path)


# ---- ragged rows -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_row, fields", [("a made up remark, with a comma,1", 3), ("a made up remark", 1),
                                             ("a made up remark,1,extra,more", 4)])
def test_a_ragged_csv_row_is_reported_with_file_and_line(tmp_path, bad_row, fields):
    rows = _lines(20)
    rows[6] = bad_row  # line 8 of the file
    path = _csv(tmp_path / "ragged.csv", rows)
    with pytest.raises(ValueError) as err:
        load_task(path)
    word = "field" if fields == 1 else "fields"
    assert str(err.value) == (f"{path}:8: {fields} {word}, but the header (line 1) has 2 (['text', 'label']); every "
                              f"row needs exactly one field per column (a text holding a comma must be in double "
                              f"quotes)")


def test_a_quoted_comma_is_not_ragged(tmp_path):
    rows = _lines(20)
    rows[6] = '"a made up remark, with a comma",1'
    task = _load_quietly(_csv(tmp_path / "quoted.csv", rows))
    assert "a made up remark, with a comma" in [t for s in task.splits.values() for t in s.texts]


def test_a_tab_inside_a_tsv_text_is_reported(tmp_path):
    rows = [r.replace(",", "\t") for r in _lines(20)]
    rows[2] = "a made up\tremark\t0"  # line 4
    path = _csv(tmp_path / "tabs.tsv", rows, header="text\tlabel")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4: 3 fields, but the header (line 1) has 2 "
                                                   f"(['text', 'label']); every row needs exactly one field per "
                                                   f"column (a text cannot hold a tab in a TSV file)")):
        load_task(path)


# ---- one place -------------------------------------------------------------------------------------


def test_every_route_passes_through_check_task(tmp_path, monkeypatch):
    """load_local (file and folder) and load_glue (folder and hub) all call datacheck.check_task."""
    seen: list[str] = []
    real = data.check_task
    monkeypatch.setattr(data, "check_task", lambda task, sources: (seen.append(task.name), real(task, sources)))
    _load_quietly(_csv(tmp_path / "file.csv", _lines(20)))
    folder = tmp_path / "folder"
    for i, (s, k) in enumerate({"train": 20, "dev": 4, "test": 4}.items()):
        _csv(folder / f"{s}.csv", _lines(k, start=100 * i))
    _load_quietly(str(folder))
    sst = tmp_path / "glue" / "SST-2"
    _write_tsv(sst / "train.tsv", "sentence\tlabel", [f"made up {i}\t{i % 2}" for i in range(20)])
    _write_tsv(sst / "dev.tsv", "sentence\tlabel", [f"made up dev {i}\t{i % 2}" for i in range(4)])
    load_task("sst2", data_dir=tmp_path / "glue")
    _fake_hub(monkeypatch, [0, 1] * 10, [0, 1])
    load_task("sst-2")
    assert seen == ["file", "folder", "sst2", "sst2"]
