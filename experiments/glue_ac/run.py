"""A glue_ac run folder (:class:`Run`: the config check, one file per finished student) and its
selector stage (:func:`train_selector`)."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import yaml

from agents import agent_hyperparameters, load_agent, make_agent
from agents.episode_log import TENSORBOARD_DIR, TensorBoardRun
from kd_env import DistillConfig, KnowledgeSelectionEnv
from kd_env.io import atomic_write_bytes, atomic_write_json, check_writable_folder

from ..logs import get_logger
from ..store import ResultStore, changed_settings, save_settings
from ..toolkit import TrainingProgress
from .eta import RUN_CLOCK
from .config import TRANSFER, ExperimentConfig

LOGGER = get_logger("glue_ac")

#: config keys that may change between invocations of one run: methods or seeds added to a
#: finished run, where it is written and how the students are spread (the overrides, ``distill``,
#: count as what they resolve to, ``distill_resolved``); a transfer checkpoint added or changed
#: (its students carry the checkpoint's fingerprint: another checkpoint's are distilled again)
NOT_CHECKED = ("methods", "seeds", "out", "workers", "distill", "executor", "address", "transfer_checkpoint",
               "situations", "tensorboard")


#: DistillConfig fields of the teacher's recipe added after runs were made (issue 39): a resumed old
#: run does not differ for them (its units are checked against the teacher's weights_id)
TEACHER_RECIPE_FIELDS = ("teacher_min_steps", "teacher_patience")


class Run:
    """One experiment run folder: resumable units, atomic files."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.dir = Path(config.out) / config.name
        self.units = self.dir / "units"
        self.store = ResultStore(self.units)
        self.selector_dir = self.dir / "selector"
        self._transfer_key: str | None = None
        #: the identity (``weights_id``) of the teacher this invocation loaded (set once the env is
        #: built; ``None`` before): a unit made with another teacher must run again
        self.teacher_key: str | None = None

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
                # fp32, a resumed one's could be bf16.  Nor is a teacher-recipe field added since
                # (TEACHER_RECIPE_FIELDS), at any value: every unit records its teacher's weights_id, and a
                # unit of another teacher is distilled again (load_unit)
                defaults = DistillConfig().to_dict()
                added = {f: v for f, v in current[k].items() if f not in previous and f != "precision"
                         and (v == defaults.get(f) or f in TEACHER_RECIPE_FIELDS)}
                if {**previous, **added} == current[k]:
                    diff = []
        if diff:
            raise SystemExit(f"error: {self.dir} holds a run with a different config (keys {diff}); "
                             f"pass --name for a new run or remove the folder")

    def check_folder(self) -> None:
        """Check, before any work, that the run folder can be written: the folder itself when it
        exists, else the output root (``--out``, created when missing).

        Raises:
            kd_env.io.FolderError: a file in the way, or a folder that cannot be created or written.
        """
        fix = "pass another --out (or --name), or make it a writable folder"
        if self.dir.exists() or self.dir.is_symlink():
            check_writable_folder(self.dir, "run folder", fix)
        else:
            check_writable_folder(self.dir.parent, "output folder (--out)", fix)

    def prepare(self, label_mapping: dict[str, int] | None = None, teacher: dict[str, Any] | None = None) -> None:
        """Check, then create the folder and write config.yaml (with the task's class-name ->
        class-id mapping, ``None`` for integer labels, and ``teacher``: the teacher's fine-tuning
        budget, where it stopped and its sanity check, :func:`kd_env.teacher_check.fine_tune_record`)."""
        self.check()
        self.units.mkdir(parents=True, exist_ok=True)
        save_settings(self.dir / "config.yaml", {**self.config.to_dict(), "label_mapping": label_mapping,
                                                 **({"teacher": teacher} if teacher is not None else {})})

    @staticmethod
    def unit_name(method: str, seed: int) -> str:
        """The unit's name in the store: ``<method, ':' as '-', '/' and '\\' as '_'>__seed<k>``
        (``schedule:my/plan.yaml`` -> ``schedule-my_plan.yaml__seed0``)."""
        return f"{method.replace(':', '-').replace('/', '_').replace(chr(92), '_')}__seed{seed}"

    def unit_path(self, method: str, seed: int) -> Path:
        return self.store.path(self.unit_name(method, seed))

    def load_unit(self, method: str, seed: int) -> dict[str, Any] | None:
        """The finished unit's row, or ``None`` when it must run (a transfer student of another
        checkpoint must run again; so must a student distilled from another teacher: a row's
        ``teacher`` is its teacher's ``weights_id``, compared with :attr:`teacher_key`).  A row
        written before teachers were recorded has no ``teacher`` and is kept (its teacher cannot
        be told; remove the unit's file to rerun it)."""
        expected = {"checkpoint_fingerprint": self.transfer_key} if method == TRANSFER else {}
        row = self.store.read(self.unit_name(method, seed), method=method, seed=seed, **expected)
        if row is not None and self.teacher_key is not None and row.get("teacher", self.teacher_key) != self.teacher_key:
            LOGGER.warning(f"glue_ac: {self.unit_path(method, seed)} was made with another teacher (weights "
                           f"{row['teacher']}, now {self.teacher_key}): distilling it again")
            return None
        return row

    def save_unit(self, row: dict[str, Any]) -> None:
        """A finished unit's row, atomically (a transfer student's with its checkpoint's fingerprint;
        every row with its teacher's ``weights_id``, ``teacher``, when known)."""
        if "teacher" not in row and self.teacher_key is not None:
            row = {**row, "teacher": self.teacher_key}
        if row["method"] == TRANSFER:
            row = {**row, "checkpoint": self.config.transfer_checkpoint, "checkpoint_fingerprint": self.transfer_key}
        self.store.write(self.unit_name(row["method"], row["seed"]), row)


