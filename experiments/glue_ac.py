"""The main job: learn which knowledge to distil, then compare with strong KD baselines.

    python -m experiments.glue_ac                       # embedded offline default (rt-polarity)
    python -m experiments.glue_ac --preset quick        # digits, about a minute
    python -m experiments.glue_ac --preset paper --task rte --data-dir /data/glue

Pipeline (resumable: rerun the same command after an interruption):

1. teacher: fine-tune on the task and cache its outputs (kept under ``$KD_ENV_CACHE``);
2. selector: train the knowledge selector (``--agent``, default our actor-critic) over
   ``--episodes`` distillation episodes rewarded on the dev probe;
3. distil a fresh student per seed with the trained selector acting deterministically;
4. the same student budget for every baseline (``--methods``): the fixed masks, the random
   ones, and the literature's dynamic baselines on request (``dynamic_kd``, ``eskd``,
   ``two_stage``, ``anneal``; :mod:`agents.dynamic`);
5. evaluate every student (and the teacher) on the held-out split with the task's metric;
6. write ``runs/<name>/``: results.json/.csv/.md, config.yaml, plots, TensorBoard logs.

The best fixed mask (``best_fixed``, the selector's strongest single-mask rival) is chosen on the
students' dev-probe metric, never on the held-out split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from agents import agent_names, load_agent, make_agent
from experiments.cli import SEEDS_HELP, load_plugins, parse_seeds
from experiments.stats import format_bounds, mean_std, paired_difference
from experiments.store import read_finished
from experiments.toolkit import TrainingProgress, distil_and_test
from experiments.report import (
    json_safe,
    markdown_table,
    plot_curves,
    plot_heatmap,
    plot_returns,
    write_csv,
)
from kd_env import DistillConfig, KnowledgeSelectionEnv, get_preset, preset_names
from kd_env.checks import check_types, matches, type_hints
from kd_env.data import DataUnavailableError
from kd_env.runtime import PRECISIONS, resolve_threads, usable_cpus
from kd_env.io import atomic_write_json, atomic_write_text, progress_bar
from kd_env.teacher import evaluate_model

BASELINES = ("finetune", "vanilla_kd", "pkd", "all", "random_hard", "random_soft")
#: the literature's dynamic baselines (agents.dynamic): valid --methods, not run by default
DYNAMIC_BASELINES = ("dynamic_kd", "eskd", "two_stage", "anneal")
SELECTOR = "selector"
#: methods that are not one fixed mask (never candidates for best_fixed)
NOT_FIXED = (SELECTOR, "random_hard", "random_soft", *DYNAMIC_BASELINES)

#: experiment-level defaults per preset (the distillation settings live in kd_env.config)
EXPERIMENT_PRESETS: dict[str, dict[str, Any]] = {
    # text: feature or relation alone never trains the classifier head (test 0.58 +- 0.25 over 5
    # seeds, README "What make demo does"), so the default methods leave those two masks out;
    # --methods brings them back
    "text": {"episodes": 6, "seeds": [0, 1, 2], "workers": 2, "leave_out": ["only:feature", "only:relation"]},
    "text3": {"episodes": 6, "seeds": [0, 1, 2], "workers": 2, "leave_out": ["only:feature", "only:relation"]},
    "quick": {"episodes": 4, "seeds": [0, 1], "workers": 1},
    "digits": {"episodes": 20, "seeds": [0, 1, 2, 3, 4], "workers": 1},
    "paper": {"episodes": 30, "seeds": [0, 1, 2], "workers": 1},
}

RESULT_COLUMNS = ["method", "seed", "metric_name", "metric", "dev_metric", "return", "train_seconds",
                  "student_parameters", "crashed", "mean_weights"]


@dataclass
class ExperimentConfig:
    """Everything that defines a run of this experiment (saved as config.yaml)."""

    preset: str = "text3"
    """distillation preset (kd_env.config): text3 (6 -> 3 layers, the default), text (6 -> 2), quick,
    digits, paper"""
    distill: dict[str, Any] = field(default_factory=dict)
    """DistillConfig overrides (task, teacher, student_layers, total_steps, ...)"""
    agent: str = "ac"
    """selector agent (any name agents.make_agent accepts)"""
    agent_params: dict[str, Any] = field(default_factory=dict)
    """selector hyperparameters"""
    action_mode: str = "weights"
    """"weights" (the paper's soft action; baselines' masks are 0/1 weights) or "mask\""""
    observation: str = "summary"
    reward: str = "dev_loss_delta"
    reward_params: dict[str, Any] = field(default_factory=dict)
    episodes: int | None = None
    """selector training episodes (default: per preset)"""
    seeds: list[int] | None = None
    """evaluation seeds (default: per preset)"""
    methods: list[str] | None = None
    """methods to compare (default: selector, the baselines and each single knowledge type; the dynamic
    baselines dynamic_kd, eskd, two_stage, anneal on request)"""
    name: str | None = None
    """run folder name under ``out`` (default: glue_ac-<preset>-<task>)"""
    out: str = "runs"
    plugins: list[str] = field(default_factory=list)
    """python files to import first (they may register rewards, knowledge, observations)"""
    selector_seed: int = 1000
    """seed of the selector's training episodes (distinct from the evaluation seeds)"""
    workers: int | None = None
    """students distilled at once, each in a spawned process with its share of the torch threads
    (default: per preset, at most the usable CPUs; 1 = in this process)"""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_types(cls, data: dict[str, Any]) -> None:
        """``ValueError`` naming the key when a value (from a config file) has the wrong type."""
        hints = type_hints(cls)
        hints.update({key: Optional[hints[key]] for key in ("distill", "agent_params", "reward_params", "plugins")})
        check_types(data, hints, message="config key '{name}' must be {expected}, got {value} ({type}){hint}")

    def resolved(self) -> "ExperimentConfig":
        """Fill the per-preset defaults and validate; errors name the bad key and valid values."""
        if self.preset not in EXPERIMENT_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {sorted(EXPERIMENT_PRESETS)}")
        if self.action_mode not in ("weights", "mask"):
            raise ValueError(f"action_mode must be 'weights' or 'mask', got {self.action_mode!r}")
        c = dataclasses.replace(self)
        defaults = EXPERIMENT_PRESETS[c.preset]
        c.episodes = defaults["episodes"] if c.episodes is None else c.episodes
        c.seeds = list(defaults["seeds"] if c.seeds is None else c.seeds)
        c.workers = min(defaults["workers"], usable_cpus()) if c.workers is None else c.workers
        if not matches(c.workers, int) or c.workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {c.workers!r}")
        if not matches(c.episodes, int) or c.episodes < 0:
            raise ValueError(f"episodes must be an integer >= 0, got {c.episodes!r}")
        if not c.seeds or not matches(c.seeds, list[int]):
            raise ValueError(f"seeds must be a non-empty list of integers, got {c.seeds!r}")
        if len(set(c.seeds)) != len(c.seeds):
            raise ValueError(f"seeds must be distinct, got {c.seeds}")
        distill = self.distill_config()
        if c.methods is None:
            c.methods = [m for m in default_methods(distill.knowledge) if m not in defaults.get("leave_out", ())]
            if c.action_mode == "mask":
                c.methods = [m for m in c.methods if m != "random_soft"]  # soft weights need action_mode=weights
        if c.action_mode == "mask" and "random_soft" in c.methods:
            raise ValueError("method random_soft needs action_mode 'weights' (it outputs soft weights)")
        valid = valid_methods(distill.knowledge)
        bad = [m for m in c.methods if m not in valid and not m.startswith("fixed:")]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; valid: {valid} or fixed:<bits>")
        if len(set(c.methods)) != len(c.methods):
            raise ValueError(f"duplicate methods in {c.methods}")
        from kd_env.observations import observation_names
        from kd_env.rewards import reward_names

        if c.reward not in reward_names():
            raise ValueError(f"unknown reward {c.reward!r}; valid: {reward_names()} (or register one in a --plugin file)")
        if c.observation not in observation_names():
            raise ValueError(f"unknown observation {c.observation!r}; valid: {observation_names()}")
        if SELECTOR in c.methods and c.agent not in agent_names():
            raise ValueError(f"unknown agent {c.agent!r}; valid: {agent_names()}")
        if c.name is None:
            c.name = f"glue_ac-{c.preset}-{Path(str(distill.task)).stem}"
        return c

    def distill_config(self) -> DistillConfig:
        return get_preset(self.preset, **self.distill)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["distill_resolved"] = self.distill_config().to_dict()
        return d


