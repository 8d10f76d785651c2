"""A glue_ac run folder (:class:`Run`: the config check, one file per finished student) and its
selector stage (:func:`train_selector`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from agents import load_agent, make_agent
from kd_env import DistillConfig, KnowledgeSelectionEnv
from kd_env.io import atomic_write_json

from ..store import ResultStore, changed_settings, save_settings
from ..toolkit import TrainingProgress
from .eta import RUN_CLOCK
from .config import TRANSFER, ExperimentConfig

#: config keys that may change between invocations of one run: methods or seeds added to a
#: finished run, where it is written and how the students are spread (the overrides, ``distill``,
#: count as what they resolve to, ``distill_resolved``); a transfer checkpoint added or changed
#: (its students carry the checkpoint's fingerprint: another checkpoint's are distilled again)
NOT_CHECKED = ("methods", "seeds", "out", "workers", "distill", "executor", "address", "transfer_checkpoint",
               "situations")


class Run:
    """One experiment run folder: resumable units, atomic files."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.dir = Path(config.out) / config.name
        self.units = self.dir / "units"
        self.store = ResultStore(self.units)
        self.selector_dir = self.dir / "selector"
        self._transfer_key: str | None = None

    @property
    def transfer_key(self) -> str | None:
        """The fingerprint of the transfer checkpoint (``None`` without one), read once."""
        if self._transfer_key is None and self.config.transfer_checkpoint is not None:
            from .transfer import checkpoint_fingerprint

            self._transfer_key = checkpoint_fingerprint(self.config.transfer_checkpoint)
        return self._transfer_key

    def check(self) -> None:
        """``SystemExit`` when the folder holds a run with another config (nothing is written)."""
        saved = self.dir / "config.yaml"
        current = self.config.to_dict()
        diff = changed_settings(saved, current, NOT_CHECKED)
        if diff == ["distill_resolved"]:
            previous = (yaml.safe_load(saved.read_text()) or {}).get(k := "distill_resolved")
            if isinstance(previous, dict):
                # a DistillConfig field added since the run was made, at its default, is no difference;
                # not so `precision`, whose default ("auto") resolves by machine: an old run's units were
                # fp32, a resumed one's could be bf16
                defaults = DistillConfig().to_dict()
                added = {f: v for f, v in current[k].items()
                         if f not in previous and v == defaults.get(f) and f != "precision"}
                if {**previous, **added} == current[k]:
                    diff = []
        if diff:
            raise SystemExit(f"error: {self.dir} holds a run with a different config (keys {diff}); "
                             f"pass --name for a new run or remove the folder")

    def prepare(self, label_mapping: dict[str, int] | None = None) -> None:
        """Check, then create the folder and write config.yaml (with the task's class-name ->
        class-id mapping, ``None`` for integer labels)."""
        self.check()
        self.units.mkdir(parents=True, exist_ok=True)
        save_settings(self.dir / "config.yaml", {**self.config.to_dict(), "label_mapping": label_mapping})

    @staticmethod
    def unit_name(method: str, seed: int) -> str:
        """The unit's name in the store: ``<method, ':' as '-'>__seed<k>``."""
        return f"{method.replace(':', '-')}__seed{seed}"

    def unit_path(self, method: str, seed: int) -> Path:
        return self.store.path(self.unit_name(method, seed))

    def load_unit(self, method: str, seed: int) -> dict[str, Any] | None:
        """The finished unit's row, or ``None`` when it must run (a transfer student of another
        checkpoint must run again)."""
        expected = {"checkpoint_fingerprint": self.transfer_key} if method == TRANSFER else {}
        return self.store.read(self.unit_name(method, seed), method=method, seed=seed, **expected)

    def save_unit(self, row: dict[str, Any]) -> None:
        """A finished unit's row, atomically (a transfer student's with its checkpoint's fingerprint)."""
        if row["method"] == TRANSFER:
            row = {**row, "checkpoint": self.config.transfer_checkpoint, "checkpoint_fingerprint": self.transfer_key}
        self.store.write(self.unit_name(row["method"], row["seed"]), row)


def make_env(c: ExperimentConfig, distill: DistillConfig) -> KnowledgeSelectionEnv:
    return KnowledgeSelectionEnv(distill, action_mode=c.action_mode, observation=c.observation, reward=c.reward,
                                 reward_params=c.reward_params or None)


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
    def on_episode(seconds: float) -> str | None:
        RUN_CLOCK.episode_done(seconds)
        return RUN_CLOCK.note()

    progress = TrainingProgress(c.episodes, on_episode=on_episode)
    env.reset(seed=c.selector_seed)
    if c.episodes > 0:
        agent.learn(env, total_episodes=c.episodes, callback=progress)
    progress.close()
    returns = progress.returns
    run.selector_dir.mkdir(parents=True, exist_ok=True)
    agent.save(str(ckpt))
    atomic_write_json(done, {"returns": returns, "episodes": c.episodes, "agent": c.agent})
    return agent, returns
