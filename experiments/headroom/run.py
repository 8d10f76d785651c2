"""The stages of a headroom run (selection, schedules, scoring, greedy oracles, reward
alignment), each a list of units run on the shared executor and kept in the shared store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agents import agent_names
from agents.episode_log import TENSORBOARD_DIR
from kd_env.io import check_cache_root, check_writable_folder

from ..executors import execute
from ..logs import get_logger
from ..store import ResultStore, file_key
from . import sources
from .analysis import analyse
from .settings import DYNAMIC_BASELINES, HeadroomSettings, all_masks, builtin_rewards, schedule_name, unit_key
from .worker import close_worker, run_chunk, setup_worker, write_tensorboard

LOGGER = get_logger("headroom")
#: the append-only file of runs made before the store, imported into ``units/`` once
LEGACY_UNITS = "units.jsonl"


class HeadroomRun:
    """The stages of a headroom measurement over one env, resumable: one file per finished unit in
    ``<out>/units/`` (:class:`experiments.store.ResultStore`)."""

    def __init__(self, settings: HeadroomSettings):
        import gymnasium as gym

        import kd_env  # noqa: F401

        self.settings = settings
        if settings.env not in gym.registry:
            ids = sorted(i for i in gym.registry if i.startswith("kd_env/"))
            raise ValueError(f"unknown env id {settings.env!r}; valid: {ids}")
        name = settings.env.split("/")[-1]
        self.out = Path(settings.out or f"runs/headroom-{name}")
        # before any env (and teacher) is built: the output folder and the teacher cache are writable
        check_writable_folder(self.out, "headroom output folder (--out)",
                              "pass another --out, or make it a writable folder")
        check_cache_root(settings.env_kwargs.get("cache_dir"))
        probe = gym.make(settings.env, **{"record_time": False, **settings.env_kwargs}).unwrapped
        try:
            self.knowledge = list(probe.knowledge_names)
            self.num_phases = probe.config.num_phases
            self.reward = probe.reward_fn.name
            iset = probe.instance_set
            self.train_instances: list[str | None] = iset.train_names if iset else [None]
            self.test_instances: list[str | None] = iset.test_names if iset else [None]
        finally:
            probe.close()
        self.store = ResultStore(self.out / "units")
        self.done: dict[str, dict[str, Any]] = {}
        self.started = time.perf_counter()

    # ---- units on disk -------------------------------------------------------------------------
    def load(self) -> None:
        """Read the finished units, one file each in ``units/``, after importing once the
        ``units.jsonl`` of a run made before the store (a line cut short by a kill is skipped)."""
        legacy = self.out / LEGACY_UNITS
        if legacy.exists():
            present = {unit_key(r) for r in self.store.records()}
            for line in legacy.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    key = unit_key(rec)
                except (ValueError, KeyError, TypeError):  # cut short by a kill
                    continue
                if key not in present:
                    self.store.write(file_key(key), rec)
            legacy.rename(legacy.with_name(LEGACY_UNITS + ".imported"))
        self.done = {unit_key(r): r for r in self.store.records()}

    def run_units(self, units: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
        units = list({unit_key(u): u for u in units}.values())  # a unit named twice runs (and counts) once
        todo = [u for u in units if unit_key(u) not in self.done]
        if todo:
            LOGGER.info(f"[headroom] {label}: {len(todo)} episodes to run ({len(units) - len(todo)} done before)")
            self._execute(todo)
        return [self.done[unit_key(u)] for u in units]

    def _execute(self, units: list[dict[str, Any]]) -> None:
        """Run ``units`` in chunks (``batch`` open-loop episodes side by side on the batched env) on
        the settings' executor; every chunk's units are saved as it ends."""
        s = self.settings
        units = sorted(units, key=lambda u: (str(u["instance"]), u["policy"]))  # keeps an instance's distiller warm
        size = max(4, s.batch)
        chunks = [units[i:i + size] for i in range(0, len(units), size)]
        setup_args = (s.env, s.env_kwargs, list(s.plugins), s.batch)
        in_process = s.executor == "local" and s.workers <= 1  # execute() runs no setup here
        if in_process:
            setup_worker(*setup_args)
        try:
            execute(chunks, run_chunk, self._save, executor=s.executor, workers=s.workers, threads=1,
                    address=s.address, setup=setup_worker, setup_args=setup_args)
        finally:
            if in_process:
                close_worker()

    def _save(self, chunk: list[dict[str, Any]], records: list[dict[str, Any]] | None, error: str | None) -> None:
        """``on_done``: each unit of a finished chunk to its own file (atomically).  A chunk that
        raised stops the run, as a unit that raises always has; what finished before stays."""
        if error is not None:
            raise RuntimeError(f"a headroom unit failed (chunk of {len(chunk)}, first {unit_key(chunk[0])}):\n"
                               f"{error}")
        for rec in records or []:
            self.store.write(file_key(unit_key(rec)), rec)
            self.done[unit_key(rec)] = rec

    # ---- stages ----------------------------------------------------------------------------------
    def fixed_units(self, instances, seeds, split: str) -> list[dict[str, Any]]:
        return [{"policy": f"fixed:{m}", "instance": i, "seed": s, "splits": [split]}
                for m in all_masks(len(self.knowledge)) for i in instances for s in seeds]

    def execute(self) -> dict[str, Any]:
        s = self.settings
        self.load()
        instances = list(dict.fromkeys(self.train_instances + self.test_instances))
        # 1. selection: every fixed mask on every instance's selection seeds (dev metric)
        sel = self.run_units(self.fixed_units(instances, s.selection_seeds, "dev"), "fixed masks, selection seeds")
        masks = all_masks(len(self.knowledge))
        dev_train = {m: np.mean([r["dev"] for r in sel if r["policy"] == f"fixed:{m}"
                                 and r["instance"] in self.train_instances]) for m in masks}
        ranked = sorted(masks, key=lambda m: -dev_train[m])
        best_fixed = ranked[0]
        # 2. two-stage schedules among the best masks, chosen on the selection seeds (train instances)
        schedules = self.two_stage_schedules(ranked[: s.top_masks])
        sched_units = [{"policy": p, "instance": i, "seed": sd, "splits": ["dev"]} for p in schedules
                       for i in self.train_instances for sd in s.selection_seeds]
        sched_sel = self.run_units(sched_units, "two-stage schedules, selection seeds")
        sched_dev = {p: np.mean([r["dev"] for r in sched_sel if r["policy"] == p]) for p in schedules}
        best_schedule = max(schedules, key=lambda p: sched_dev[p]) if schedules else None
        # 2b. per held-out situation: schedules of its own best masks (selection seeds, dev); the
        # oracles' and the observable baselines' choices
        fixed = [f"fixed:{m}" for m in masks]
        table = sources.dev_table(sel)
        own = {str(i): self.two_stage_schedules([p[6:] for p in sources.ranked(table, str(i), fixed)[: s.top_masks]])
               for i in self.test_instances}
        own_units = [{"policy": p, "instance": i, "seed": sd, "splits": ["dev"]} for i in self.test_instances
                     for p in own[str(i)] for sd in s.selection_seeds]
        table.update(sources.dev_table(self.run_units(own_units, "two-stage schedules per held-out situation, "
                                                                 "selection seeds")))
        selection = sources.select(table, sources.situation_vectors(sel), [str(i) for i in self.train_instances],
                                   [str(i) for i in self.test_instances], fixed, own)
        oracle = {i: selection["choices"]["oracle_constant"][str(i)][6:] for i in self.test_instances}
        # 3. scoring on held-out instances and test seeds
        test_units = self.fixed_units(self.test_instances, s.test_seeds, "test")
        chosen = {(i, c[str(i)]) for i in self.test_instances for c in selection["choices"].values()}
        if best_schedule:
            chosen |= {(i, best_schedule) for i in self.test_instances}
        test_units += [{"policy": p, "instance": i, "seed": sd, "splits": ["test"]}
                       for i, p in sorted(chosen, key=str) if not p.startswith("fixed:") for sd in s.test_seeds]
        available = set(agent_names())
        dynamic = [b for b in DYNAMIC_BASELINES if b in available]
        test_units += [{"policy": f"agent:{b}", "instance": i, "seed": sd, "splits": ["test"]}
                       for b in dynamic for i in self.test_instances for sd in s.test_seeds]
        scored = self.run_units(test_units, "scoring on held-out instances, test seeds")
        greedy_units = [{"policy": f"greedy:{by}", "instance": i, "seed": sd, "splits": ["test"]}
                        for by in ("reward", "probe")
                        for i in self.test_instances for sd in s.test_seeds[: s.greedy_seeds]]
        scored += self.run_units(greedy_units, "greedy oracles (branching every phase)")
        # 4. reward alignment over random policies on the train instances
        rewards = list(s.rewards) or builtin_rewards()
        rand_units = [{"policy": f"random:{e}", "instance": self.train_instances[e % len(self.train_instances)],
                       "seed": 5000 + e, "reward": rw} for e in range(s.random_episodes) for rw in rewards]
        rand = self.run_units(rand_units, "reward alignment (random policies)")
        if s.tensorboard:
            write_tensorboard(self.out / TENSORBOARD_DIR, [*self.done.values()], self.knowledge)
        return analyse(self, scored, best_fixed, oracle, best_schedule, sched_dev, dev_train, dynamic, rand, rewards,
                       selection)

    def two_stage_schedules(self, top: Sequence[str]) -> list[str]:
        """Every "A for k phases, then B" over the masks ``top`` and the switch points; none on an
        env with one phase per episode (one decision: a schedule would be a fixed mask)."""
        if self.num_phases < 2:
            return []
        n = self.num_phases
        switches = sorted({min(n - 1, max(1, int(round(f * n)))) for f in self.settings.switch_points})
        return [schedule_name(a, b, k) for a in top for b in top if a != b for k in switches]