def default_methods(knowledge: Sequence[str]) -> list[str]:
    singles = [f"only:{k}" for k in knowledge if k != "finetune"]
    return [SELECTOR, *BASELINES, *singles]


def valid_methods(knowledge: Sequence[str]) -> list[str]:
    return [SELECTOR, *BASELINES, *DYNAMIC_BASELINES, *[f"only:{k}" for k in knowledge]]


def method_agent_name(method: str, knowledge: Sequence[str]) -> str:
    """The agents.make_agent name of a baseline method."""
    if method.startswith("only:"):
        return "fixed:" + "".join("1" if k == method[5:] else "0" for k in knowledge)
    return method


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


class Run:
    """One experiment run folder: resumable units, atomic files."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.dir = Path(config.out) / config.name
        self.units = self.dir / "units"
        self.selector_dir = self.dir / "selector"

    def check(self) -> None:
        """``SystemExit`` when the folder holds a run with another config (nothing is written)."""
        saved = self.dir / "config.yaml"
        if saved.exists():
            previous = yaml.safe_load(saved.read_text()) or {}
            current = self.config.to_dict()
            # adding methods/seeds to a finished run is fine; the overrides count as what they resolve to
            keep = ("methods", "seeds", "out", "workers", "distill")
            diff = sorted(k for k in current if k not in keep and previous.get(k) != current[k])
            if diff == ["distill_resolved"] and isinstance(previous.get(k := "distill_resolved"), dict):
                # a DistillConfig field added since the run was made, at its default, is no difference;
                # not so `precision`, whose default ("auto") resolves by machine: an old run's units were
                # fp32, a resumed one's could be bf16
                defaults = DistillConfig().to_dict()
                added = {f: v for f, v in current[k].items()
                         if f not in previous[k] and v == defaults.get(f) and f != "precision"}
                if {**previous[k], **added} == current[k]:
                    diff = []
            if diff:
                raise SystemExit(f"error: {self.dir} holds a run with a different config (keys {diff}); "
                                 f"pass --name for a new run or remove the folder")

    def prepare(self, label_mapping: dict[str, int] | None = None) -> None:
        """Check, then create the folder and write config.yaml (with the task's class-name ->
        class-id mapping, ``None`` for integer labels)."""
        self.check()
        self.units.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "config.yaml", yaml.safe_dump(
            {**self.config.to_dict(), "label_mapping": label_mapping}, sort_keys=True))

    def unit_path(self, method: str, seed: int) -> Path:
        return self.units / f"{method.replace(':', '-')}__seed{seed}.json"

    def load_unit(self, method: str, seed: int) -> dict[str, Any] | None:
        """The finished unit's row, or ``None`` when it must run."""
        return read_finished(self.unit_path(method, seed), method=method, seed=seed)


