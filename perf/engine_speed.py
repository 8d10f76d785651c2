"""Speed and memory of the distillation engine (prints markdown tables; not a test).

    python perf/engine_speed.py                  # text + digits at 1 and 2 threads
    python perf/engine_speed.py --digits-only --threads 1
    python perf/engine_speed.py --fresh-cache    # also time teacher fine-tuning + caching
    python perf/engine_speed.py --precision-compare   # teacher fine-tuning + caching, fp32 vs bf16
    python perf/engine_speed.py --digits-only --student-compare --threads 1   # text students: fp32, bf16, grouped
    python perf/engine_speed.py --digits-only --relation-naive --threads 1   # the Gram trick

Measured side by side in one run, for each thread count in ``--threads`` (default 1 and 2), in
``--reps`` interleaved repetitions (each repetition times every contender once, in turn, on the
same batches); every row gives the median and the range (min-max) over the repetitions, and each
ratio is taken within a repetition:

1. a distillation step reading the teacher cache (finetune + response + feature; the ``text``
   preset at ``--batch-size``) against
   - a live-teacher KD step (the teacher runs on every batch, as KD toolkits do),
   - TextBrewer 0.2.1 doing vanilla KD + one hidden-state match on the same models and batches
     (``pip install --no-deps textbrewer==0.2.1.post1``; skipped if absent),
   - a bare train step of the same student (CE only, no teacher, no statistics);
2. a profile of the cached KD step and of the bare step, split into their parts (data and
   collation, teacher-cache read, student forward, knowledge losses, backward, optimizer with
   clipping and schedule, observation statistics), from :class:`kd_env.runtime.StepTimer`;
3. the teacher: fine-tuning time (as recorded, or afresh with ``--fresh-cache``), cache build,
   cache size; with ``--precision-compare`` a fixed number of fine-tuning steps plus the caching of
   a fixed number of examples, in fp32 and in bf16 autocast, interleaved;
4. the digits engine: optimizer steps per second (all four knowledge types; finetune only);
5. with ``--relation-naive``: the digits engine with ``relation`` computed through the explicit
   H x H FSP matrices (``fsp_matrix``) instead of the token Gram matrices (``fsp_mse``, the
   engine's form): the speed-up of never forming the H x H matrices.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kd_env

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kd_env import build_distiller, get_preset  # noqa: E402
from kd_env.batching import BatchSampler  # noqa: E402
from kd_env.data import load_task  # noqa: E402
from kd_env.knowledge import Relation, fsp_matrix, register_knowledge  # noqa: E402
from kd_env.models import SequenceClassifier, layer_map, load_hf_classifier, load_tokenizer  # noqa: E402
from kd_env.runtime import StepTimer, autocast  # noqa: E402
from kd_env.teacher import TeacherCache, cache_root, train_classifier  # noqa: E402

NAIVE_RELATION = "relation_fsp_matrices"
KD_WEIGHTS = [1.0, 1.0, 1.0, 0.0]  # finetune + response + feature


@register_knowledge(NAIVE_RELATION, overwrite=True)
class RelationThroughFspMatrices(Relation):
    """``relation`` computed the direct way, forming each H x H FSP matrix (same value as
    :class:`~kd_env.knowledge.Relation`; for timing only)."""

    @staticmethod
    def pair_loss(a_s, b_s, a_t, b_t, mask):
        return ((fsp_matrix(a_s, b_s, mask) - fsp_matrix(a_t, b_t, mask)) ** 2).mean()


def spread(values: list[float], fmt: str = "{:.0f}") -> tuple[str, str]:
    """The median and the range (min-max) of ``values``, formatted."""
    return fmt.format(statistics.median(values)), f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def row(rows: list[list[str]], label: str, threads: int, values: list[float], note: str = "",
        fmt: str = "{:.0f}", bold: bool = False) -> None:
    med, rng = spread(values, fmt)
    if bold:
        label, med = f"**{label}**", f"**{med}**"
    rows.append([label, str(threads), med, rng, note])


def ms_per_step(count: int, fn, /, *args, **kwargs) -> tuple[float, object]:
    """Milliseconds per step of ``fn(*args, **kwargs)`` (which runs ``count`` steps), and its result."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return 1000 * (time.perf_counter() - start) / count, result