def make_env(c: ExperimentConfig, distill: DistillConfig) -> KnowledgeSelectionEnv:
    return KnowledgeSelectionEnv(distill, action_mode=c.action_mode, observation=c.observation, reward=c.reward,
                                 reward_params=c.reward_params or None)


#: the selector's resume checkpoint is written every this many training episodes (rounded up to whole
#: updates and groups of paired rollouts, see :func:`_checkpoint_every`)
CHECKPOINT_EVERY = 10
#: selector agents whose training resumes exactly from a checkpoint: everything that shapes the
#: rest of training (networks, optimizers, observation statistics, random streams, counters) is in
#: the agent's checkpoint and nothing is pending between updates (``ac_q``'s replay buffer is not
#: saved, SB3 agents keep rollouts inside ``learn``): the others train again from episode 0
RESUMABLE = ("ac",)
#: the pointer to the newest resume checkpoint (``partial-<episode>/``) in the selector folder
PARTIAL = "partial.json"


def train_selector(run: Run, env: KnowledgeSelectionEnv) -> tuple[Any, list[float]]:
    """Train the selector (or load it when a previous run finished this stage).

    An ``ac`` selector (:data:`RESUMABLE`) is checkpointed every few episodes in the selector
    folder (the agent and the env's state, atomically); a run killed during this stage continues
    from its last checkpoint and ends with the same agent, returns and ``episodes.csv`` rows as an
    uninterrupted run.
    """
    c = run.config
    done = run.selector_dir / "done.json"
    ckpt = run.selector_dir / "agent"
    if done.exists():
        agent = load_agent(str(ckpt), env)
        return agent, json.loads(done.read_text())["returns"]
    log_dir = str(run.dir / TENSORBOARD_DIR / "selector")
    params = {"seed": c.selector_seed, **c.agent_params}
    logs_itself = "log_dir" in (agent_hyperparameters(c.agent) or {})  # ac, ac_q, SB3: episodes.csv, TensorBoard
    if logs_itself:
        params.setdefault("log_dir", log_dir)
        params.setdefault("tensorboard", c.tensorboard)
    resumed = None
    if c.agent in RESUMABLE and c.episodes > 0 and (run.selector_dir / PARTIAL).exists():
        resumed = _load_partial(run, env, params.get("log_dir"))  # restores the env's state too
    if resumed is not None:
        agent, returns = resumed
        if logs_itself:  # a loaded agent writes TensorBoard as this invocation says
            agent.tensorboard = params["tensorboard"]
    else:
        agent, returns = make_agent(c.agent, env, **params), []
        env.reset(seed=c.selector_seed)

    def on_episode(seconds: float) -> str | None:
        RUN_CLOCK.episode_done(seconds)
        return RUN_CLOCK.note()

    board = TensorBoardRun(log_dir, fresh=True) if c.tensorboard and not logs_itself else None  # trains from 0
    progress = TrainingProgress(c.episodes, on_episode=on_episode, tensorboard=board)
    progress.returns.extend(returns)
    if returns and progress._bar is not None:
        progress._bar.update(len(returns))
    callback: Any = progress
    if c.agent in RESUMABLE:
        every = _checkpoint_every(agent)

        def callback(agent_: Any, record: dict[str, Any]) -> bool:
            progress(agent_, record)
            if agent_.episodes_done % every == 0 and agent_.episodes_done < c.episodes:
                _save_partial(run, agent_, env, progress.returns)
            return True

    remaining = c.episodes - len(returns)
    if remaining > 0:
        # a resumed agent continues the env's restored random stream: its first reset is not seeded
        agent.learn(_ContinuedStream(env) if resumed is not None else env, total_episodes=remaining,
                    callback=callback)
    progress.close()
    returns = progress.returns
    run.selector_dir.mkdir(parents=True, exist_ok=True)
    agent.save(str(ckpt))
    atomic_write_json(done, {"returns": returns, "episodes": c.episodes, "agent": c.agent})
    _remove_partials(run.selector_dir)
    return agent, returns


