"""The text student's cost, today's path against the path before issue 41, side by side in one run.

The demo's student (``text3``: the bundled MiniLM-L6 cut to 3 layers, mean pooling, batch 16,
80 steps in 5 phases of 16, bf16 autocast where the CPU has it) is distilled with all four
knowledge types on one env per variant, and the variants take turns (``--reps`` rounds):

* ``before``: the padded forward of Hugging Face's model (PyTorch's dropout), AdamW's
  ``foreach`` kernel, the relation loss pair by pair, every evaluation in fp32, the crash guard
  copying and checking the whole student after each phase (the path before issue 41);
* ``now``: the preset as it is (token packing with :func:`kd_env.packed.dropout`'s cheaper mask,
  fused AdamW, each layer's relation Gram matrices once, evaluation in the student's precision,
  the crash guard on trainable parameters only).

Rows: milliseconds per optimizer step (the engine's own step timer), seconds of one dev-probe
evaluation and of one test evaluation, and seconds of one whole student (reset, 80 steps with the
5 dev probes, the test evaluation): what every text episode and every demo student costs.  Each
ratio is taken within a round; the table gives the median and range over rounds.

``--accuracy-seeds N`` then distils paired students (same seed, same mask, same situation) with
both variants and prints their test accuracies: the difference ``now - before`` per mask and
pooled over masks (``experiments.stats.compare``: masks, then seeds), and, for the same ``now`` students, the
difference their evaluation precision makes (bf16 minus fp32 test accuracy).

Usage::

    python perf/text_step_speed.py                               # 1 thread, 3 rounds
    python perf/text_step_speed.py --threads 2 --reps 5
    python perf/text_step_speed.py --reps 0 --accuracy-seeds 5 --masks 1111,1000,0100 \\
        --situations rt-clean,rt-labels10-noisy30 --seed-offset 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kd_env import KnowledgeSelectionEnv  # noqa: E402
from kd_env.config import get_preset  # noqa: E402
from kd_env.instances import get_instance_set  # noqa: E402
from kd_env.knowledge import Relation, fsp_mse  # noqa: E402
from kd_env.runtime import StepTimer  # noqa: E402

from batched_env_speed import cpu_description  # noqa: E402

VARIANTS = ("before", "now")


class PairwiseRelation(Relation):
    """The relation loss as it was computed before: each layer pair's Gram matrices afresh."""

    @staticmethod
    def pair_loss(a_s, b_s, a_t, b_t, mask):
        return fsp_mse(a_s, b_s, a_t, b_t, mask)


def make_env(variant: str, preset: str, situation: str | None, threads: int) -> KnowledgeSelectionEnv:
    """The env of ``variant`` (``before`` rebuilds the earlier path on today's code)."""
    cfg = get_preset(preset).replace(progress=False, threads=threads)
    if situation:
        cfg = get_instance_set("text3-situations").config(situation, cfg)
    if variant == "before":
        cfg = cfg.replace(token_packing=False, eval_precision="fp32")
    env = KnowledgeSelectionEnv(cfg, action_mode="mask")
    d = env.distiller
    if variant == "before":
        d.knowledge = [PairwiseRelation() if type(k) is Relation else k for k in d.knowledge]
        d._optimizer_kernel = lambda: {"foreach": True}
        # the crash guard as it was: the whole state dict copied, every parameter checked element-wise
        d.snapshot_student = lambda: {k: v.detach().clone() for k, v in d.student.state_dict().items()}
        d.restore_student = lambda snapshot: d.student.load_state_dict(snapshot)
        d.student_is_finite = lambda: all(bool(torch.isfinite(p).all()) for p in d.student.parameters())
        d.reset(cfg.seed)
    return env


def one_student(env: KnowledgeSelectionEnv, mask: np.ndarray, seed: int) -> dict[str, float]:
    """Distil one student with ``mask`` in every phase and test it; its costs and scores."""
    d = env.distiller
    start = time.perf_counter()
    env.reset(seed=seed)
    d.step_timer = StepTimer()
    done = False
    while not done:
        *_, terminated, truncated, _ = env.step(mask)
        done = terminated or truncated
    step_ms = sum(d.step_timer.milliseconds_per_step().values())
    d.step_timer = None
    t = time.perf_counter()
    test = d.evaluate("test")["main"]
    test_seconds = time.perf_counter() - t
    student_seconds = time.perf_counter() - start
    t = time.perf_counter()
    d.evaluate("probe")
    probe_seconds = time.perf_counter() - t
    return {"step_ms": step_ms, "probe_s": probe_seconds, "test_s": test_seconds, "student_s": student_seconds,
            "test": test}


