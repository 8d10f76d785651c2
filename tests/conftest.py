"""Shared fixtures: an offline, sandboxed environment; a tiny random BERT saved to disk; a small
invented text task.

Nothing here touches the network or ``~/.cache``: the hub flags are set before any Hugging Face
import, and ``KD_ENV_CACHE`` points at a per-session temporary folder.  No real data sentence is
ever written into the repository: the text fixtures are invented here.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

# Set before transformers / huggingface_hub are imported anywhere: they read these at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models run in milliseconds on one thread, but intra-op threads that spin while another
# process holds the cores make every forward ~100x slower.  KD_ENV_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("KD_ENV_TEST_THREADS", "1")))

# A tiny random BERT: small enough that a forward pass takes a few milliseconds.
TINY_LAYERS = 3
TINY_HIDDEN = 32
TINY_HEADS = 4
TINY_INTERMEDIATE = 64

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE_WORDS = ["good", "great", "bright", "fun", "lovely", "clever", "warm", "sharp"]
NEGATIVE_WORDS = ["bad", "awful", "dull", "slow", "clumsy", "boring", "cold", "flat"]
SUBJECTS = ["the film", "this movie", "the plot", "the actor", "the story", "the music", "every scene",
            "the ending"]
FILLER_WORDS = ["the", "this", "a", "film", "movie", "plot", "actor", "story", "music", "every", "scene",
                "ending", "was", "is", "very", "felt", "and", "quite", "rather", "but", "not", ".", ","]
# invented tokens that pad the vocabulary to a realistic-looking size
INVENTED_WORDS = [f"zq{i:02d}" for i in range(70)]


def _vocabulary() -> list[str]:
    seen: list[str] = []
    for w in SPECIAL_TOKENS + FILLER_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS + INVENTED_WORDS:
        if w not in seen:
            seen.append(w)
    return seen


def invented_sentences(n: int = 120) -> list[tuple[str, int]]:
    """``n`` invented review-like sentences (label 1 = positive words, 0 = negative), of varied
    length so that batches need padding."""
    templates = [
        "{s} was {a}",
        "{s} is very {a} .",
        "{s} felt {a} and {b}",
        "{s} , {a} but not {c}",
        "{s} was quite {a} , rather {b} and very {c} .",
    ]
    rows = []
    for i in range(n):
        label, j = i % 2, i // 2  # (subject, first word) differ for every j < 64
        words = POSITIVE_WORDS if label else NEGATIVE_WORDS
        a = (j // 8) % 8
        text = templates[(j + a) % len(templates)].format(
            s=SUBJECTS[j % 8], a=words[a], b=words[(a + 3) % 8], c=words[(a + 5) % 8])
        rows.append((text, label))
    assert n <= 128 and len({t for t, _ in rows}) == n
    return rows


@pytest.fixture(scope="session", autouse=True)
def offline_sandbox(tmp_path_factory: pytest.TempPathFactory):
    """Offline hub flags and a session-wide ``KD_ENV_CACHE`` under pytest's temporary folder."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("kd_env_cache")
    mp.setenv("KD_ENV_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    yield cache
    mp.undo()


@pytest.fixture(autouse=True)
def _restore_torch_rng():
    """Tests seed torch freely; give each one the same starting global RNG state."""
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    yield
    torch.set_rng_state(state)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that build a distiller with ``threads=N`` must not leak that setting."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny random ``BertForSequenceClassification`` (2 labels) and its
    WordPiece tokenizer, saved with ``save_pretrained`` (loadable offline by path)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = _vocabulary()
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file))
    if len(tokenizer) != len(vocab):  # transformers >= 5 takes the vocabulary as `vocab=`
        tokenizer = BertTokenizerFast(vocab=str(vocab_file))
    assert len(tokenizer) == len(vocab)
    config = BertConfig(vocab_size=len(vocab), hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
                        num_attention_heads=TINY_HEADS, intermediate_size=TINY_INTERMEDIATE,
                        max_position_embeddings=64, num_labels=2)
    state = torch.get_rng_state()
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    torch.set_rng_state(state)
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    return folder


def write_text_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local two-label text task (``text,label``; 120 invented sentences)."""
    return write_text_csv(tmp_path_factory.mktemp("text_task") / "toy_reviews.csv", invented_sentences(120))
