"""Independent drivers on the copies of batched vector envs: one learner per copy, stepping in
lockstep, so that the students of all drivers train together."""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym

from ..env import KnowledgeSelectionEnv
from .vector_env import BatchedKDVectorEnv

__all__ = ["CopyEnv", "Lockstep"]


class CopyEnv(gym.Env):
    """Copy ``index`` of a :class:`BatchedKDVectorEnv` seen as a single env, for code written
    for one env (an agent's ``learn``, an evaluation loop).  ``reset`` and ``step`` go through
    ``lockstep``, which runs them batched with the other copies' calls; ``unwrapped`` is the
    copy itself (its distiller holds the trained student after every phase)."""

    def __init__(self, lockstep: "Lockstep", venv: BatchedKDVectorEnv, index: int):
        super().__init__()
        self._lockstep, self._venv, self._index = lockstep, venv, index
        copy = venv.envs[index]
        self.observation_space = copy.observation_space
        self.action_space = copy.action_space
        self.metadata = copy.metadata

    @property
    def unwrapped(self) -> KnowledgeSelectionEnv:
        return self._venv.envs[self._index]

    @property
    def spec(self):  # the single env's (gym.make's), if the copies were made from an id
        return getattr(self._venv, "single_spec", None)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return self._lockstep.call(self._venv, self._index, "reset", (seed, options))

    def step(self, action: Any):
        return self._lockstep.call(self._venv, self._index, "step", action)

    def close(self) -> None:
        pass  # the vector env owns the copy


class Lockstep:
    """Runs independent drivers (one callable per driver, e.g. one learner's training per seed)
    in threads, one at a time, each on its own copies of batched vector envs (:class:`CopyEnv`):
    when every driver is waiting on a copy's ``reset`` or ``step``, all the waiting calls run as
    one batched phase.  Each driver therefore sees exactly what it would see on its own single
    env, while the students of all drivers train together.

    Only one driver runs at a time (a baton), so drivers never race on global state (random
    streams, the torch RNG a distiller saves and restores); drivers must not share objects.
    Outside :meth:`run`, a copy's call runs at once, alone.
    """

    def __init__(self) -> None:
        import threading

        self._cond = threading.Condition()
        self._baton = threading.Lock()
        self._pending: dict[int, tuple] = {}  # driver -> (venv, copy, kind, args)
        self._results: dict[int, Any] = {}
        self._live: set[int] = set()
        self._driver = threading.local()
        self._threads = False

    def copy_env(self, venv: BatchedKDVectorEnv, index: int) -> CopyEnv:
        if not 0 <= index < venv.num_envs:
            raise ValueError(f"copy index {index} out of range for a vector env of {venv.num_envs} copies")
        return CopyEnv(self, venv, index)

    def call(self, venv: BatchedKDVectorEnv, index: int, kind: str, args: Any) -> Any:
        driver = getattr(self._driver, "id", None)
        if not self._threads or driver is None:  # no drivers running: this call alone
            result = self._execute({0: (venv, index, kind, args)})[0]
        else:
            with self._cond:
                self._pending[driver] = (venv, index, kind, args)
                self._cond.notify_all()
            self._baton.release()  # let the other drivers run until they wait too
            with self._cond:
                while driver not in self._results:
                    self._cond.wait()
                result = self._results.pop(driver)
            self._baton.acquire()
        if isinstance(result, BaseException):
            raise result
        return result

    @staticmethod
    def _execute(requests: dict[int, tuple]) -> dict[int, Any]:
        """One batched phase per vector env for the waiting calls; ``{driver: result or error}``."""
        out: dict[int, Any] = {}
        by_venv: dict[int, list[tuple[int, tuple]]] = {}
        for driver, request in requests.items():
            by_venv.setdefault(id(request[0]), []).append((driver, request))
        for items in by_venv.values():
            venv = items[0][1][0]
            owner: dict[int, int] = {}
            steps: dict[int, Any] = {}
            resets: dict[int, Any] = {}
            for driver, (_, index, kind, args) in items:
                if index in owner:
                    out[driver] = RuntimeError(f"two drivers called copy {index} of one vector env at once")
                    continue
                owner[index] = driver
                (steps if kind == "step" else resets)[index] = args
            try:
                results = venv.advance(steps, resets)
            except Exception as exc:  # noqa: BLE001 - every driver of this env learns of it
                results = {index: exc for index in owner}
            for index, driver in owner.items():
                out[driver] = results[index]
        return out

    def run(self, drivers: Sequence[Any]) -> list[Any]:
        """Run ``drivers`` (callables without arguments) to the end; their return values, or the
        exception a driver raised, in order."""
        import threading

        outcomes: list[Any] = [None] * len(drivers)

        def body(k: int, fn: Any) -> None:
            self._driver.id = k
            self._baton.acquire()
            try:
                outcomes[k] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                outcomes[k] = exc
            finally:
                with self._cond:
                    self._live.discard(k)
                    self._cond.notify_all()
                self._baton.release()

        self._threads = True
        self._live = set(range(len(drivers)))
        threads = [threading.Thread(target=body, args=(k, fn), daemon=True) for k, fn in enumerate(drivers)]
        try:
            for t in threads:
                t.start()
            while True:
                with self._cond:
                    while self._live and len(self._pending) < len(self._live):
                        self._cond.wait()
                    if not self._live:
                        break
                    requests, self._pending = self._pending, {}
                with self._baton:  # every live driver waits: none runs while the phase does
                    results = self._execute(requests)
                with self._cond:
                    self._results.update(results)
                    self._cond.notify_all()
            for t in threads:
                t.join()
        finally:
            self._threads = False
        return outcomes
