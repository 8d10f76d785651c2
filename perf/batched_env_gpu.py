"""The batched env on a GPU: does it give the CPU's episodes, and how many env steps per second.

A prepared check for a machine with CUDA (this project's CI machines have none):

1. equality: ``--copies`` copies on ``cuda`` and on ``cpu``, the same seeds and random masks over
   one whole DigitsKD episode; prints the largest observation and reward differences and whether
   every copy's final test metric is the same (GPU kernels sum in another order: expect ~1e-5);
2. speed: env steps per second of the batched env on the GPU for N = ``--sizes``, next to the
   single env on one CPU thread (``perf/batched_env_speed.py`` rows).

Usage::

    python perf/batched_env_gpu.py                       # N = 128, 512, 2048
    python perf/batched_env_gpu.py --sizes 256 --seconds 5

Without CUDA it says so and exits 0 (nothing to measure).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import kd_env  # noqa: E402,F401  (registers the ids)
from kd_env.batched import BatchedKDVectorEnv  # noqa: E402


def equality(copies: int, env_kwargs: dict) -> None:
    rng = np.random.default_rng(0)
    runs = {}
    for device in ("cpu", "cuda"):
        venv = BatchedKDVectorEnv(copies, device=device, **env_kwargs)
        try:
            obs, _ = venv.reset(seed=0)
            trace, rewards = [obs], []
            rng = np.random.default_rng(0)
            while True:
                obs, reward, terminated, _, _ = venv.step(rng.integers(0, 2, (copies, len(venv.knowledge_names))))
                trace.append(obs)
                rewards.append(reward)
                if terminated.all():
                    break
            tests = [c.distiller.evaluate("test")["main"] for c in venv.envs]
            runs[device] = (np.stack(trace), np.stack(rewards), tests)
        finally:
            venv.close()
    (o_cpu, r_cpu, t_cpu), (o_gpu, r_gpu, t_gpu) = runs["cpu"], runs["cuda"]
    print(f"equality over one episode, {copies} copies: max |obs diff| {np.abs(o_cpu - o_gpu).max():.2e}, "
          f"max |reward diff| {np.abs(r_cpu - r_gpu).max():.2e}, final test metric equal in "
          f"{sum(a == b for a, b in zip(t_cpu, t_gpu))}/{copies} copies")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="kd_env/DigitsKD-v0")
    p.add_argument("--sizes", default="128,512,2048")
    p.add_argument("--copies", type=int, default=16, help="copies in the equality check")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (run this on a machine with a GPU)")
        return
    import gymnasium as gym

    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    equality(a.copies, dict(gym.spec(a.env).kwargs))
    import batched_env_speed

    batched_env_speed.main(["--env", a.env, "--sizes", a.sizes, "--async-copies", "0", "--device", "cuda",
                            "--seconds", str(a.seconds), "--rounds", str(a.rounds)])


if __name__ == "__main__":
    main()
