"""Speed and memory of the distillation engine (prints a markdown table; not a test).

    python perf/engine_speed.py                  # text + digits (text builds the teacher once)
    python perf/engine_speed.py --digits-only
    python perf/engine_speed.py --fresh-cache    # also time teacher fine-tuning + caching
    python perf/engine_speed.py --digits-only --relation-naive --threads 1   # the Gram trick

Measured side by side in one run, interleaved, medians over repetitions:

1. a distillation step reading the teacher cache vs a live-teacher KD step (the teacher runs on
   every batch, as KD toolkits do), same student, same batches, same knowledge;
2. the same cached step vs TextBrewer 0.2.1 doing vanilla KD + one hidden-state match on the
   same models and batches (``pip install --no-deps textbrewer==0.2.1.post1``; skipped if absent);
3. teacher fine-tuning + caching on rt-polarity: wall time, peak RSS, cache size on disk;
4. the digits engine: optimizer steps per second;
5. with ``--relation-naive``: the digits engine with all four knowledge types, ``relation``
   computed through the explicit H x H FSP matrices (``fsp_matrix``) instead of the token Gram
   matrices (``fsp_mse``, the engine's form): the speed-up of never forming the H x H matrices.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kd_env

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kd_env import build_distiller, get_preset  # noqa: E402
from kd_env.knowledge import Relation, fsp_matrix, register_knowledge  # noqa: E402
from kd_env.teacher import TeacherCache, cache_root  # noqa: E402

NAIVE_RELATION = "relation_fsp_matrices"


@register_knowledge(NAIVE_RELATION, overwrite=True)
class RelationThroughFspMatrices(Relation):
    """``relation`` computed the direct way, forming each H x H FSP matrix (same value as
    :class:`~kd_env.knowledge.Relation`; for timing only)."""

    @staticmethod
    def pair_loss(a_s, b_s, a_t, b_t, mask):
        return ((fsp_matrix(a_s, b_s, mask) - fsp_matrix(a_t, b_t, mask)) ** 2).mean()


def _median_ms_per_step(fn, steps: int, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t) / steps)
    return out


def textbrewer_step_fn(distiller, steps: int):
    """A closure running ``steps`` TextBrewer GeneralDistiller steps (vanilla KD + one hidden
    match) on the distiller's models and batches."""
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    teacher = distiller.teacher_model.model
    student = copy.deepcopy(distiller.student.model.model)
    k = distiller.config.student_layers
    t_layer = distiller.layer_map[-1]
    tmp = tempfile.mkdtemp()
    train_config = TrainingConfig(device="cpu", output_dir=tmp, log_dir=None, ckpt_frequency=10**9)
    distill_config = DistillationConfig(
        temperature=2.0, hard_label_weight=1.0, kd_loss_type="ce", kd_loss_weight=1.0,
        intermediate_matches=[{"layer_T": t_layer, "layer_S": k, "feature": "hidden", "loss": "hidden_mse", "weight": 1}])

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "losses": outputs.loss,
                "inputs_mask": batch["attention_mask"]}

    tb = GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)
    optimizer = torch.optim.AdamW(student.parameters(), lr=distiller.config.lr)
    tb.model_T.eval()
    student.train()
    rng = np.random.default_rng(0)

    def run():
        for _ in range(steps):
            idx = rng.choice(len(distiller.train_data), distiller.config.batch_size, replace=False)
            b = distiller.train_data.batch(idx)
            batch = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": b["labels"]}
            if "token_type_ids" in b:
                batch["token_type_ids"] = b["token_type_ids"]
            loss, _ = tb.train_on_batch(batch, {"output_hidden_states": True})
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()

    return run, textbrewer.__version__


