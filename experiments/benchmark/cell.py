"""One cell of the benchmark: train a fresh agent on training instances, evaluate it on held-out
ones (:mod:`~.evaluation`), and read or write the cell's files (``evaluations.npz`` and
``result.json``, the finished marker).  A cell's numbers depend only on its settings and seed:
global RNGs are reseeded per cell, and evaluation does not disturb the training RNG streams.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments.store import read_finished
from kd_env.build import recorded_weights_id
from kd_env.io import atomic_write_bytes, atomic_write_json

from .evaluation import _evaluate, _training_instances_wrapper, evaluation_episodes, seed_everything
from .grid import EVALUATIONS_FILE, RESULT_FILE, TRAIN_SEED_STRIDE, Cell, env_slug, teachers_key

#: the trained agent's checkpoint folder inside a cell's folder (``agents.load_agent(path, env)``)
AGENT_DIR = "agent"


def tensorboard_dir(tensorboard: str | Path, cell: Cell) -> Path:
    """The cell's TensorBoard run folder in stable-baselines3's layout,
    ``<tensorboard>/<env>/<algo>_<seed>`` (``tensorboard``: the run's ``tb/`` folder)."""
    from agents.episode_log import run_name

    return Path(tensorboard) / env_slug(cell.env_id) / run_name(cell.algo, cell.seed)


def batched(cell: Cell) -> bool:
    """Whether ``cell`` runs on the batched vector env, several seeds in lockstep
    (:func:`run_cells`): an id with a ``vector_entry_point`` (the digits ids) and one of this
    project's agents, whose random streams are their own.  SB3 agents seed the global RNGs,
    which the seeds' drivers would share, so they run one cell at a time (their ``n_envs`` copies
    are batched inside the agent)."""
    import gymnasium as gym

    import kd_env  # noqa: F401 - registers the ids
    from agents.sb3 import ALGORITHMS

    return cell.settings.algo not in ALGORITHMS and gym.spec(cell.settings.env_id).vector_entry_point is not None


def run_cell(cell: Cell, threads: int = 1, tensorboard: str | Path | None = None) -> dict[str, Any]:
    """Train and evaluate one cell (in this process, on ``threads`` torch threads); with
    ``tensorboard`` (the run's ``tb/`` folder), write its training episodes and evaluations to its
    TensorBoard run folder (:func:`tensorboard_dir`, replacing an earlier run's; this process
    alone writes it).

    Returns:
        the cell's payload: ``"arrays"`` (what goes to ``evaluations.npz``) and ``"result"``
        (what goes to ``result.json``).
    """
    if batched(cell):
        outcome = run_cells([cell], threads, tensorboard)[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seed_everything(cell.seed)
        return _run_cell(cell, threads, tensorboard=tensorboard)
    finally:
        torch.set_num_threads(previous_threads)


def run_cells(cells: Sequence[Cell], threads: int = 1, tensorboard: str | Path | None = None) -> list[Any]:
    """Train and evaluate cells that differ only in their seed, all :func:`batched`, together: each
    seed's learner runs its own training and evaluation exactly as :func:`run_cell` runs them on
    single envs, on its own copy of a batched vector env (one for training, one for evaluation),
    and the students of all seeds train as one batched model (:class:`kd_env.batched.Lockstep`).
    A cell's numbers do not depend on the others (each copy's arithmetic is the same in a batch of
    one or of many).  ``tensorboard``: as :func:`run_cell` (each cell its own run folder).
    Returns each cell's payload, or the exception it raised."""
    import gymnasium as gym
    import torch

    import kd_env  # noqa: F401 - registers the ids
    from kd_env.batched import Lockstep

    settings = cells[0].settings
    if any(c.settings != settings for c in cells) or not all(batched(c) for c in cells):
        raise ValueError("run_cells takes batched cells that differ only in their seed")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    make_kwargs = {**settings.env_kwargs, "action_mode": settings.action_mode}
    venvs = []
    try:
        for _ in range(2):  # training, evaluation
            venvs.append(gym.make_vec(settings.env_id, num_envs=len(cells), vectorization_mode="vector_entry_point",
                                      **make_kwargs))
        lockstep = Lockstep()

        def driver(k: int, cell: Cell):
            def run() -> dict[str, Any]:
                seed_everything(cell.seed)
                envs = (lockstep.copy_env(venvs[0], k), lockstep.copy_env(venvs[1], k))
                return _run_cell(cell, threads, envs, tensorboard)

            return run

        return lockstep.run([driver(k, cell) for k, cell in enumerate(cells)])
    finally:
        for venv in venvs:
            venv.close()
        torch.set_num_threads(previous_threads)


def _run_cell(cell: Cell, threads: int, envs: tuple[Any, Any] | None = None,
              tensorboard: str | Path | None = None) -> dict[str, Any]:
    import gymnasium as gym

    import kd_env  # noqa: F401 - registers the ids
    from agents import make_agent
    from agents.episode_log import TensorBoardRun
    from kd_env.metrics import main_metric_name

    start = time.perf_counter()
    s = cell.settings
    make_kwargs = {**s.env_kwargs, "action_mode": s.action_mode}
    if envs is None:
        envs = (gym.make(s.env_id, **make_kwargs), gym.make(s.env_id, **make_kwargs))
    train_env = _training_instances_wrapper(envs[0], cell)
    eval_env = envs[1]
    board: TensorBoardRun | None = None
    try:
        base = eval_env.unwrapped
        num_phases = int(base.config.num_phases)
        knowledge = list(base.knowledge_names)
        k = len(knowledge)
        if tensorboard is not None:
            board = TensorBoardRun(tensorboard_dir(tensorboard, cell), knowledge, fresh=True)
        agent = make_agent(s.algo, train_env, seed=cell.seed, **s.hyperparams)
        eval_seeds = cell.eval_seeds()
        eval_pairs = evaluation_episodes(eval_env, eval_seeds, cell.eval_split)
        timesteps: list[int] = []
        episodes_at: list[int] = []
        evaluations: list[dict[str, np.ndarray]] = []
        train_returns: list[float] = []
        progress = {"episodes": 0, "steps": 0, "overrun": 0, "eval_seconds": 0.0}

        def evaluate_now() -> None:
            t0 = time.perf_counter()
            evaluations.append(e := _evaluate(eval_env, agent, eval_seeds, num_phases, k, cell.eval_split))
            timesteps.append(progress["steps"])
            episodes_at.append(progress["episodes"])
            if board is not None:  # a selection run scores the dev split: its tags say so
                split = "test" if cell.eval_split == "test" else "dev"
                board.evaluation(int(progress["steps"]), e["returns"], e["lengths"], metrics={split: e["test"]},
                                 losses={split: e["test_loss"]}, probe=e["probe"], actions=e["actions"])
            progress["eval_seconds"] += time.perf_counter() - t0

        def on_episode(_agent: Any, record: dict[str, Any]) -> bool:
            if progress["episodes"] >= s.episodes:
                # An on-policy SB3 rollout (PPO: 4 episodes) ran past the budget: stop it here,
                # untrained.  Stopping at the budget itself would also drop the update of a
                # rollout that ends exactly there.
                progress["overrun"] += 1
                return False
            progress["episodes"] += 1
            progress["steps"] += int(record.get("length", num_phases))
            train_returns.append(float(record.get("return", math.nan)))
            if board is not None:
                board.episode(record, step=int(progress["steps"]))
            if progress["episodes"] < s.episodes and progress["episodes"] % cell.eval_every == 0:
                evaluate_now()
            return True

        train_start = time.perf_counter()
        if s.episodes > 0:
            agent.learn(train_env, total_episodes=s.episodes, callback=on_episode)
            if progress["episodes"] != s.episodes:
                raise RuntimeError(f"{cell.label()}: trained {progress['episodes']} episodes, budget {s.episodes}")
        train_seconds = time.perf_counter() - train_start - progress["eval_seconds"]
        agent_files, agent_error = _agent_files(agent)
        evaluate_now()
        teachers = teachers_used(train_env, eval_env)
        metric_name = main_metric_name(base.distiller.task)
        updates = _agent_updates(agent)
    finally:
        train_env.close()
        eval_env.close()
        if board is not None:
            board.close()

    final = evaluations[-1]
    results = np.stack([e["returns"] for e in evaluations])
    arrays = {
        "timesteps": np.asarray(timesteps, np.int64),
        "results": results,
        "ep_lengths": np.stack([e["lengths"] for e in evaluations]),
        "episodes": np.asarray(episodes_at, np.int64),
        "test_metrics": np.stack([e["test"] for e in evaluations]),
        "test_losses": np.stack([e["test_loss"] for e in evaluations]),
        "probe_metrics": np.stack([e["probe"] for e in evaluations]),
        "final_actions": final["actions"],
        "train_returns": np.asarray(train_returns, np.float64),
        "eval_seeds": np.asarray(eval_seeds, np.int64),
        "eval_instances": np.asarray([str(i) for _, i in eval_pairs]),
    }
    selection = np.nanmean(final["actions"].reshape(-1, k), axis=0)
    teacher = teachers_key(teachers)
    result = {
        **cell.describe(teacher),
        "fingerprint": cell.fingerprint(teacher),
        "teachers": teachers,
        "algo": cell.algo, "env_id": cell.env_id,
        "metric_name": metric_name,
        "eval_split": cell.eval_split,
        "knowledge": knowledge,
        "num_phases": num_phases,
        "train_episodes": progress["episodes"],
        "train_steps": progress["steps"],
        "overrun_episodes": progress["overrun"],
        "agent_updates": updates,
        "test_metric": float(final["test"].mean()),
        "return": float(final["returns"].mean()),
        "probe_metric": float(final["probe"].mean()),
        "selection": {name: float(v) for name, v in zip(knowledge, selection)},
        "train_seeds": [cell.seed * TRAIN_SEED_STRIDE, cell.seed * TRAIN_SEED_STRIDE + progress["episodes"] - 1]
        if progress["episodes"] else [],
        "eval_seeds": list(eval_seeds),
        "threads": threads,
        "seconds": {"train": train_seconds, "eval": progress["eval_seconds"],
                    "total": time.perf_counter() - start},
        "agent_checkpoint": AGENT_DIR if agent_files else None,
    }
    if agent_error:
        result["agent_checkpoint_error"] = agent_error
    return {"arrays": arrays, "result": result, "agent": agent_files}


def teachers_used(*envs: Any) -> dict[str, str]:
    """``{teacher folder: weights_id}`` of every teacher the envs' distillers were built with
    (each instance's, for an instance env), from their ``teacher_metrics``."""
    out: dict[str, str] = {}
    for env in envs:
        base = env.unwrapped
        for d in [getattr(base, "distiller", None), *getattr(base, "_distillers", {}).values()]:
            metrics = getattr(d, "teacher_metrics", None) or {}
            if metrics.get("folder") and metrics.get("weights_id"):
                out[str(metrics["folder"])] = str(metrics["weights_id"])
    return dict(sorted(out.items()))


def _agent_files(agent: Any) -> tuple[dict[str, bytes] | None, str | None]:
    """The trained agent's checkpoint folder as ``{file name: bytes}`` (written beside the cell's
    results by :func:`write_cell`, loadable with :func:`agents.load_agent`), or ``None`` and why
    not (a failed save never loses the cell)."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            agent.save(Path(tmp) / AGENT_DIR)
            root = Path(tmp) / AGENT_DIR
            return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}, None
    except Exception as exc:  # noqa: BLE001 - recorded in result.json, the cell's numbers are kept
        return None, f"{type(exc).__name__}: {exc}"


def _agent_updates(agent: Any) -> int | None:
    """Gradient updates the agent made (ours: ``updates_done``; SB3: ``_n_updates``), if known."""
    for owner, name in ((agent, "updates_done"), (getattr(agent, "model", None), "_n_updates")):
        value = getattr(owner, name, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    return None


# ---- cell files -----------------------------------------------------------------------------


def write_cell(out_dir: Path, cell: Cell, payload: dict[str, Any]) -> None:
    """The trained agent's checkpoint (``agent/``), ``evaluations.npz``, then ``result.json`` (the
    finished marker), each file atomically."""
    folder = out_dir / cell.relative_dir()
    for name, data in (payload.get("agent") or {}).items():
        atomic_write_bytes(folder / AGENT_DIR / name, data)
    buf = io.BytesIO()
    np.savez(buf, **payload["arrays"])
    atomic_write_bytes(folder / EVALUATIONS_FILE, buf.getvalue())
    atomic_write_json(folder / RESULT_FILE, payload["result"])


def read_cell(out_dir: Path, cell: Cell, why: list[str] | None = None) -> dict[str, Any] | None:
    """The finished cell's payload, or ``None`` when it is missing, unreadable, was made with
    other settings or with another teacher.

    A cell records the teachers it was run with (``teachers``: ``{folder: weights_id}``) and its
    fingerprint covers them (:meth:`Cell.fingerprint`); it is read back only while every one of
    those folders still records the same ``weights_id`` (a teacher fine-tuned again into other
    weights, or gone, reruns the cell; ``why`` gets the reason).  A cell finished before teachers
    were recorded has no ``teachers`` and keeps its settings-only fingerprint: it is read back as
    before (its teacher cannot be told; ``fresh=True`` reruns it).
    """
    folder = out_dir / cell.relative_dir()
    result = read_finished(folder / RESULT_FILE)
    if result is None:
        return None
    teachers = result.get("teachers")
    if isinstance(teachers, dict) and teachers:
        for path, recorded in sorted(teachers.items()):
            current = recorded_weights_id(path)
            if current != recorded:
                if why is not None:
                    why.append(f"its teacher changed since it was run ({path}: weights {recorded} -> "
                               f"{current or 'gone'}), recomputing")
                return None
    if result.get("fingerprint") != cell.fingerprint(teachers_key(teachers) if isinstance(teachers, dict) else None):
        return None
    try:
        with np.load(folder / EVALUATIONS_FILE) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError):
        return None
    return {"arrays": arrays, "result": result}
