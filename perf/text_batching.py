"""Would batching text episodes raise episodes per hour?  The demo's text student (the bundled
MiniLM-L6 cut to 3 layers, mean pooling, batch 16) timed on one train step (forward, backward,
AdamW) three ways, side by side in one run:

* ``one student, batch B``: the step as the env runs it;
* ``one student, batch 2B``: the cheapest possible form of two episodes' steps in one computation
  (the same weights; two students could do no better, since their weights differ);
* ``two students vmapped``: two students' parameters stacked and one step of both through
  ``torch.func.functional_call`` under ``torch.func.vmap``, each on its own batch of B.

If two episodes' work in one computation costs about twice one episode's, batching text students
cannot raise episodes per hour, unlike the digits MLPs (whose steps are overhead, not arithmetic).
Real sentences are not needed to time the arithmetic: the batches are random token ids of the
demo's typical length (``--tokens``).

Usage::

    python perf/text_batching.py                     # batch 16, 40 tokens, 1 thread
    python perf/text_batching.py --threads 2 --reps 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.func import functional_call, stack_module_state, vmap  # noqa: E402

from kd_env.models import SequenceClassifier, layer_map, load_hf_classifier, resolve_model_path, truncate_layers  # noqa: E402


def student(path: str, layers: int) -> SequenceClassifier:
    """The demo's student (the ``text3`` preset): the teacher's first layers, mean pooling, frozen
    word embeddings."""
    base = load_hf_classifier(path, 2)
    keep = layer_map(6, layers, "first")[1:]
    model = SequenceClassifier(truncate_layers(base, keep), "mean")
    model.model.get_input_embeddings().weight.requires_grad_(False)
    return model


def batch(b: int, tokens: int, vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, vocab, (b, tokens), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (b,), generator=gen)}


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm-l6", help="teacher name or folder (default: the bundled MiniLM-L6)")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    path = resolve_model_path(a.model)
    gen = torch.Generator().manual_seed(0)
    one = student(path, a.layers)
    vocab = one.model.config.vocab_size
    opt = torch.optim.AdamW([q for q in one.parameters() if q.requires_grad], lr=5e-4, foreach=True)

    def step(model, optimizer, b):
        out = model(b)
        loss = torch.nn.functional.cross_entropy(out.logits, b["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    b1, b2 = batch(a.batch, a.tokens, vocab, gen), batch(2 * a.batch, a.tokens, vocab, gen)
    rows = {f"one student, batch {a.batch}": median_seconds(lambda: step(one, opt, b1), a.reps),
            f"one student, batch {2 * a.batch}": median_seconds(lambda: step(one, opt, b2), a.reps)}
    models = [student(path, a.layers), student(path, a.layers)]
    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_(not k.endswith("word_embeddings.weight")) for k, v in params.items()}
    vopt = torch.optim.AdamW([v for v in params.values() if v.requires_grad], lr=5e-4, foreach=True)
    template = models[0]
    two = {k: torch.stack([v, v]) for k, v in batch(a.batch, a.tokens, vocab, gen).items()}

    def per_student(p, bufs, b):
        out = functional_call(template, (p, bufs), (b,))
        return torch.nn.functional.cross_entropy(out.logits, b["labels"])

    def vmapped_step():
        loss = vmap(per_student, randomness="different")(params, buffers, two).sum()
        vopt.zero_grad(set_to_none=True)
        loss.backward()
        vopt.step()

    try:
        rows["two students vmapped (batch %d each)" % a.batch] = median_seconds(vmapped_step, a.reps)
    except Exception as exc:  # noqa: BLE001 - a model vmap cannot trace: reported, not hidden
        print(f"two students vmapped: not measurable ({type(exc).__name__}: {str(exc)[:200]})")
    base = rows[f"one student, batch {a.batch}"]
    print(f"\n## Text batching: {a.layers}-layer student of {a.model}, {a.tokens} tokens, {a.threads} thread(s), "
          f"median of {a.reps}\n")
    print("| step | examples | ms | ms per example | episodes' steps per second vs one student |")
    print("|---|---|---|---|---|")
    for name, seconds in rows.items():
        examples = a.batch if name.startswith(f"one student, batch {a.batch}") and "vmapped" not in name else 2 * a.batch
        episodes = examples // a.batch
        print(f"| {name} | {examples} | {seconds * 1e3:.0f} | {seconds * 1e3 / examples:.1f} | "
              f"{episodes * base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