def bench_text(args, rows: list[list[str]]) -> None:
    cfg = get_preset("text", progress=True, threads=args.threads)
    if args.fresh_cache:
        os.environ["KD_ENV_CACHE"] = tempfile.mkdtemp(prefix="kd_env_bench_")
        t = time.perf_counter()
        cached = build_distiller(cfg)
        wall = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(["teacher fine-tune + cache build (rt-polarity, from empty cache)", f"{wall:.0f} s",
                     "target <= 600 s"])
        rows.append(["  of which fine-tuning (1 epoch)", f"{cached.teacher_metrics['fine_tune']['seconds']:.0f} s", ""])
        rows.append(["peak RSS of that process", f"{rss:.0f} MiB", ""])
    else:
        cached = build_distiller(cfg)
        rows.append(["teacher fine-tuning (recorded when built)", f"{cached.teacher_metrics['fine_tune']['seconds']:.0f} s",
                     "rerun with --fresh-cache for a full timing"])
        # time the cache build alone into a scratch folder
        root = Path(tempfile.mkdtemp(prefix="kd_env_cache_"))
        t = time.perf_counter()
        TeacherCache.build(root / "c", "bench", cached.teacher_model, cached.train_data, cached.layer_map,
                           ["logits", "hidden_cls", "hidden_tokens"], cached.device, progress=False)
        rows.append([f"teacher-output cache build ({len(cached.train_data)} examples)", f"{time.perf_counter() - t:.1f} s", ""])
    rows.append(["teacher test accuracy", f"{cached.teacher_metrics['test']['main']:.4f}", ""])
    rows.append(["teacher cache size on disk", f"{cached.teacher.size_bytes() / 2**20:.1f} MiB", ""])
    live = build_distiller(cfg.replace(use_teacher_cache=False))
    weights = [1.0, 1.0, 1.0, 0.0]  # finetune + response + feature
    steps, reps = args.steps, args.reps
    c_ms, l_ms, tb_ms = [], [], []
    try:
        tb_run, tb_version = textbrewer_step_fn(cached, steps)
    except ImportError:
        tb_run, tb_version = None, None
    # warm-up
    cached.train_phase(weights, steps=2)
    live.train_phase(weights, steps=2)
    if tb_run:
        tb_run()
    for _ in range(reps):
        cached.reset(1)
        live.reset(1)
        c_ms += _median_ms_per_step(lambda: cached.train_phase(weights, steps=steps), steps, 1)
        l_ms += _median_ms_per_step(lambda: live.train_phase(weights, steps=steps), steps, 1)
        if tb_run:
            tb_ms += _median_ms_per_step(tb_run, steps, 1)
    c, lv = statistics.median(c_ms), statistics.median(l_ms)
    rows.append(["KD step, teacher cache (finetune+response+feature), ms", f"{c:.0f}", f"{len(c_ms)} reps x {steps} steps"])
    rows.append(["KD step, live teacher forward, ms", f"{lv:.0f}", ""])
    rows.append(["**ratio cached / live**", f"**{c / lv:.2f}**", "target <= 0.65"])
    if tb_run:
        tb = statistics.median(tb_ms)
        rows.append([f"TextBrewer {tb_version} GeneralDistiller step (KD + 1 hidden match, live teacher), ms", f"{tb:.0f}", ""])
        rows.append(["**ratio ours (cached) / TextBrewer**", f"**{c / tb:.2f}**", ""])
    else:
        rows.append(["TextBrewer", "not installed", "pip install --no-deps textbrewer==0.2.1.post1"])


def _digits_steps_per_second(distiller, weights, reps: int) -> float:
    """Median optimizer steps/s of 150-step phases on digits."""
    rates = []
    for _ in range(reps):
        distiller.reset(0)
        t = time.perf_counter()
        distiller.train_phase(weights, steps=150)
        rates.append(150 / (time.perf_counter() - t))
    return statistics.median(rates)


def bench_digits(args, rows: list[list[str]]) -> None:
    config = get_preset("digits", threads=args.threads or 1)
    d = build_distiller(config)
    gram = None
    for weights, label in (([1, 1, 1, 1], "all four knowledge types"), ([1, 0, 0, 0], "finetune only")):
        rate = _digits_steps_per_second(d, weights, args.reps)
        gram = rate if gram is None else gram
        rows.append([f"digits engine, {label}: optimizer steps/s", f"{rate:.0f}",
                     "target >= 300" if label.startswith("all") else ""])
    d.close()
    if args.relation_naive:
        knowledge = tuple(NAIVE_RELATION if k == "relation" else k for k in config.knowledge)
        naive = build_distiller(config.replace(knowledge=knowledge))
        rate = _digits_steps_per_second(naive, [1, 1, 1, 1], args.reps)
        naive.close()
        rows.append(["digits engine, all four, relation through H x H FSP matrices: optimizer steps/s",
                     f"{rate:.0f}", "the direct form, for comparison"])
        rows.append(["**speed-up of the Gram form (all four knowledge types)**", f"**{gram / rate:.1f}x**",
                     f"{rate:.0f} -> {gram:.0f} steps/s"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--digits-only", action="store_true")
    p.add_argument("--fresh-cache", action="store_true", help="fine-tune and cache the teacher from scratch")
    p.add_argument("--steps", type=int, default=8, help="steps per timed repetition")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--relation-naive", action="store_true",
                   help="also time relation through the explicit H x H FSP matrices on digits (the Gram trick)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows: list[list[str]] = []
    if not args.digits_only:
        bench_text(args, rows)
    bench_digits(args, rows)
    print(f"\nengine_speed on {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads (text), "
          f"cache root {cache_root()}\n")
    print("| measurement | value | note |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
