"""The per-instance oracle of a finished instance-env benchmark run, and each algorithm's share of
its headroom, from the run's cell files alone.

The oracle plays, on each held-out instance, the algorithm named for it (e.g. the fixed mask the
headroom tool chose on dev), scored on the same evaluation episodes as every other run of that
seed.  For each algorithm: the paired difference with the baseline, and its share of the oracle's
gain, ``mean(algo - baseline) / mean(oracle - baseline)``, each with a 95% interval over the
training seeds (:func:`experiments.stats.compare` and :func:`~experiments.stats.ratio` on each
seed's mean over the held-out instances)::

    python -m experiments.benchmark.oracle runs/benchmark-instances-paired \\
        --choice labels100-noisy40-strong=vanilla_kd,labels25-clean-weak=fixed:1000,\\
labels5-clean-strong=fixed:0100,labels5-noisy40-weak=fixed:0100

An algorithm may come from another run folder of the same env and seeds: ``ALGO@RUN_DIR`` (e.g.
``--algos ac,ac@runs/benchmark-instances-uw`` or ``--baseline ac@runs/benchmark-other``); its
cells must have been scored on the same evaluation episodes (same seeds and instances), which is
checked.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import stats
from ..logs import add_verbosity_flags, get_logger, setup_logging
from ..stats import Score


def _episode_scores(run_dir: Path, spec: str,
                    episodes: dict[int, tuple] | None = None) -> dict[int, dict[str, float]]:
    """``{seed: {instance: mean final test metric over that instance's evaluation episodes}}`` of
    algorithm ``spec`` (``ALGO`` in ``run_dir``, or ``ALGO@OTHER_RUN_DIR``).  ``episodes``
    (``{seed: (eval seeds, eval instances)}``) is filled on first sight and checked after, so that
    every algorithm is scored on the same evaluation episodes."""
    algo, _, other = spec.partition("@")
    where = Path(other) if other else run_dir
    folder = where / algo.replace(":", "_")
    if not folder.is_dir():
        raise ValueError(f"{where} has no runs of {algo!r} (no folder {folder.name}/)")
    out: dict[int, dict[str, float]] = {}
    for cell in sorted(folder.glob("*__seed*")):
        seed = int(cell.name.rsplit("__seed", 1)[1])
        with np.load(cell / "evaluations.npz") as data:
            final, instances = data["test_metrics"][-1], data["eval_instances"]
            key = (tuple(int(x) for x in data["eval_seeds"]), tuple(str(x) for x in instances))
        if episodes is not None:
            if episodes.setdefault(seed, key) != key:
                raise ValueError(f"{spec!r} seed {seed} was scored on other evaluation episodes than the algorithms "
                                 f"before it (another env, --eval-split or --eval-episodes)")
        out[seed] = {str(i): float(np.mean(final[instances == i])) for i in np.unique(instances)}
    return out


def oracle_shares(run_dir: str | Path, choice: dict[str, str], algos: Sequence[str], baseline: str = "vanilla_kd",
                  reps: int = stats.REPS, seed: int = 0) -> dict[str, Any]:
    """The oracle's mean and paired difference with ``baseline``, and per algorithm its paired
    difference and share of the oracle's gain (point and 95% interval over the training seeds:
    :func:`experiments.stats.compare`, :func:`experiments.stats.ratio`, ``reps`` resamples)."""
    run_dir = Path(run_dir)
    episodes: dict[int, tuple] = {}
    scores = {a: _episode_scores(run_dir, a, episodes) for a in dict.fromkeys([baseline, *choice.values(), *algos])}
    seeds = sorted(set.intersection(*(set(s) for s in scores.values())))
    if not seeds:
        raise ValueError(f"no seed has runs of every algorithm in {run_dir}")
    instances = sorted(scores[baseline][seeds[0]])
    missing = sorted(set(instances) - set(choice))
    if missing:
        raise ValueError(f"--choice names no algorithm for held-out instance(s) {missing}")

    def mean_over(algo_of: dict[str, str], s: int) -> float:
        return float(np.mean([scores[algo_of[i]][s][i] for i in instances]))

    # one score per (algorithm, training seed): its mean over the held-out instances
    rows = [Score("baseline", "held-out", s, None, mean_over({i: baseline for i in instances}, s)) for s in seeds]
    rows += [Score("oracle", "held-out", s, None, mean_over(choice, s)) for s in seeds]
    rows += [Score(f"algo:{a}", "held-out", s, None, mean_over({i: a for i in instances}, s)) for a in algos
             for s in seeds]
    gain = stats.compare(rows, "oracle", "baseline", reps=reps, seed=seed)
    out: dict[str, Any] = {"seeds": seeds, "oracle_mean": stats.estimate(rows, "oracle").mean,
                           "oracle_diff": gain.to_dict(), "algos": {}}
    for algo in algos:
        diff = stats.compare(rows, f"algo:{algo}", "baseline", reps=reps, seed=seed)
        share, low, high = stats.ratio(diff, gain)
        out["algos"][algo] = {"mean": stats.estimate(rows, f"algo:{algo}").mean, "diff": diff.to_dict(),
                              "share": share, "share_low": low, "share_high": high}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark.oracle", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--choice", required=True, help="instance=algorithm,... for every held-out instance")
    p.add_argument("--algos", default="ac", help="comma-separated algorithms to compare with the oracle")
    p.add_argument("--baseline", default="vanilla_kd")
    add_verbosity_flags(p)
    args = p.parse_args(argv)
    setup_logging(args)
    try:
        choice = dict(item.split("=", 1) for item in args.choice.split(","))
        result = oracle_shares(args.run_dir, choice, args.algos.split(","), args.baseline)
    except ValueError as exc:
        get_logger("benchmark").error(f"error: {exc}")
        return 2
    d = result["oracle_diff"]
    print(f"oracle: {result['oracle_mean']:.4f}, vs {args.baseline} {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], "
          f"{d['wins']}/{d['n']} seeds")
    for algo, r in result["algos"].items():
        d = r["diff"]
        print(f"{algo}: {r['mean']:.4f}, vs {args.baseline} {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]; "
              f"share of the oracle's gain {r['share']:.1%} [{r['share_low']:.1%}, {r['share_high']:.1%}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
