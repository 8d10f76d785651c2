"""``python -m experiments.benchmark.situations``: a benchmark run on an instance env, compared
per held-out situation, with intervals over situations *then* seeds.

Every learner's final evaluation episodes are long-format score rows keyed by (situation, training
seed, evaluation seed); learners of one run share those keys (the benchmark pairs them).  For each
learner against ``--reference`` (:func:`experiments.stats.compare`): the mean paired difference
with a BCa bootstrap interval that resamples the training seeds jointly across situations (one
trained agent acts in every situation) and, independently, the situations; the situations won and
lost, and the exact sign test over situations; then the per-situation table.  ``--headroom DIR``
adds the oracles of a headroom run scored on the same seeds (``python -m experiments.headroom
--test-seeds`` with the benchmark's evaluation seeds): ``oracle_constant`` and
``oracle_schedule`` as ceilings, and each learner's share of the ceiling's gain over
``--best-fixed`` with its interval (:func:`experiments.stats.ratio`)::

    python -m experiments.benchmark.situations runs/benchmark-switch-test --reference ac \\
        --best-fixed vanilla_kd --headroom runs/headroom-switch-test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import stats
from ..report import json_safe, markdown_table
from ..logs import add_verbosity_flags, get_logger, setup_logging
from ..stats import Score

#: the oracle rows read from a headroom run's results.json (policy name -> per-situation choice)
ORACLES = ("oracle_constant", "oracle_schedule")


def learner_scores(run_dir: str | Path) -> list[Score]:
    """Each learner's final held-out test metric per (situation, training seed, evaluation seed),
    long-format, over all its seeds' cells (``<run>/<algo>/<env>__seed<s>/evaluations.npz``; the
    learner is named by the cell's ``result.json`` where there is one, else by its folder; the
    training seed is the cell's)."""
    out: list[Score] = []
    cells = sorted(Path(run_dir).glob("*/*/evaluations.npz"))
    if not cells:
        raise FileNotFoundError(f"{run_dir} holds no finished benchmark cell (*/*/evaluations.npz)")
    for path in cells:
        result = path.parent / "result.json"
        algo = json.loads(result.read_text(encoding="utf-8"))["algo"] if result.is_file() else path.parent.parent.name
        train_seed = int(path.parent.name.rsplit("__seed", 1)[1])
        with np.load(path) as arrays:
            seeds = [int(s) for s in arrays["eval_seeds"]]
            names = [str(n) for n in arrays["eval_instances"]]
            metrics = np.asarray(arrays["test_metrics"])[-1]
        per_seed = len(metrics) // max(1, len(seeds))  # episodes are seed-major: every situation of a seed
        out += [Score(algo, names[j], train_seed, seeds[j // per_seed], float(v)) for j, v in enumerate(metrics)]
    return out


def oracle_scores(headroom_dir: str | Path, learners: list[Score]) -> list[Score]:
    """``oracle_constant`` and ``oracle_schedule`` of a headroom run: each held-out situation's
    chosen policy, scored on the run's test seeds (from its units), as rows paired with the
    ``learners``' episodes: an oracle row takes the training seed of the learners' episode with
    its (situation, evaluation seed); units on other episodes are left out.

    Raises:
        ValueError: no unit of the headroom run is on an episode of the learners."""
    folder = Path(headroom_dir)
    res = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    choices = res.get("choices") or {}
    units = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((folder / "units").glob("*.json"))]
    train_seed = {(r.situation, r.eval_seed): r.train_seed for r in learners}
    out: list[Score] = []
    for oracle in ORACLES:
        chosen = choices.get(oracle)
        if not chosen:
            continue
        for u in units:
            key = (str(u["instance"]), int(u["seed"]))
            if u.get("test") is not None and chosen.get(key[0]) == u["policy"] and key in train_seed:
                out.append(Score(oracle, key[0], train_seed[key], key[1], float(u["test"])))
    if choices and not out:
        raise ValueError(f"{headroom_dir}: no unit was scored on the benchmark's evaluation episodes (run the "
                         f"headroom tool with --test-seeds set to the benchmark's evaluation seeds)")
    return out


def tables(rows: list[Score], reference: str, best_fixed: str | None = None) -> dict[str, Any]:
    """The comparison tables' numbers (see the module docstring): every learner's level and its
    paired difference with ``reference`` (:func:`experiments.stats.compare`), the per-situation
    means and each learner's share of ``oracle_schedule``'s gain over ``best_fixed``."""
    names = list(dict.fromkeys(r.method for r in rows))
    if reference not in names:
        raise ValueError(f"reference {reference!r} is not in the run; learners: {sorted(names)}")
    out_rows = []
    levels = {name: stats.estimate(rows, name) for name in names}
    for name in names:
        level = levels[name]
        row = {"learner": name, "mean": level.mean, "low": level.low, "high": level.high, "pairs": level.pairs}
        if name != reference:
            row["vs_reference"] = stats.compare(rows, reference, name).to_dict()
        out_rows.append(row)
    situations = sorted(levels[reference].per_situation)
    per_situation = {sit: {name: levels[name].per_situation[sit] for name in names
                           if sit in levels[name].per_situation} for sit in situations}
    share, share_interval = {}, {}
    if best_fixed in levels and "oracle_schedule" in levels:
        gap = stats.compare(rows, "oracle_schedule", best_fixed)
        for name in names:
            if gap.mean <= 0:
                share[name] = None
            elif name == best_fixed:
                share[name] = 0.0
            else:
                point, low, high = stats.ratio(stats.compare(rows, name, best_fixed), gap)
                share[name], share_interval[name] = point, [low, high]
    return {"reference": reference, "best_fixed": best_fixed, "situations": situations, "rows": out_rows,
            "per_situation": per_situation, "share_of_schedule_headroom": share,
            "share_interval": share_interval, "interval": levels[reference].interval,
            "resampling": levels[reference].resampling, "reps": levels[reference].reps}


def _share_bounds(result: dict[str, Any], name: str) -> str:
    bounds = result.get("share_interval", {}).get(name)
    if not bounds or bounds[0] is None or not np.all(np.isfinite(bounds)):
        return ""
    return f" [{bounds[0]:.0%}, {bounds[1]:.0%}]"


def render(result: dict[str, Any]) -> str:
    ref = result["reference"]
    lines = [f"Reference: `{ref}`. Differences are `{ref}` minus the learner, per (situation, training seed, "
             f"evaluation seed), averaged per situation, then over situations; 95% {result['interval']} bootstrap "
             f"CIs resampling {result['resampling']} ({result['reps']} resamples; "
             f"`experiments.stats.compare`); the sign test is over situations.\n"]
    table = []
    for r in sorted(result["rows"], key=lambda r: -r["mean"]):
        v = r.get("vs_reference")
        share = result["share_of_schedule_headroom"].get(r["learner"])
        table.append([f"`{r['learner']}`", stats.format_interval(r["mean"], r["low"], r["high"], 4), r["pairs"],
                      "—" if v is None else f"{v['mean']:+.4f} {stats.format_bounds(v['low'], v['high'], '+.4f')}",
                      "—" if v is None else f"{v['situation_wins']} / {v['situation_losses']}",
                      "—" if v is None else f"{v['sign_p']:.3f}",
                      "—" if share is None else f"{share:.0%}" + _share_bounds(result, r["learner"])])
    lines.append(markdown_table(["learner", "test mean [95% CI]", "pairs", f"{ref} − learner [95% CI]",
                                 f"situations {ref} wins / loses", "sign test p",
                                 f"share of oracle_schedule's gain over {result['best_fixed']}"], table))
    names = [r["learner"] for r in sorted(result["rows"], key=lambda r: -r["mean"])]
    per = result["per_situation"]
    lines.append("\nPer situation (mean test metric over its seeds; best learner in bold, oracles excluded):\n")
    rows = []
    for sit in result["situations"]:
        learners = {n: v for n, v in per[sit].items() if n not in ORACLES}
        top = max(learners, key=learners.get)
        rows.append([sit] + [("**%.4f**" if n == top else "%.4f") % per[sit][n] if n in per[sit] else "—"
                             for n in names])
    lines.append(markdown_table(["situation"] + [f"`{n}`" for n in names], rows))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark.situations",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a benchmark run folder on an instance env")
    p.add_argument("--reference", default="ac", help="the learner every other is compared with (default %(default)s)")
    p.add_argument("--best-fixed", help="the best fixed learner chosen on dev (for the share of headroom)")
    p.add_argument("--headroom", help="a headroom run folder scored on the same seeds (adds the oracles)")
    p.add_argument("--out", help="also write the markdown, a JSON and the long-format scores here (<out>.md, "
                                 "<out>.json, <out>-scores.csv)")
    add_verbosity_flags(p)
    a = p.parse_args(argv)
    setup_logging(a)
    try:
        scores = learner_scores(a.run_dir)
        if a.headroom:
            scores += oracle_scores(a.headroom, scores)
        result = tables(scores, a.reference, a.best_fixed)
    except (OSError, ValueError, KeyError) as exc:
        get_logger("benchmark").error(f"error: {exc}")
        return 2
    text = render(result)
    print(text)
    if a.out:
        Path(a.out + ".md").write_text(text + "\n", encoding="utf-8")
        Path(a.out + ".json").write_text(json.dumps(json_safe(result), indent=1), encoding="utf-8")
        stats.write_scores(a.out + "-scores.csv", scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
