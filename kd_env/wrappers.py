"""Wrappers for using the knowledge-selection env with RL libraries.

:class:`SymmetricWeights`: the weights mode's ``Box(0, 1, (K,))`` action exposed as
``Box(-1, 1, (K,))``, which stable-baselines3 expects of continuous actions (its Gaussian
policies start at mean 0, and its ``check_env`` warns about any other Box)::

    import gymnasium as gym
    import kd_env
    from kd_env.wrappers import SymmetricWeights
    from stable_baselines3 import SAC

    env = SymmetricWeights(gym.make("kd_env/DigitsKD-v0", action_mode="weights"))
    model = SAC("MlpPolicy", env).learn(600)

The mask mode (``MultiBinary``) needs no wrapper.  ``agents.make_agent("ppo" | "a2c", env)``
applies this wrapper itself on a weights env.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["SymmetricWeights"]


class SymmetricWeights(gym.wrappers.RescaleAction):
    """A weights-mode env with the action ``Box(-1, 1, (K,), float32)``: action ``a`` applies
    the knowledge weights ``w = (a + 1) / 2`` (:meth:`to_weights`), so 0 is the weight 0.5.

    A :class:`gymnasium.wrappers.RescaleAction` to ``[-1, 1]`` whose mapping is also available
    without an env (:meth:`to_weights`), and which names the symmetric space in its errors.

    Args:
        env: an env whose action space is ``Box(0, 1, (K,))`` (``action_mode="weights"``).

    Raises:
        ValueError: the env's action space is not ``Box(0, 1, (K,))`` (a mask env needs no
            wrapper).
    """

    def __init__(self, env: gym.Env):
        space = env.action_space
        if not (isinstance(space, spaces.Box) and len(space.shape) == 1 and np.all(space.low == 0)
                and np.all(space.high == 1)):
            raise ValueError(f"SymmetricWeights wraps an env with the action space Box(0, 1, (K,)) "
                             f"(action_mode='weights'), got {space}; a mask env (MultiBinary) needs no wrapper")
        super().__init__(env, np.float32(-1.0), np.float32(1.0))

    @staticmethod
    def to_weights(action: Any) -> np.ndarray:
        """Knowledge weights in ``[0, 1]`` of a symmetric action in ``[-1, 1]`` (clipped first)."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        return ((a + 1.0) / 2.0).astype(np.float32)

    def action(self, action: Any) -> np.ndarray:
        """The weights of a symmetric action; ``ValueError`` naming ``Box(-1, 1)`` unless the
        action is K finite numbers in ``[-1, 1]``."""
        k = self.action_space.shape[0]
        try:
            arr = np.asarray(action)
        except ValueError:  # ragged lists
            arr = np.asarray(None)
        if arr.dtype.kind not in "biuf" or arr.shape != (k,) or not np.all(np.isfinite(arr)) \
                or np.any(arr < -1) or np.any(arr > 1):
            raise ValueError(f"invalid action {action!r}; expected Box(-1, 1, ({k},), float32): {k} finite values "
                             f"in [-1, 1] (the weight of knowledge k is (a_k + 1) / 2)")
        return self.to_weights(arr)
