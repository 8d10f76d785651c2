"""Wrappers for using the knowledge-selection env with RL libraries.

:class:`MaskIndexWrapper`: the ``K`` knowledge bits as one ``Discrete(2^K)`` action (bit ``k`` of
the index = knowledge ``k``), for algorithms with discrete actions only (stable-baselines3's DQN:
``agents.make_agent("dqn", env)`` applies it itself).

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

__all__ = ["SymmetricWeights", "MaskIndexWrapper", "index_to_mask", "mask_to_index", "MAX_DQN_KNOWLEDGE"]


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
        k = self.action_space.shape[0]  # type: ignore[index]  # a Box: its shape is set
        try:
            arr = np.asarray(action)
        except ValueError:  # ragged lists
            arr = np.asarray(None)
        if arr.dtype.kind not in "biuf" or arr.shape != (k,) or not np.all(np.isfinite(arr)) \
                or np.any(arr < -1) or np.any(arr > 1):
            raise ValueError(f"invalid action {action!r}; expected Box(-1, 1, ({k},), float32): {k} finite values "
                             f"in [-1, 1] (the weight of knowledge k is (a_k + 1) / 2)")
        return self.to_weights(arr)


#: the most knowledge types :class:`MaskIndexWrapper` takes (``2^16`` discrete actions)
MAX_DQN_KNOWLEDGE = 16


def index_to_mask(index: int, k: int) -> np.ndarray:
    """Bit ``j`` of ``index`` -> entry ``j`` of a 0/1 mask of length ``k``."""
    index = int(index)
    if not 0 <= index < 2**k:
        raise ValueError(f"index {index} is outside [0, {2**k})")
    return np.array([(index >> j) & 1 for j in range(k)], dtype=np.int8)


def mask_to_index(mask: Any) -> int:
    """The inverse of :func:`index_to_mask`."""
    bits = np.asarray(mask).reshape(-1)
    if not np.all((bits == 0) | (bits == 1)):
        raise ValueError(f"mask must hold 0/1 values, got {bits.tolist()}")
    return int(sum(int(b) << j for j, b in enumerate(bits)))


class MaskIndexWrapper(gym.ActionWrapper):
    """Expose ``Discrete(2^K)`` over a knowledge-selection env: action ``i`` applies the mask
    whose bit ``k`` is bit ``k`` of ``i`` (as 0/1 weights in weights mode).

    Args:
        env: a mask (``MultiBinary(K)``) or weights (``Box(0, 1, (K,))``) env, K <= 16.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        inner = env.action_space
        if isinstance(inner, spaces.MultiBinary):
            self.k, self.weights = int(inner.shape[0]), False
        elif isinstance(inner, spaces.Box) and len(inner.shape) == 1:
            self.k, self.weights = int(inner.shape[0]), True
        else:
            raise ValueError(f"MaskIndexWrapper needs a MultiBinary(K) or Box(0, 1, (K,)) action space, got {inner}")
        if self.k > MAX_DQN_KNOWLEDGE:
            raise ValueError(f"{self.k} knowledge types give 2^{self.k} discrete actions; at most {MAX_DQN_KNOWLEDGE}")
        self.action_space = spaces.Discrete(2**self.k)

    def action(self, action: Any) -> np.ndarray:
        mask = index_to_mask(int(np.asarray(action).reshape(())), self.k)
        return mask.astype(np.float32) if self.weights else mask

    def reverse_action(self, action: Any) -> int:
        return mask_to_index(np.asarray(action))
