"""``python -m experiments.headroom.design``: does switching knowledge pay in a candidate set of
situations?  Measured on *train* situations only, before a set is registered or scored.

For each train situation of ``--instances``: every fixed mask on the choice seeds (dev split);
the two-stage schedules "A for k phases, then B" over the situation's ``--top`` best masks and
the ``--switches``; the best constant and the best policy (constant or schedule) by the mean dev
metric on the choice seeds.  Both are then played on the check seeds (dev split again: no test
split is read) and the *value of switching* is their difference there, per situation, with a
95% bootstrap interval over situations.  A set is worth registering for learned switching when
that interval lies above 0 (issue 27 asks for >= 2 points)::

    python -m experiments.headroom.design --instances digits-switch --workers 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..cli import SEEDS_HELP, load_plugins, parse_seeds
from ..executors import execute
from ..stats import hierarchical_bootstrap
from . import sources
from .settings import all_masks, schedule_name
from .worker import close_worker, run_chunk, setup_worker


def measure_situation(units_runner, instance: str, k: int, choice: Sequence[int], check: Sequence[int], top: int,
                      switches: Sequence[int]) -> dict[str, Any]:
    """One situation: choose the best constant and the best constant-or-schedule on ``choice``
    seeds (:func:`~.sources.choose`, as the headroom run's oracles), score both on ``check``
    seeds (dev split)."""
    def units(policies, seeds):
        return [{"policy": p, "instance": instance, "seed": s, "splits": ["dev"]} for p in policies for s in seeds]

    fixed = [f"fixed:{m}" for m in all_masks(k)]
    table = sources.dev_table(units_runner(units(fixed, choice)))
    best = sources.ranked(table, instance, fixed)[:top]
    schedules = [schedule_name(a[6:], b[6:], s) for a in best for b in best if a != b for s in switches]
    table.update(sources.dev_table(units_runner(units(schedules, choice))))
    constant = best[0]
    switching = sources.choose(table, instance, [constant, *schedules])
    checked = sources.dev_table(units_runner(units(sorted({constant, switching}), check)))
    on_check = {p: [checked[(instance, p)][s] for s in check] for p in (constant, switching)}
    out = {"instance": instance, "constant": constant, "switching": switching,
           "choice_dev": {"constant": float(np.mean(list(table[(instance, constant)].values()))),
                          "switching": float(np.mean(list(table[(instance, switching)].values())))},
           "check_constant": float(np.mean(on_check[constant])), "check_switching": float(np.mean(on_check[switching])),
           "per_seed_value": [b - a for a, b in zip(on_check[constant], on_check[switching])]}
    out["value"] = out["check_switching"] - out["check_constant"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.headroom.design", description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", required=True, help="instance set whose train situations are measured")
    p.add_argument("--env", default="kd_env/DigitsKD-Instances-v0", help="env id the set is run on (default %(default)s)")
    p.add_argument("--choice-seeds", type=parse_seeds, default=list(range(10)), help="seeds choices are made on; " + SEEDS_HELP)
    p.add_argument("--check-seeds", type=parse_seeds, default=list(range(100, 110)), help="seeds the choices are scored on")
    p.add_argument("--top", type=int, default=4, help="schedules combine a situation's best this-many masks")
    p.add_argument("--switches", default="5,8,10", help="phases after which a schedule switches (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="processes (one situation each at a time)")
    p.add_argument("--batch", type=int, default=32, help="episodes side by side on the batched env")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help="import a Python file first")
    p.add_argument("--out", help="write the per-situation results here as JSON")
    args = p.parse_args(argv)
    if set(args.choice_seeds) & set(args.check_seeds):
        p.error("choice and check seeds must not overlap")
    try:
        switches = [int(x) for x in args.switches.split(",") if x.strip()]
    except ValueError:
        p.error(f"--switches takes comma-separated phase counts, got {args.switches!r}")
    load_plugins(args.plugin)
    from kd_env.instances import get_instance_set

    try:
        iset = get_instance_set(args.instances)
    except ValueError as exc:
        p.error(str(exc))
    start = time.perf_counter()
    jobs = [(args.env, args.instances, list(args.plugin), args.batch, name, list(args.choice_seeds),
             list(args.check_seeds), args.top, switches) for name in iset.train_names]
    rows: list[dict[str, Any]] = []

    def done(job, result, error):
        if error is not None:
            raise RuntimeError(f"situation {job[4]} failed:\n{error}")
        rows.append(result)
        print(f"{result['instance']:28s} constant {result['constant']} | switching {result['switching']} | "
              f"check {result['check_constant']:.4f} -> {result['check_switching']:.4f} "
              f"({result['value']:+.4f})", flush=True)

    execute(jobs, _job, done, executor="local", workers=args.workers, threads=1)
    rows.sort(key=lambda r: iset.train_names.index(r["instance"]))
    values = [np.asarray(r["per_seed_value"]) for r in rows]
    mean, low, high = hierarchical_bootstrap(values, reps=10000, seed=0)
    summary = {"instances": args.instances, "situations": len(rows), "value_of_switching": mean, "low": low,
               "high": high, "positive": int(sum(r["value"] > 0 for r in rows)), "rows": rows,
               "choice_seeds": args.choice_seeds, "check_seeds": args.check_seeds, "top": args.top,
               "switches": switches, "seconds": time.perf_counter() - start}
    print(f"value of switching over {len(rows)} situations: {mean:+.4f} [{low:+.4f}, {high:+.4f}] "
          f"(bootstrap over situations, then check seeds); positive in {summary['positive']}")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


def _job(job: tuple) -> dict[str, Any]:
    env, instances, plugins, batch, name, choice, check, top, switches = job
    setup_worker(env, {"instances": instances}, plugins, batch)
    try:
        import experiments.headroom.worker as worker

        k = len(worker._WORKER.env.knowledge_names)
        return measure_situation(lambda units: run_chunk(units), name, k, choice, check, top, switches)
    finally:
        close_worker()


if __name__ == "__main__":
    sys.exit(main())