def row(name: str, values: list[float], unit: str, digits: int = 2) -> str:
    lo, hi = min(values), max(values)
    return f"| {name} | {statistics.median(values):.{digits}f} | {lo:.{digits}f}-{hi:.{digits}f} | {unit} |"


def speed(args, envs: dict[str, KnowledgeSelectionEnv]) -> dict[str, list[dict[str, float]]]:
    mask = np.ones(envs["now"].distiller.num_knowledge, dtype=np.int8)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    one_student(envs["before"], mask, 99)  # warm-up: first-call allocations, kernel selection
    one_student(envs["now"], mask, 99)
    for r in range(args.reps):
        for v in VARIANTS:
            runs[v].append(one_student(envs[v], mask, r))
    print("| measurement | median | range (min-max) | unit |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        for key, label, unit in (("step_ms", "train step", "ms"), ("probe_s", "dev-probe evaluation", "s"),
                                 ("test_s", "test evaluation", "s"), ("student_s", "whole student", "s")):
            print(row(f"{v}: {label}", [x[key] for x in runs[v]], unit, 1 if key == "step_ms" else 2))
    for key, label in (("step_ms", "train step"), ("probe_s", "dev-probe evaluation"), ("test_s", "test evaluation"),
                       ("student_s", "whole student")):
        ratios = [b[key] / n[key] for b, n in zip(runs["before"], runs["now"])]
        print(row(f"**speed-up before / now, {label}**", ratios, "x"))
    return runs


def accuracy(args) -> dict[str, object]:
    from experiments.stats import Score, compare

    masks = [np.array([int(c) for c in m], dtype=np.int8) for m in args.masks.split(",")]
    situations = args.situations.split(",") if args.situations else [""]
    rows = []
    for situation in situations:
        envs = {v: make_env(v, args.preset, situation, args.threads) for v in VARIANTS}
        for m, mask in zip(args.masks.split(","), masks):
            for seed in range(args.seed_offset, args.seed_offset + args.accuracy_seeds):
                before = one_student(envs["before"], mask, seed)["test"]
                now = one_student(envs["now"], mask, seed)
                d = envs["now"].distiller
                precision = d.eval_precision
                d.eval_precision = "fp32"
                now_fp32 = d.evaluate("test")["main"]
                d.eval_precision = precision
                rows.append({"situation": situation or "preset", "mask": m, "seed": seed, "before": before,
                             "now": now["test"], "now_fp32_eval": now_fp32, "eval_precision": precision})
                print(json.dumps(rows[-1]), flush=True)
        for env in envs.values():
            env.close()
    scores = [Score(v, f"{r['situation']}/{r['mask']}", None, r["seed"], r[v]) for r in rows
              for v in ("now", "before", "now_fp32_eval")]
    paired = compare(scores, "now", "before").to_dict()
    evals = compare(scores, "now", "now_fp32_eval").to_dict()
    print(f"test accuracy now - before: {paired['mean']:+.4f} [{paired['low']:+.4f}, {paired['high']:+.4f}] "
          f"over {paired['situations']} situation/mask strata x seeds ({paired['pairs']} pairs); "
          f"strata won {paired['situation_wins']}, lost {paired['situation_losses']}")
    print(f"test accuracy of the same 'now' students, bf16 minus fp32 evaluation: {evals['mean']:+.4f} "
          f"[{evals['low']:+.4f}, {evals['high']:+.4f}]")
    return {"rows": rows, "now_minus_before": paired, "eval_bf16_minus_fp32": evals}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="text3")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--reps", type=int, default=3, help="speed rounds (0: none)")
    p.add_argument("--accuracy-seeds", type=int, default=0, help="paired students per mask and situation")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed of the accuracy study")
    p.add_argument("--masks", default="1111,1000,0100", help="comma-separated 0/1 masks over the knowledge types")
    p.add_argument("--situations", default="", help="text3-situations names for the accuracy study (default: "
                                                     "the preset itself)")
    p.add_argument("--json", default="", help="write the measurements to this file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; {a.threads} torch thread(s); preset {a.preset}")
    out: dict[str, object] = {"cpu": cpu_description(), "threads": a.threads, "torch": torch.__version__}
    if a.reps > 0:
        envs = {v: make_env(v, a.preset, None, a.threads) for v in VARIANTS}
        print(f"student precision {envs['now'].distiller.precision}, evaluation: before fp32, now "
              f"{envs['now'].distiller.eval_precision}")
        out["speed"] = speed(a, envs)
        for env in envs.values():
            env.close()
    if a.accuracy_seeds > 0:
        out["accuracy"] = accuracy(a)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