def train_selector(run: Run, env: KnowledgeSelectionEnv) -> tuple[Any, list[float]]:
    """Train the selector (or load it when a previous run finished this stage)."""
    c = run.config
    done = run.selector_dir / "done.json"
    ckpt = run.selector_dir / "agent"
    if done.exists():
        agent = load_agent(str(ckpt), env)
        return agent, json.loads(done.read_text())["returns"]
    params = {"seed": c.selector_seed, **c.agent_params}
    if c.agent in ("ac", "ac_q"):
        params.setdefault("log_dir", str(run.dir / "tb" / "selector"))
    agent = make_agent(c.agent, env, **params)
    progress = TrainingProgress(c.episodes)
    env.reset(seed=c.selector_seed)
    if c.episodes > 0:
        agent.learn(env, total_episodes=c.episodes, callback=progress)
    progress.close()
    returns = progress.returns
    run.selector_dir.mkdir(parents=True, exist_ok=True)
    agent.save(str(ckpt))
    atomic_write_json(done, {"returns": returns, "episodes": c.episodes, "agent": c.agent})
    return agent, returns


def _make_env(c: ExperimentConfig, distill: DistillConfig) -> KnowledgeSelectionEnv:
    return KnowledgeSelectionEnv(distill, action_mode=c.action_mode, observation=c.observation, reward=c.reward,
                                 reward_params=c.reward_params or None)