def _checkpoint_every(agent: Any) -> int:
    """:data:`CHECKPOINT_EVERY`, rounded up to a multiple of the agent's ``episodes_per_update``
    and ``group_size``: at a checkpoint no episode is pending and no group is half-run."""
    cfg = agent.config
    step = math.lcm(int(getattr(cfg, "episodes_per_update", 1)), int(getattr(cfg, "group_size", 1)))
    return step * max(1, math.ceil(CHECKPOINT_EVERY / step))


class _ContinuedStream(gym.Wrapper):
    """The env, with the seed of its first reset dropped: a selector resumed from a checkpoint
    continues the restored env's random stream, as the uninterrupted run does (``learn`` seeds
    the first reset of each call)."""

    def __init__(self, env: Any):
        super().__init__(env)
        self._first = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if self._first:
            self._first, seed = False, None
        return self.env.reset(seed=seed, options=options)


def _save_partial(run: Run, agent: Any, env: KnowledgeSelectionEnv, returns: list[float]) -> None:
    """The resume checkpoint after ``agent.episodes_done`` episodes: ``partial-<episode>/`` (the
    agent; the env's state, ``env.pt``), then the pointer ``partial.json``, each atomically; older
    checkpoints are removed once the pointer names the new one."""
    folder = run.selector_dir / f"partial-{agent.episodes_done:06d}"
    shutil.rmtree(folder, ignore_errors=True)
    agent.save(str(folder / "agent"))
    buf = io.BytesIO()
    torch.save(env.state_dict(), buf)
    atomic_write_bytes(folder / "env.pt", buf.getvalue())
    atomic_write_json(run.selector_dir / PARTIAL, {"episodes_done": agent.episodes_done, "folder": folder.name,
                                                   "returns": list(returns), "agent": run.config.agent})
    _remove_partials(run.selector_dir, keep=folder.name)


def _remove_partials(selector_dir: Path, keep: str | None = None) -> None:
    """Resume checkpoints other than ``keep`` (all, and the pointer, when ``keep`` is ``None``)."""
    if not selector_dir.exists():
        return
    for old in selector_dir.glob("partial-*"):
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    if keep is None:
        (selector_dir / PARTIAL).unlink(missing_ok=True)


def _load_partial(run: Run, env: KnowledgeSelectionEnv, log_dir: str | None) -> tuple[Any, list[float]] | None:
    """The agent and returns of the newest resume checkpoint, with the env restored to its state
    then; ``None`` (train from episode 0) when there is none or it cannot be read."""
    pointer = run.selector_dir / PARTIAL
    if not pointer.exists():
        return None
    try:
        meta = json.loads(pointer.read_text())
        folder = run.selector_dir / str(meta["folder"])
        returns = [float(r) for r in meta["returns"]]
        if meta.get("agent") != run.config.agent or len(returns) != int(meta["episodes_done"]) \
                or len(returns) >= run.config.episodes:
            raise ValueError(f"it is of agent {meta.get('agent')!r} after {len(returns)} episodes")
        agent = load_agent(str(folder / "agent"), env)
        with torch.serialization.safe_globals(_env_state_globals()):
            state = torch.load(folder / "env.pt", map_location="cpu", weights_only=True)
        env.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - unreadable, foreign or damaged: train from the start
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        LOGGER.warning(f"note: selector resume checkpoint {pointer} not used ({first}); training from episode 0")
        return None
    if log_dir is not None and hasattr(agent, "log_dir"):
        agent.log_dir = log_dir
    LOGGER.info(f"selector: resuming after episode {agent.episodes_done} of {run.config.episodes} "
                f"(checkpoint {folder})")
    return agent, returns


def _env_state_globals() -> list[Any]:
    """What an env's ``state_dict`` holds besides tensors and plain data, allowed (and only that)
    when a resume checkpoint loads with ``weights_only=True``."""
    import numpy as np

    from kd_env.phase_stats import PhaseStats

    core = getattr(np, "_core", None) or np.core
    dtypes = {type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                          np.int64, np.uint8, np.bool_)}
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, PhaseStats, *dtypes]
