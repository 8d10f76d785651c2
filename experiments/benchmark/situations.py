"""``python -m experiments.benchmark.situations``: a benchmark run on an instance env, compared
per held-out situation, with intervals over situations *then* seeds.

Every learner's final evaluation episodes are keyed by (situation, evaluation seed); learners of
one run share those keys (the benchmark pairs them).  For each learner against ``--reference``:
the mean paired difference with a hierarchical bootstrap interval (resample situations, then the
seeds within each), the situations won and lost, and the exact sign test over situations; then
the per-situation table.  ``--headroom DIR`` adds the oracles of a headroom run scored on the
same seeds (``python -m experiments.headroom --test-seeds`` with the benchmark's evaluation
seeds): ``oracle_constant`` and ``oracle_schedule`` as ceilings, and each learner's share of the
ceiling's gain over ``--best-fixed``::

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

from ..report import markdown_table
from ..stats import hierarchical_bootstrap, paired_situations

Scores = dict[tuple[str, int], float]

#: the oracle rows read from a headroom run's results.json (policy name -> per-situation choice)
ORACLES = ("oracle_constant", "oracle_schedule")


def learner_scores(run_dir: str | Path) -> dict[str, Scores]:
    """Each learner's final held-out test metric per (situation, evaluation seed), over all its
    seeds' cells (``<run>/<algo>/<env>__seed<s>/evaluations.npz``; the learner is named by the
    cell's ``result.json`` where there is one, else by its folder)."""
    out: dict[str, Scores] = {}
    cells = sorted(Path(run_dir).glob("*/*/evaluations.npz"))
    if not cells:
        raise FileNotFoundError(f"{run_dir} holds no finished benchmark cell (*/*/evaluations.npz)")
    for path in cells:
        result = path.parent / "result.json"
        algo = json.loads(result.read_text(encoding="utf-8"))["algo"] if result.is_file() else path.parent.parent.name
        with np.load(path) as arrays:
            seeds = [int(s) for s in arrays["eval_seeds"]]
            names = [str(n) for n in arrays["eval_instances"]]
            metrics = np.asarray(arrays["test_metrics"])[-1]
        per_seed = len(metrics) // max(1, len(seeds))  # episodes are seed-major: every situation of a seed
        scores = out.setdefault(algo, {})
        for j, value in enumerate(metrics):
            scores[(names[j], seeds[j // per_seed])] = float(value)
    return out


def oracle_scores(headroom_dir: str | Path) -> dict[str, Scores]:
    """``oracle_constant`` and ``oracle_schedule`` of a headroom run: each held-out situation's
    chosen policy, scored on the run's test seeds (from its units)."""
    folder = Path(headroom_dir)
    res = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    choices = res.get("choices") or {}
    units = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((folder / "units").glob("*.json"))]
    out: dict[str, Scores] = {}
    for oracle in ORACLES:
        chosen = choices.get(oracle)
        if not chosen:
            continue
        out[oracle] = {(str(u["instance"]), int(u["seed"])): float(u["test"]) for u in units
                       if u.get("test") is not None and chosen.get(str(u["instance"])) == u["policy"]}
    return out


def compare(scores: dict[str, Scores], reference: str, best_fixed: str | None = None) -> dict[str, Any]:
    """The comparison tables' numbers (see the module docstring)."""
    if reference not in scores:
        raise ValueError(f"reference {reference!r} is not in the run; learners: {sorted(scores)}")
    situations = sorted({k[0] for k in scores[reference]})
    rows = []
    for name, s in scores.items():
        by_sit = [np.asarray([v for (i, _), v in s.items() if i == sit]) for sit in situations if
                  any(i == sit for i, _ in s)]
        mean, low, high = hierarchical_bootstrap(by_sit, reps=4000, seed=0)
        row = {"learner": name, "mean": mean, "low": low, "high": high, "pairs": len(s)}
        if name != reference:
            row["vs_reference"] = paired_situations(scores[reference], s, reps=4000)
        rows.append(row)
    per_situation = {sit: {name: float(np.mean([v for (i, _), v in s.items() if i == sit]))
                           for name, s in scores.items() if any(i == sit for i, _ in s)} for sit in situations}
    share = {}
    if best_fixed in scores and "oracle_schedule" in scores:
        gap = [per_situation[t]["oracle_schedule"] - per_situation[t][best_fixed] for t in situations]
        for name in scores:
            gain = [per_situation[t][name] - per_situation[t][best_fixed] for t in situations]
            share[name] = float(np.mean(gain) / np.mean(gap)) if np.mean(gap) > 0 else None
    return {"reference": reference, "best_fixed": best_fixed, "situations": situations, "rows": rows,
            "per_situation": per_situation, "share_of_schedule_headroom": share}


def render(result: dict[str, Any]) -> str:
    ref = result["reference"]
    lines = [f"Reference: `{ref}`. Differences are `{ref}` minus the learner, per (situation, seed) pair, "
             f"averaged per situation, then over situations; 95% CIs from a hierarchical bootstrap "
             f"(situations, then seeds; 4000 resamples); the sign test is over situations.\n"]
    table = []
    for r in sorted(result["rows"], key=lambda r: -r["mean"]):
        v = r.get("vs_reference")
        share = result["share_of_schedule_headroom"].get(r["learner"])
        table.append([f"`{r['learner']}`", f"{r['mean']:.4f} [{r['low']:.4f}, {r['high']:.4f}]", r["pairs"],
                      "—" if v is None else f"{v['mean']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]",
                      "—" if v is None else f"{v['wins']} / {v['losses']}",
                      "—" if v is None else f"{v['sign_p']:.3f}",
                      "—" if share is None else f"{share:.0%}"])
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
    p.add_argument("--out", help="also write the markdown and a JSON here (<out>.md, <out>.json)")
    a = p.parse_args(argv)
    try:
        scores = learner_scores(a.run_dir)
        if a.headroom:
            scores.update(oracle_scores(a.headroom))
        result = compare(scores, a.reference, a.best_fixed)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = render(result)
    print(text)
    if a.out:
        Path(a.out + ".md").write_text(text + "\n", encoding="utf-8")
        Path(a.out + ".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