_WORKER: dict[str, Any] = {}


def _worker_init(config: dict[str, Any], threads: int) -> None:
    """A student worker: its torch threads, the user's plug-ins, its own env (teacher and
    teacher cache from the cache root) and the trained selector, if the run has one."""
    import torch

    torch.set_num_threads(threads)
    c = ExperimentConfig(**config)
    load_plugins(c.plugins)
    distill = c.distill_config().replace(threads=threads, progress=False)
    env = _make_env(c, distill)
    run = Run(c)
    selector = load_agent(str(run.selector_dir / "agent"), env) if SELECTOR in c.methods else None
    _WORKER.update(config=c, env=env, run=run, selector=selector, threads=threads)


def _worker_unit(method: str, seed: int) -> None:
    w = _WORKER
    env, run = w["env"], w["run"]
    knowledge = list(env.unwrapped.distiller.knowledge_names)
    agent = w["selector"] if method == SELECTOR else make_agent(method_agent_name(method, knowledge), env, seed=seed)
    row = {"method": method, **distil_and_test(env, agent, seed), "threads": w["threads"]}
    atomic_write_json(run.unit_path(method, seed), row)


def _distil_in_workers(run: Run, units: list[tuple[str, int]], workers: int, threads: int) -> None:
    """Distil ``units`` in ``workers`` spawned processes of ``threads`` torch threads each; every
    unit writes its own file as it ends, so an interrupted run resumes from the finished ones."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    config = dataclasses.asdict(run.config)
    bar = progress_bar(None, len(units), f"distil students ({workers} workers)")
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(config, threads)) as pool:
        futures = {pool.submit(_worker_unit, m, s): (m, s) for m, s in units}
        try:
            for future in as_completed(futures):
                future.result()  # a failing unit stops the run (the finished ones stay on disk)
                bar.update(1)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) the whole pipeline; returns the summary written to results.json."""
    load_plugins(config.plugins)
    c = config.resolved()
    run = Run(c)
    run.check()
    distill = c.distill_config()
    t0 = time.perf_counter()
    print(f"glue_ac {c.name}: {resolve_threads(distill.threads)} torch thread(s) ({usable_cpus()} CPU(s) usable; "
          f"distill.threads={distill.threads})", file=sys.stderr)
    print(f"[1/4] teacher: {distill.teacher} on {distill.task} (fine-tuned and cached once)", file=sys.stderr)
    stages: dict[str, float] = {}
    try:  # bad task files, models or knowledge fail here, before the run folder is written
        start = time.perf_counter()
        env = _make_env(c, distill)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, DataUnavailableError) as exc:
        raise SystemExit(f"error: {exc}") from None
    d = env.distiller
    built = getattr(d, "build_seconds", {})
    stages["teacher"] = built.get("teacher", math.nan)
    stages["teacher_cache"] = time.perf_counter() - start - stages["teacher"]  # with data, tokenizer, student
    labels = None if d.task.label_names is None else {name: i for i, name in enumerate(d.task.label_names)}
    knowledge = list(d.knowledge_names)
    try:  # a baseline that needs knowledge this env lacks fails here too (e.g. eskd without response)
        for method in c.methods:
            if method != SELECTOR:
                make_agent(method_agent_name(method, knowledge), env)
    except ValueError as exc:
        env.close()
        raise SystemExit(f"error: {exc}") from None
    run.prepare(labels)
    teacher_probe = evaluate_model(d.teacher_model, d.dev_data, d.task, d.device, distill.eval_batch_size,
                                   indices=d.probe_indices)
    teacher = {"metric": d.teacher_metrics["test"]["main"], "dev_metric": teacher_probe["main"],
               "parameters": d.teacher_metrics.get("parameters"),
               "fine_tune_seconds": d.teacher_metrics["fine_tune"]["seconds"]}
    selector_returns: list[float] = []
    todo = [(m, s) for m in c.methods for s in c.seeds]
    if SELECTOR in c.methods:
        print(f"[2/4] selector: {c.agent}, {c.episodes} episodes x {distill.num_phases} phases", file=sys.stderr)
        start = time.perf_counter()
        selector, selector_returns = train_selector(run, env)
        stages["selector"] = time.perf_counter() - start
    start = time.perf_counter()
    missing = [(m, s) for m, s in todo if run.load_unit(m, s) is None]
    workers = min(c.workers, len(missing))
    threads = resolve_threads(distill.threads)
    print(f"[3/4] distil: {len(c.methods)} methods x {len(c.seeds)} seeds ({len(todo) - len(missing)} done before)"
          + (f", {workers} workers" if workers > 1 else ""), file=sys.stderr)
    if workers > 1:  # the selector is on disk: every worker builds its own env and loads it
        env.close()
        _distil_in_workers(run, missing, workers, max(1, threads // workers))
    else:
        bar = progress_bar(missing, len(missing), "distil students")
        for method, seed in bar:
            bar.set_postfix(method=method, seed=seed)
            agent = selector if method == SELECTOR else make_agent(method_agent_name(method, knowledge), env, seed=seed)
            row = {"method": method, **distil_and_test(env, agent, seed), "threads": threads}
            atomic_write_json(run.unit_path(method, seed), row)
        bar.close()
        env.close()
    stages["students"] = time.perf_counter() - start
    rows = [run.load_unit(m, s) for m, s in todo]
    print("[4/4] report", file=sys.stderr)
    start = time.perf_counter()
    summary = write_report(run, rows, teacher, knowledge, selector_returns, distill, labels)
    stages["report"] = time.perf_counter() - start
    summary["wall_seconds_this_invocation"] = time.perf_counter() - t0
    summary["stage_seconds"] = stage_times(stages, summary["wall_seconds_this_invocation"], len(missing), workers)
    atomic_write_json(run.dir / "timing.json", json_safe(summary["stage_seconds"]))
    return summary


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def choose_best_fixed(table: list[dict[str, Any]]) -> str | None:
    """The fixed mask (a named baseline, ``only:<k>`` or ``fixed:<bits>``) with the highest mean
    dev-probe metric (``dev_mean``), or ``None`` when none ran.  Chosen on dev, never on test:
    the test split only scores the choice.  Ties go to the first in ``table``'s order."""
    fixed = [t for t in table if t["method"] not in NOT_FIXED and t["n"]]
    return max(fixed, key=lambda t: t["dev_mean"])["method"] if fixed else None


def write_report(run: Run, rows: list[dict[str, Any]], teacher: dict[str, Any], knowledge: list[str],
                 selector_returns: list[float], distill: DistillConfig,
                 label_mapping: dict[str, int] | None = None) -> dict[str, Any]:
    c = run.config
    metric_name = rows[0]["metric_name"] if rows else "metric"
    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], {})[r["seed"]] = r
    table = []
    for method in c.methods:
        seeds = by_method.get(method, {})
        m, s = mean_std([r["metric"] for r in seeds.values()])
        dm, ds = mean_std([r["dev_metric"] for r in seeds.values()])
        table.append({"method": method, "mean": m, "std": s, "dev_mean": dm, "dev_std": ds, "n": len(seeds),
                      "train_seconds": float(np.mean([r["train_seconds"] for r in seeds.values()])),
                      "parameters": next(iter(seeds.values()))["student_parameters"] if seeds else None})
    best_fixed = choose_best_fixed(table)
    comparisons = {}
    if SELECTOR in by_method:
        sel = {s: r["metric"] for s, r in by_method[SELECTOR].items()}
        for other in ("vanilla_kd", best_fixed):
            if other and other in by_method and other != SELECTOR:
                comparisons[other] = paired_difference(sel, {s: r["metric"] for s, r in by_method[other].items()})
    # files
    write_csv(run.dir / "results.csv", rows, RESULT_COLUMNS)
    summary = {"name": c.name, "task": distill.task, "metric": metric_name, "teacher": teacher,
               "methods": table, "best_fixed": best_fixed, "best_fixed_chosen_on": "dev-probe mean",
               "selector_vs": comparisons,
               "selector_returns": selector_returns, "rows": rows, "knowledge": knowledge,
               "label_mapping": label_mapping, "date": time.strftime("%Y-%m-%d")}
    atomic_write_json(run.dir / "results.json", json_safe(summary))  # null, not NaN, where undefined
    md = [f"# {c.name}\n", f"Task `{distill.task}`, teacher `{distill.teacher}`, {distill.student_layers}-layer "
          f"student, {distill.total_steps} optimizer steps per student in {distill.num_phases} phases, "
          f"seeds {c.seeds}; selector `{c.agent}` ({c.action_mode}) trained for {c.episodes} episodes "
          f"with reward `{c.reward}`. Metric: {metric_name} on the held-out split.\n"]
    md.append(markdown_table(
        ["method", f"test {metric_name} (mean ± std)", "dev-probe (mean ± std)", "seeds", "train s/student",
         "student params"],
        [[t["method"], f"{t['mean']:.4f} ± {t['std']:.4f}", f"{t['dev_mean']:.4f} ± {t['dev_std']:.4f}", t["n"],
          f"{t['train_seconds']:.1f}", t["parameters"]] for t in table]
        + [["teacher", f"{teacher['metric']:.4f}", f"{teacher['dev_metric']:.4f}", "-", "-", teacher["parameters"]]]))
    if best_fixed is not None:
        md.append(f"\nBest fixed subset: `{best_fixed}`, chosen on the dev-probe mean (the students' final dev-probe "
                  f"{metric_name}), never on the test split.\n")
    if comparisons:
        md.append("\nPaired difference, selector minus baseline (same seeds), 95% t-interval:\n")
        md.append(markdown_table(["baseline", "mean diff", "95% CI", "selector wins"],
                                 [[k + (" (best fixed subset)" if k == best_fixed else ""), f"{v['mean']:+.4f}",
                                   format_bounds(v["low"], v["high"], "+.4f"), f"{v['wins']}/{v['n']}"]
                                  for k, v in comparisons.items()]))
    atomic_write_text(run.dir / "results.md", "\n".join(md))
    # plots
    if SELECTOR in by_method:
        acts = [np.asarray(r["actions"]) for r in by_method[SELECTOR].values()]
        length = min(len(a) for a in acts)
        heat = np.mean([a[:length] for a in acts], axis=0).T
        plot_heatmap(heat, knowledge, run.dir / "selection_heatmap.png",
                     f"{c.agent} selector: knowledge x phase ({distill.task}, {len(acts)} seeds)")
    curves = {m: [r["curve"] for r in seeds.values()] for m, seeds in by_method.items()}
    if curves:
        plot_curves(curves, run.dir / "dev_curves.png", f"dev-probe {metric_name}",
                    f"dev probe during distillation ({distill.task})")
    if selector_returns:
        plot_returns(selector_returns, run.dir / "selector_returns.png", f"{c.agent} selector training")
    _tensorboard(run, rows)
    return summary


