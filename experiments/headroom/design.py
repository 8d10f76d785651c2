"""``python -m experiments.headroom.design``: does switching knowledge pay in a candidate set of
situations?  Measured on *train* situations only, before a set is registered or scored.

For each train situation of ``--instances``: every fixed mask on the choice seeds (dev split);
the two-stage schedules "A for k phases, then B" over the situation's ``--top`` best masks and
the ``--switches``; the best constant and the best policy (constant or schedule) by the mean dev
metric on the choice seeds.  Both are then played on the check seeds (dev split again: no test
split is read) and the *value of switching* is their difference there, per situation, with a
95% interval over situations, then check seeds (:func:`experiments.stats.compare`).  A set is worth registering for learned switching when
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

from ..cli import SEEDS_HELP, add_plugin_flag, load_plugins, parse_seeds
from ..executors import execute
from .. import stats
from ..logs import add_verbosity_flags, get_logger, setup_logging
from ..stats import Score
from . import sources
from .settings import all_masks, schedule_name
from .worker import close_worker, run_chunk, setup_worker


def measure_situation(units_runner, instance: str, k: int, choice: Sequence[int], check: Sequence[int], top: int,
                      switches: Sequence[int], masks: Sequence[str] | None = None,
                      references: Sequence[str] = ()) -> dict[str, Any]:
    """One situation: choose the best constant and the best constant-or-schedule on ``choice``
    seeds (:func:`~.sources.choose`, as the headroom run's oracles), score both on ``check``
    seeds (dev split), beside the ``references`` (e.g. ``fixed:1100``, ``agent:dynamic_kd``):
    the oracles' gain over each, per check seed."""
    def units(policies, seeds):
        return [{"policy": p, "instance": instance, "seed": s, "splits": ["dev"]} for p in policies for s in seeds]

    bad = [m for m in (masks or []) if len(m) != k]
    if bad:
        raise ValueError(f"masks {bad} do not have one bit per knowledge type ({k})")
    fixed = [f"fixed:{m}" for m in (masks or all_masks(k))]
    table = sources.dev_table(units_runner(units(fixed, choice)))
    best = sources.ranked(table, instance, fixed)[:top]
    schedules = [schedule_name(a[6:], b[6:], s) for a in best for b in best if a != b for s in switches]
    table.update(sources.dev_table(units_runner(units(schedules, choice))))
    constant = best[0]
    switching = sources.choose(table, instance, [constant, *schedules])
    scored = sorted({constant, switching, *references})
    checked = sources.dev_table(units_runner(units(scored, check)))
    on_check = {p: [checked[(instance, p)][s] for s in check] for p in scored}
    out = {"instance": instance, "constant": constant, "switching": switching,
           "choice_table": {p: float(np.mean(list(v.values()))) for (_, p), v in sorted(table.items())},
           "check": {p: float(np.mean(v)) for p, v in on_check.items()},
           "check_seeds": list(check), "per_seed_check": on_check,
           "per_seed_gain": {ref: {"constant": [a - b for a, b in zip(on_check[constant], on_check[ref])],
                                   "switching": [a - b for a, b in zip(on_check[switching], on_check[ref])]}
                             for ref in references},
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
    p.add_argument("--masks", help="comma list of the fixed masks (bit strings) to choose among "
                                    "(default: all 2^k)")
    p.add_argument("--situations", default="train",
                   help="train (default), test (the held-out ones), all, or a comma list of names")
    p.add_argument("--reference", action="append", default=[], metavar="POLICY",
                   help="a policy scored on the check seeds beside the oracles, e.g. fixed:1100 (vanilla KD) "
                        "or agent:dynamic_kd; repeatable")
    p.add_argument("--workers", type=int, default=1, help="processes (one situation each at a time)")
    p.add_argument("--batch", type=int, default=32, help="episodes side by side on the batched env")
    add_plugin_flag(p)
    p.add_argument("--out", help="write the per-situation results here as JSON")
    add_verbosity_flags(p)
    args = p.parse_args(argv)
    setup_logging(args)
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
    if args.situations in ("train", "test", "all"):
        names = iset.split(args.situations)
    else:
        names = [n.strip() for n in args.situations.split(",") if n.strip()]
        unknown = [n for n in names if n not in iset.names]
        if unknown:
            p.error(f"--situations: {unknown} are not situations of {args.instances!r}; valid: {iset.names}")
    masks = None
    if args.masks:
        masks = [m.strip() for m in args.masks.split(",") if m.strip()]
        bad = [m for m in masks if not m or set(m) - {"0", "1"}]
        if bad:
            p.error(f"--masks takes bit strings such as 1100, got {bad}")
    bad_refs = [r for r in args.reference if not r.startswith(("fixed:", "schedule:", "agent:"))]
    if bad_refs:
        p.error(f"--reference takes fixed:<bits>, schedule:<a>><b>@<k> or agent:<name>, got {bad_refs}")
    start = time.perf_counter()
    jobs = [(args.env, args.instances, list(args.plugin), args.batch, name, list(args.choice_seeds),
             list(args.check_seeds), args.top, switches, masks, list(args.reference)) for name in names]
    rows: list[dict[str, Any]] = []

    def done(job, result, error):
        if error is not None:
            raise RuntimeError(f"situation {job[4]} failed:\n{error}")
        rows.append(result)
        get_logger("headroom").info(f"{result['instance']:28s} constant {result['constant']} | switching "
                                    f"{result['switching']} | check {result['check_constant']:.4f} -> "
                                    f"{result['check_switching']:.4f} ({result['value']:+.4f})")

    execute(jobs, _job, done, executor="local", workers=args.workers, threads=1)
    rows.sort(key=lambda r: names.index(r["instance"]))
    scores = check_scores(rows)
    value = stats.compare(scores, "oracle_switching", "oracle_constant")
    mean, low, high = value.mean, value.low, value.high
    summary = {"instances": args.instances, "situations": len(rows), "value_of_switching": mean, "low": low,
               "high": high, "interval": value.interval, "resampling": value.resampling, "reps": value.reps,
               "positive": int(sum(r["value"] > 0 for r in rows)), "rows": rows,
               "choice_seeds": args.choice_seeds, "check_seeds": args.check_seeds, "top": args.top,
               "switches": switches, "masks": masks, "references": list(args.reference),
               "seconds": time.perf_counter() - start}
    print(f"value of switching over {len(rows)} situations: {mean:+.4f} [{low:+.4f}, {high:+.4f}] "
          f"({value.interval} bootstrap over {value.resampling}); positive in {summary['positive']}")
    summary["gain_over"] = {}
    for ref in args.reference:
        summary["gain_over"][ref] = {}
        for oracle in ("constant", "switching"):
            g = stats.compare(scores, f"oracle_{oracle}", ref)
            summary["gain_over"][ref][oracle] = {"mean": g.mean, "low": g.low, "high": g.high}
            print(f"oracle_{oracle} - {ref}: {g.mean:+.4f} [{g.low:+.4f}, {g.high:+.4f}]; per situation: "
                  + ", ".join(f"{s} {v:+.4f}" for s, v in g.per_situation.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


def check_scores(rows: Sequence[dict[str, Any]]) -> list[Score]:
    """The check-seed dev scores of :func:`measure_situation`'s results, long-format: per
    situation ``oracle_constant`` (its best constant), ``oracle_switching`` (its best constant or
    schedule) and each reference, per check seed (no agent is trained: the seed is an evaluation
    seed)."""
    out = []
    for r in rows:
        named = {"oracle_constant": r["constant"], "oracle_switching": r["switching"],
                 **{ref: ref for ref in r["per_seed_gain"]}}
        for name, policy in named.items():
            out += [Score(name, r["instance"], None, int(seed), float(v), "dev")
                    for seed, v in zip(r["check_seeds"], r["per_seed_check"][policy])]
    return out


def _job(job: tuple) -> dict[str, Any]:
    env, instances, plugins, batch, name, choice, check, top, switches, masks, references = job
    setup_worker(env, {"instances": instances}, plugins, batch)
    try:
        import experiments.headroom.worker as worker

        k = len(worker._WORKER.env.knowledge_names)
        return measure_situation(lambda units: run_chunk(units), name, k, choice, check, top, switches, masks,
                                 references)
    finally:
        close_worker()


if __name__ == "__main__":
    sys.exit(main())