def phase_indices(distiller, steps: int) -> list[np.ndarray]:
    """The example indices of the next ``steps`` training batches of ``distiller`` (right after a
    reset: the slices of its data order), so that other contenders can train on the same batches."""
    bs = distiller.config.batch_size
    return [distiller.order[distiller.position + i * bs: distiller.position + (i + 1) * bs] for i in range(steps)]


def textbrewer_step_fn(distiller):
    """A function running TextBrewer GeneralDistiller steps (vanilla KD + one hidden match) on
    the distiller's models, one per list of example indices."""
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

    def run(indices: list[np.ndarray]) -> None:
        for idx in indices:
            b = distiller.train_data.batch(idx)
            batch = {k: b[k] for k in ("input_ids", "attention_mask", "labels", "token_type_ids") if k in b}
            loss, _ = tb.train_on_batch(batch, {"output_hidden_states": True})
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()

    return run, textbrewer.__version__


def bare_step_fn(distiller, timer: StepTimer):
    """A function running bare train steps of a copy of the distiller's student (the Hugging
    Face model alone: CE to the labels, AdamW with clipping and the same schedule, no teacher,
    no statistics), one per list of example indices, timed part by part by ``timer``; the forward
    pass in the distiller's student precision, as the KD step's."""
    model = copy.deepcopy(distiller.student.model.model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=distiller.config.lr, weight_decay=distiller.config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, distiller.scheduler.lr_lambdas[0])
    device = distiller.device

    def run(indices: list[np.ndarray]) -> None:
        for idx in indices:
            timer.start()
            b = distiller.train_data.batch(idx)
            inputs = {k: b[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in b}
            labels = b["labels"].to(device)
            timer.mark("data")
            with autocast(distiller.precision, device):
                logits = model(**inputs).logits
            timer.mark("forward")
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            timer.mark("losses")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            timer.mark("backward")
            torch.nn.utils.clip_grad_norm_(params, distiller.config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            timer.mark("optimizer")

    return run


def teacher_rows(args, cfg, rows: list[list[str]]):
    """Build the text distiller; rows on the teacher's fine-tuning and cache."""
    threads = torch.get_num_threads()
    if args.fresh_cache:
        os.environ["KD_ENV_CACHE"] = tempfile.mkdtemp(prefix="kd_env_bench_")
        t = time.perf_counter()
        cached = build_distiller(cfg)
        wall = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(["teacher fine-tune + cache build (rt-polarity, from empty cache), s", str(threads), f"{wall:.0f}",
                     "", f"precision {cached.teacher_metrics.get('precision', 'fp32')}"])
        rows.append(["  of which fine-tuning (1 epoch), s", str(threads),
                     f"{cached.teacher_metrics['fine_tune']['seconds']:.0f}", "", ""])
        rows.append(["peak RSS of that process, MiB", str(threads), f"{rss:.0f}", "", ""])
        return cached
    cached = build_distiller(cfg)
    rows.append(["teacher fine-tuning (recorded when built), s", "?",
                 f"{cached.teacher_metrics['fine_tune']['seconds']:.0f}", "",
                 f"precision {cached.teacher_metrics.get('precision', 'fp32')}; --fresh-cache times it afresh"])
    root = Path(tempfile.mkdtemp(prefix="kd_env_cache_"))
    precision = cached.teacher_metrics.get("precision", "fp32")
    t = time.perf_counter()
    TeacherCache.build(root / "c", "bench", cached.teacher_model, cached.train_data, cached.layer_map,
                       ["logits", "hidden_cls", "hidden_tokens"], cached.device, progress=False, precision=precision)
    rows.append([f"teacher-output cache build ({len(cached.train_data)} examples), s", str(threads),
                 f"{time.perf_counter() - t:.1f}", "", f"precision {precision}"])
    shutil.rmtree(root, ignore_errors=True)
    return cached


def bench_text(args, rows: list[list[str]], profiles: dict[int, dict[str, dict[str, float]]]) -> None:
    cfg = get_preset("text", progress=True, batch_size=args.batch_size)
    cached = teacher_rows(args, cfg, rows)
    rows.append(["teacher test accuracy", "", f"{cached.teacher_metrics['test']['main']:.4f}", "", ""])
    rows.append(["teacher cache size on disk, MiB", "", f"{cached.teacher.size_bytes() / 2**20:.1f}", "", ""])
    live = build_distiller(cfg.replace(use_teacher_cache=False))
    steps = args.steps
    try:
        tb_run, tb_version = textbrewer_step_fn(cached)
    except ImportError:
        tb_run, tb_version = None, None
    for threads in args.threads:
        torch.set_num_threads(threads)
        kd_timer, bare_timer = StepTimer(cached.device), StepTimer(cached.device)
        bare_run = bare_step_fn(cached, bare_timer)
        cached.reset(1)
        warm = phase_indices(cached, 2)
        cached.train_phase(KD_WEIGHTS, steps=2)  # warm-up: first-call costs, allocator
        live.train_phase(KD_WEIGHTS, steps=2)
        bare_run(warm)
        if tb_run:
            tb_run(warm)
        bare_timer.clear()
        cached.step_timer = kd_timer
        times: dict[str, list[float]] = {"cached": [], "live": [], "tb": [], "bare": []}
        phase_ms: list[float] = []
        for _ in range(args.reps):
            cached.reset(1)
            live.reset(1)
            batches = phase_indices(cached, steps)
            ms, phase = ms_per_step(steps, cached.train_phase, KD_WEIGHTS, steps=steps)
            times["cached"].append(ms)
            phase_ms.append(1000 * phase.seconds / steps)
            times["live"].append(ms_per_step(steps, live.train_phase, KD_WEIGHTS, steps=steps)[0])
            if tb_run:
                times["tb"].append(ms_per_step(steps, tb_run, batches)[0])
            times["bare"].append(ms_per_step(steps, bare_run, batches)[0])
        cached.step_timer = None
        c = times["cached"]
        note = f"{args.reps} reps x {steps} steps, batch {args.batch_size}, student {cached.precision}"
        row(rows, "KD step, teacher cache (finetune+response+feature), ms", threads, c, note)
        row(rows, "KD step, live teacher forward, ms", threads, times["live"])
        row(rows, "bare student train step (CE only, same batches), ms", threads, times["bare"])
        row(rows, "ratio cached / live", threads, [a / b for a, b in zip(c, times["live"])], "target <= 0.65",
            "{:.2f}", bold=True)
        if tb_run:
            row(rows, f"TextBrewer {tb_version} GeneralDistiller step (KD + 1 hidden match, live teacher), ms",
                threads, times["tb"], "fp32 (TextBrewer's own precision)")
            row(rows, "ratio cached / TextBrewer", threads, [a / b for a, b in zip(c, times["tb"])],
                "target <= 0.65", "{:.2f}", bold=True)
        else:
            rows.append(["TextBrewer", str(threads), "not installed", "", "pip install --no-deps textbrewer==0.2.1.post1"])
        row(rows, "ratio cached / bare", threads, [a / b for a, b in zip(c, times["bare"])], "target <= 1.15",
            "{:.2f}", bold=True)
        kd = kd_timer.milliseconds_per_step()
        kd["outside the step (phase set-up, RNG)"] = statistics.mean(phase_ms) - sum(kd.values())
        profiles[threads] = {"kd": kd, "bare": bare_timer.milliseconds_per_step()}
    live.close()
    cached.close()


def _digits_steps_per_second(distiller, weights, steps: int) -> float:
    """Optimizer steps per second over ``steps`` steps, in phases from fresh episodes (a phase
    stops at the episode's budget; the resets between them are not timed)."""
    done, seconds = 0, 0.0
    while done < steps:
        distiller.reset(0)
        start = time.perf_counter()
        phase = distiller.train_phase(weights, steps=steps - done)
        seconds += time.perf_counter() - start
        done += phase.steps
    return done / seconds


def bench_digits(args, rows: list[list[str]]) -> None:
    config = get_preset("digits")
    d = build_distiller(config)
    naive = None
    if args.relation_naive:
        knowledge = tuple(NAIVE_RELATION if k == "relation" else k for k in config.knowledge)
        naive = build_distiller(config.replace(knowledge=knowledge))
    contenders = {"all four knowledge types": (d, [1, 1, 1, 1]), "finetune only": (d, [1, 0, 0, 0])}
    if naive is not None:
        contenders["all four, relation through H x H FSP matrices"] = (naive, [1, 1, 1, 1])
    for threads in args.threads:
        torch.set_num_threads(threads)
        for distiller, weights in contenders.values():
            _digits_steps_per_second(distiller, weights, 10)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.reps):  # interleaved
            for name, (distiller, weights) in contenders.items():
                rates[name].append(_digits_steps_per_second(distiller, weights, args.digits_steps))
        for name, values in rates.items():
            note = "target >= 300" if name.startswith("all four knowledge") else ""
            row(rows, f"digits engine, {name}: optimizer steps/s", threads, values,
                note or f"{args.reps} reps x {args.digits_steps} steps")
        if naive is not None:
            gram, direct = rates["all four knowledge types"], rates["all four, relation through H x H FSP matrices"]
            row(rows, "speed-up of the Gram form (all four knowledge types)", threads,
                [a / b for a, b in zip(gram, direct)], "", "{:.1f}x", bold=True)
    d.close()
    if naive is not None:
        naive.close()


def bench_precision(args, rows: list[list[str]]) -> None:
    """Teacher fine-tuning (``--precision-steps`` steps of the text preset's teacher from its
    pre-trained weights) plus the caching of ``--precision-examples`` examples, in fp32 and in
    bf16 autocast, interleaved; a full fine-tune takes minutes."""
    cfg = get_preset("text", progress=False)
    device = torch.device("cpu")
    task = load_task(cfg.task, data_dir=cfg.data_dir, seed=cfg.seed)
    tokenizer = load_tokenizer(cfg.teacher)
    train = BatchSampler(task, task["train"], tokenizer, cfg.max_len)
    n = min(args.precision_examples, len(task["train"]))
    cached_set = BatchSampler(task, task["train"].subset(np.arange(n)), tokenizer, cfg.max_len)
    pretrained = SequenceClassifier(load_hf_classifier(cfg.teacher, task.num_labels))
    mapping = layer_map(pretrained.num_layers, cfg.student_layers, cfg.layer_strategy)
    fields = ["logits", "hidden_cls", "hidden_tokens"]
    scratch = Path(tempfile.mkdtemp(prefix="kd_env_precision_"))
    steps = args.precision_steps

    def fine_tune_and_cache(precision: str, steps: int) -> tuple[float, float]:
        model = copy.deepcopy(pretrained)
        start = time.perf_counter()
        train_classifier(model, train, epochs=cfg.teacher_epochs, lr=cfg.teacher_lr, batch_size=cfg.teacher_batch_size,
                         seed=cfg.seed, device=device, max_steps=steps, progress=False, precision=precision)
        tuned = time.perf_counter()
        TeacherCache.build(scratch / precision, "bench", model, cached_set, mapping, fields, device,
                           progress=False, precision=precision)
        shutil.rmtree(scratch / precision)
        return tuned - start, time.perf_counter() - tuned

    for threads in args.threads:
        torch.set_num_threads(threads)
        for precision in ("fp32", "bf16"):
            fine_tune_and_cache(precision, 1)  # warm-up
        seconds: dict[str, list[tuple[float, float]]] = {"fp32": [], "bf16": []}
        for _ in range(args.reps):
            for precision in seconds:
                seconds[precision].append(fine_tune_and_cache(precision, steps))
        for precision, values in seconds.items():
            row(rows, f"teacher fine-tuning, {steps} steps of batch {cfg.teacher_batch_size}, {precision}, s", threads,
                [v[0] for v in values], f"{args.reps} reps", "{:.1f}")
            row(rows, f"teacher-output caching, {n} examples, {precision}, s", threads, [v[1] for v in values],
                "", "{:.1f}")
        ratios = [sum(b) / sum(f) for f, b in zip(seconds["fp32"], seconds["bf16"])]
        row(rows, "ratio bf16 / fp32 (fine-tuning + caching)", threads, ratios, "target <= 0.7", "{:.2f}", bold=True)
    shutil.rmtree(scratch, ignore_errors=True)


def bench_students(args, rows: list[list[str]]) -> None:
    """The student's training step in the text presets (batch 16, all four knowledge types, the
    demo's set-up): fp32 against bf16 autocast on the same random batches, and against
    length-grouped batches (``length_grouping=16``, fp32), in interleaved repetitions; with the
    padded tokens per real token of the timed batches."""
    from kd_env.batching import tokens_per_example

    ones = np.ones(4)
    for preset in ("text", "text3"):
        variants = {"fp32": {"student_precision": "fp32"}, "bf16": {"student_precision": "bf16"},
                    "grouped": {"student_precision": "fp32", "length_grouping": 16}}
        ds = {name: build_distiller(get_preset(preset, progress=False, **kw)) for name, kw in variants.items()}
        lengths = tokens_per_example(ds["fp32"].train_data)
        steps, bs = args.student_steps, ds["fp32"].config.batch_size
        for name in ("fp32", "grouped"):
            ds[name].reset(1)
            idx = ds[name].order[: steps * bs].reshape(steps, bs)
            padding = lengths[idx].max(1).sum() * bs / lengths[idx].sum()
            rows.append([f"{preset}: padded / real tokens, {'length-grouped' if name == 'grouped' else 'random'} "
                         f"batches of {bs}", "", f"{padding:.2f}", "", f"the {steps} timed batches"])
        for threads in args.threads:
            torch.set_num_threads(threads)
            for d in ds.values():
                d.reset(1)
                d.train_phase(ones, steps=2)  # warm-up
            times: dict[str, list[float]] = {name: [] for name in ds}
            for _ in range(args.reps):
                for name, d in ds.items():
                    d.reset(1)
                    times[name].append(ms_per_step(steps, d.train_phase, ones, steps=steps)[0])
            label = f"{preset}: student KD step (all four knowledge types, batch {bs}), ms"
            row(rows, f"{label}, fp32", threads, times["fp32"], f"{args.reps} reps x {steps} steps")
            row(rows, f"{label}, bf16 autocast", threads, times["bf16"], "same batches")
            row(rows, f"{label}, fp32, length-grouped batches", threads, times["grouped"], "its own batches")
            row(rows, f"{preset}: ratio bf16 / fp32", threads,
                [a / b for a, b in zip(times["bf16"], times["fp32"])], "", "{:.2f}", bold=True)
            row(rows, f"{preset}: ratio length-grouped / random batches", threads,
                [a / b for a, b in zip(times["grouped"], times["fp32"])], "", "{:.2f}", bold=True)
        for d in ds.values():
            d.close()


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--digits-only", action="store_true")
    p.add_argument("--fresh-cache", action="store_true", help="fine-tune and cache the teacher from scratch")
    p.add_argument("--steps", type=int, default=8, help="text: optimizer steps per timed repetition")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every measurement (>= 3)")
    p.add_argument("--batch-size", type=int, default=32, help="text: the student's batch size")
    p.add_argument("--digits-steps", type=int, default=300, help="digits: optimizer steps per timed repetition")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure at")
    p.add_argument("--precision-compare", action="store_true",
                   help="time teacher fine-tuning + caching in fp32 and in bf16 autocast (text teacher)")
    p.add_argument("--precision-steps", type=int, default=8, help="fine-tuning steps per precision-compare run")
    p.add_argument("--precision-examples", type=int, default=256, help="examples cached per precision-compare run")
    p.add_argument("--student-compare", action="store_true",
                   help="time the text presets' student step in fp32, bf16 autocast and on length-grouped batches")
    p.add_argument("--student-steps", type=int, default=24, help="steps per student-compare repetition")
    p.add_argument("--relation-naive", action="store_true",
                   help="also time relation through the explicit H x H FSP matrices on digits (the Gram trick)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows: list[list[str]] = []
    profiles: dict[int, dict[str, dict[str, float]]] = {}
    if not args.digits_only:
        bench_text(args, rows, profiles)
    if args.precision_compare:  # also with --digits-only: the text teacher alone
        bench_precision(args, rows)
    if args.student_compare:
        bench_students(args, rows)
    bench_digits(args, rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nengine_speed on {os.cpu_count()} cores (load average {load:.1f} at the end), torch "
          f"{torch.__version__}, threads {args.threads}, cache root {cache_root()}\n")
    print_table(["measurement", "threads", "median", "range (min-max)", "note"], rows)
    for threads, profile in profiles.items():
        print(f"\nProfile of one text step at {threads} thread(s), mean ms per step over all repetitions "
              f"(batch {args.batch_size}):\n")
        parts = list(dict.fromkeys([*profile["kd"], *profile["bare"]]))
        table = [[part, f"{profile['kd'].get(part, 0.0):.1f}", f"{profile['bare'].get(part, 0.0):.1f}"]
                 for part in parts]
        table.append(["**total**", f"**{sum(profile['kd'].values()):.1f}**", f"**{sum(profile['bare'].values()):.1f}**"])
        print_table(["part", "cached KD step", "bare student step"], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