def _tensorboard(run: Run, rows: list[dict[str, Any]]) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return
    writer = SummaryWriter(str(run.dir / "tb" / "students"))
    for r in rows:
        for i, v in enumerate(r["curve"]):
            writer.add_scalar(f"{r['method']}/seed{r['seed']}/probe_metric", v, i)
        writer.add_scalar(f"{r['method']}/test_metric", r["metric"], r["seed"])
    writer.close()


#: where ``make install`` records its wall seconds (the Makefile writes it; the demo prints it)
INSTALL_SECONDS_FILE = ".kd_env-install-seconds"
#: the timing table's rows: key in ``stage_seconds`` -> label
STAGES = {"install": "install (make install)", "teacher": "teacher fine-tune (or load)",
          "teacher_cache": "teacher cache (+ data, student)", "selector": "selector training",
          "students": "students", "report": "report", "total": "total (this invocation, no install)"}


def install_seconds(prefix: str | Path | None = None) -> float | None:
    """The seconds the last ``make install`` took (``<venv>/.kd_env-install-seconds``), or ``None``
    when it was not recorded (installed by hand, or not in a venv made by the Makefile)."""
    path = Path(sys.prefix if prefix is None else prefix) / INSTALL_SECONDS_FILE
    try:
        return float(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stage_times(stages: dict[str, float], total: float, units: int, workers: int) -> dict[str, Any]:
    """This invocation's wall seconds per stage (a resumed run's finished stages take ~0 s), the
    last ``make install``'s, and how the students ran."""
    out: dict[str, Any] = {"install": install_seconds()}
    out.update({k: stages.get(k) for k in ("teacher", "teacher_cache", "selector", "students", "report")})
    out.update(total=total, student_units=units, workers=workers)
    return out


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}:{sec:02d}"


def print_timing(times: dict[str, Any], out=None) -> None:
    """The per-stage wall-time table (``summary["stage_seconds"]``)."""
    out = sys.stdout if out is None else out
    print("\nwall time per stage (m:ss)", file=out)
    width = max(len(v) for v in STAGES.values()) + 2
    for key, label in STAGES.items():
        note = ""
        if key == "install" and times.get(key) is None:
            note = "  (not recorded: run `make demo`)"
        elif key == "students" and times.get(key) is not None:
            note = f"  ({times['student_units']} students, {times['workers']} at a time)"
        elif key == "selector" and times.get(key) is None:
            note = "  (no selector)"
        print(f"  {label:<{width}} {_clock(times.get(key)):>6}{note}", file=out)


def print_summary(summary: dict[str, Any], out=sys.stdout) -> None:
    metric = summary["metric"]
    print(f"\n{summary['name']}: test {metric} (mean ± std over seeds)", file=out)
    width = max(len(t["method"]) for t in summary["methods"]) + 2
    for t in sorted(summary["methods"], key=lambda t: -t["mean"] if t["n"] else math.inf):
        print(f"  {t['method']:<{width}} {t['mean']:.4f} ± {t['std']:.4f}   (n={t['n']})", file=out)
    print(f"  {'teacher':<{width}} {summary['teacher']['metric']:.4f}", file=out)
    if summary.get("best_fixed"):
        print(f"  best fixed subset (chosen on the dev probe): {summary['best_fixed']}", file=out)
    for k, v in summary["selector_vs"].items():
        print(f"  selector - {k}: {v['mean']:+.4f}  95% CI {format_bounds(v['low'], v['high'], '+.4f')}", file=out)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.glue_ac", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(EXPERIMENT_PRESETS), help="default: text3 (embedded offline rt-polarity, 6 -> 3 layers)")
    p.add_argument("--config", help="YAML file of ExperimentConfig keys (CLI flags override it)")
    p.add_argument("--task", help="rt-polarity, digits, a GLUE task, or a CSV/TSV path")
    p.add_argument("--data-dir", help="local GLUE folder (<TASK>/train.tsv, dev.tsv)")
    p.add_argument("--teacher", help="HF model name or local folder (default: bundled MiniLM-L6)")
    p.add_argument("--labels", help="class names of a CSV/TSV task in class-id order, e.g. 'neg,pos' (default: "
                                    "integer labels are the ids; class names get ids in sorted order)")
    p.add_argument("--student-layers", type=int)
    p.add_argument("--seeds", type=parse_seeds, help=f"evaluation {SEEDS_HELP} (default: per preset)")
    p.add_argument("--agent", help=f"selector agent; one of {agent_names()}")
    p.add_argument("--episodes", type=int, help="selector training episodes")
    p.add_argument("--methods", help=f"comma list; default: {','.join(default_methods(('finetune', 'response', 'feature', 'relation')))}; "
                                     f"also: {','.join(DYNAMIC_BASELINES)} (dynamic baselines), fixed:<bits>")
    p.add_argument("--action-mode", choices=["weights", "mask"])
    p.add_argument("--reward", help="registered reward name (default dev_loss_delta)")
    p.add_argument("--plugin", action="append", default=None, help="python file registering rewards/knowledge")
    p.add_argument("--name", help="run folder name")
    p.add_argument("--out", help="output root (default runs)")
    p.add_argument("--device", help="cpu, cuda, auto")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="numeric precision of the teacher (fine-tune, cache) and the students' training steps: "
                        "sets distill.precision and distill.student_precision, recorded in config.yaml. auto "
                        "(the presets' choice): bf16 where the CPU has bf16 instructions (AMX, AVX512-BF16) or "
                        "the GPU supports it, else fp32; fp32 forces fp32, e.g. to time the demo as on a CPU "
                        "without bf16")
    p.add_argument("--workers", type=int, help="students distilled at once in spawned processes (default: per "
                                               "preset: text 2, at most the usable CPUs)")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> ExperimentConfig:
    args = build_parser().parse_args(argv)
    data: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise SystemExit(f"error: --config {args.config}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}  # plain data only: no tags that build objects
        except yaml.YAMLError as exc:
            first = " ".join(str(exc).split())
            raise SystemExit(f"error: {args.config} is not a plain YAML mapping of keys "
                             f"{ExperimentConfig.field_names()} ({first})") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"error: {args.config}: expected a mapping of keys {ExperimentConfig.field_names()}")
        data.update(loaded)
    unknown = sorted(set(data) - set(ExperimentConfig.field_names()))
    if unknown:
        raise SystemExit(f"error: unknown config key(s) {unknown} in {args.config}; valid: {ExperimentConfig.field_names()}")
    try:
        ExperimentConfig.check_types(data)
    except ValueError as exc:
        raise SystemExit(f"error: {args.config}: {exc}") from None
    distill = dict(data.get("distill") or {})
    for flag, key in (("task", "task"), ("data_dir", "data_dir"), ("teacher", "teacher"),
                      ("student_layers", "student_layers"), ("device", "device")):
        if getattr(args, flag) is not None:
            distill[key] = getattr(args, flag)
    if args.precision is not None:  # one setting for both: teacher and students
        distill["precision"] = distill["student_precision"] = args.precision
    if args.labels is not None:
        distill["labels"] = [x.strip() for x in args.labels.split(",") if x.strip()]
    data["distill"] = distill
    for flag in ("preset", "agent", "episodes", "seeds", "action_mode", "reward", "name", "out", "workers"):
        if getattr(args, flag) is not None:
            data[flag] = getattr(args, flag)
    if args.methods is not None:
        data["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.plugin:
        data["plugins"] = list(data.get("plugins") or []) + args.plugin
    try:
        config = ExperimentConfig(**data)
        load_plugins(config.plugins)
        DistillConfig.from_dict({**get_preset(config.preset if config.preset in preset_names() else "text3").to_dict(),
                                 **config.distill})
        config.resolved()
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    return config


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(argv)
    summary = run_experiment(config)
    print_summary(summary)
    print_timing(summary["stage_seconds"])
    print(f"\nwrote {Path(config.out) / config.resolved().name}/ (results.md, results.csv, results.json, plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
