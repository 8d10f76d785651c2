"""The headroom tool end to end (``--quick``) on a tiny instance set over the quick preset, its
resume from the result store, and its choices: made on selection seeds and dev, never on the
test split."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import kd_env
from experiments import headroom
from experiments.headroom import sources
from experiments.store import ResultStore, file_key
from kd_env import Instance, InstanceSet
from tests.helpers import tensorboard_runs

if "tiny-headroom" not in kd_env.instance_set_names():
    kd_env.register_instance_set(InstanceSet(
        name="tiny-headroom", base="quick",
        instances=[Instance("clean", {}), Instance("few-labels", {"label_fraction": 0.05})],
        held_out=["few-labels"], description="two quick instances for the headroom test"))

ARGS = ["--quick", "--env", "kd_env/DigitsKD-Instances-v0", "--env-kwarg", "config=quick",
        "--env-kwarg", "instances=tiny-headroom", "--selection-seeds", "0", "--test-seeds", "100-101",
        "--random-episodes", "4"]


def units(folder):
    """The finished units of a run folder (one file each in ``units/``)."""
    return ResultStore(folder / "units").records()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("headroom")
    assert headroom.main([*ARGS, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_report_has_every_part(quick_run):
    out, res = quick_run
    assert (out / "results.md").read_text().startswith("# Headroom on `kd_env/DigitsKD-Instances-v0`")
    assert (out / "headroom.png").stat().st_size > 10_000
    policies = {r["policy"]: r for r in res["policies"]}
    assert sum(p.startswith("fixed:") for p in policies) == 16
    for name in ("oracle_constant", "oracle_schedule", "lookup", "bandit", "greedy:reward", "greedy:probe"):
        assert name in policies
    assert res["best_schedule"] is not None and res["best_schedule"] in policies
    for r in res["policies"]:
        assert r["n"] > 0 and 0.0 <= r["test_mean"] <= 1.0
    # every scored pair is a held-out instance on a test seed
    for u in units(out):
        if u["policy"].startswith(("greedy:", "agent:")):
            assert u["instance"] == "few-labels" and u["seed"] in (100, 101)
    assert res["held_out_instances"] == ["few-labels"] and res["train_instances"] == ["clean"]
    assert {a["reward"] for a in res["reward_alignment"]} >= {"dev_loss_delta", "dev_metric_delta"}
    assert res["headroom"]["policy"] in policies


def test_every_policy_and_seed_is_a_tensorboard_run(quick_run, tmp_path):
    """One TensorBoard run per policy and reset seed (``tb/<policy>_<seed>/``, SB3's layout), each
    an evaluation at step 0 over the seed's episodes; ``--no-tensorboard`` writes none."""
    from agents.episode_log import run_name

    out, res = quick_run
    runs = tensorboard_runs(out / "tb")
    done = units(out)
    names = {run_name(f"random-{u['reward']}" if u["policy"].startswith("random:") else u["policy"], u["seed"])
             for u in done}
    assert set(runs) == names
    for name, scalars in runs.items():
        assert {"eval/mean_reward", "eval/mean_ep_length", "eval/probe_metric"} <= set(scalars), name
        assert {step for points in scalars.values() for step, _ in points} == {0}, name
    mask = next(u["policy"] for u in done if u["policy"].startswith("fixed:"))
    scored = [u for u in done if u["policy"] == mask and u["seed"] == 100]
    run = runs[run_name(mask, 100)]
    assert run["eval/test_metric"][0][1] == pytest.approx(np.mean([u["test"] for u in scored]), rel=1e-6)
    assert run["eval/mean_reward"][0][1] == pytest.approx(np.mean([u["return"] for u in scored]), rel=1e-5, abs=1e-7)
    bits = mask.split(":")[1]
    assert [run[f"eval_weights/{k}/phase_0"][0][1] for k in res["knowledge"]] == [float(b) for b in bits]
    assert "eval/dev_metric" in runs[run_name(mask, 0)] and "eval/test_metric" not in runs[run_name(mask, 0)]
    # every unit finished: a rerun only reads them back; with --no-tensorboard it writes no event file
    again = tmp_path / "again"
    shutil.copytree(out / "units", again / "units")
    assert headroom.main([*ARGS, "--out", str(again), "--no-tensorboard", "-q"]) == 0
    assert not list(again.rglob("events.out.tfevents.*"))


def test_best_fixed_is_the_best_dev_mean_on_the_selection_seeds_of_train_instances(quick_run):
    out, res = quick_run
    done = units(out)
    dev = {}
    for u in done:
        if u["policy"].startswith("fixed:") and u["seed"] == 0 and u["instance"] == "clean":
            dev[u["policy"][6:]] = u["dev"]
    assert res["best_fixed"] == max(dev, key=dev.get)
    oracle_dev = {u["policy"][6:]: u["dev"] for u in done
                  if u["policy"].startswith("fixed:") and u["seed"] == 0 and u["instance"] == "few-labels"}
    assert res["per_instance_oracle"]["few-labels"] == max(oracle_dev, key=oracle_dev.get)
    # the reference row and the paired differences
    ref = {(u["instance"], u["seed"]): u["test"] for u in done if u["policy"] == f"fixed:{res['best_fixed']}"
           and u["seed"] in (100, 101)}
    oracle = {(u["instance"], u["seed"]): u["test"] for u in done
              if u["policy"] == f"fixed:{res['per_instance_oracle']['few-labels']}" and u["seed"] in (100, 101)}
    row = next(r for r in res["policies"] if r["policy"] == "oracle_constant")
    expected = sum(oracle[k] - ref[k] for k in ref) / len(ref)
    assert row["diff_vs_best_fixed"]["mean"] == pytest.approx(expected)


def test_rerun_imports_an_old_units_jsonl_and_reruns_only_missing_units(quick_run, tmp_path):
    """A run folder from before the store (``units.jsonl``, its last line cut short by a kill) is
    imported once; a rerun runs no finished unit again, only a missing one and one whose file is
    cut short (the store renames whole files into place, so a kill never leaves one)."""
    out, res = quick_run
    records = units(out)
    old = tmp_path / "old"
    old.mkdir()
    lines = [json.dumps(r) for r in records]
    (old / "units.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    assert headroom.main([*ARGS, "--out", str(old)]) == 0
    assert not (old / "units.jsonl").exists() and (old / "units.jsonl.imported").exists()
    assert sorted(map(headroom.unit_key, units(old))) == sorted(map(headroom.unit_key, records))
    store = old / "units"
    cut, gone = sorted(store.glob("*.json"))[:2]
    cut.write_text(cut.read_text()[:20])
    gone.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in store.glob("*.json")}
    assert headroom.main([*ARGS, "--out", str(old)]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in store.glob("*.json")}
    assert after.keys() == before.keys() | {gone.name}
    assert {n for n in after if before.get(n) != after[n]} == {cut.name, gone.name}
    again = json.loads((old / "results.json").read_text())
    for a, b in zip(res["policies"], again["policies"]):
        assert a["policy"] == b["policy"] and a["test_mean"] == b["test_mean"]


def test_a_failing_unit_stops_the_run_and_keeps_the_chunks_that_finished(tmp_path):
    run = headroom.HeadroomRun(headroom.HeadroomSettings.quick(
        env_kwargs={"config": "quick", "instances": "tiny-headroom"}, out=str(tmp_path), batch=1))
    good = [{"policy": f"fixed:{m}", "instance": "clean", "seed": 0, "splits": ["dev"]}
            for m in ("0001", "0010", "0100", "1000")]  # one chunk (4 units), before the failing one
    with pytest.raises(RuntimeError, match="unknown policy 'nope:1'"):
        run.run_units([*good, {"policy": "nope:1", "instance": "clean", "seed": 0}], "a unit that raises")
    assert sorted(map(headroom.unit_key, units(tmp_path))) == sorted(map(headroom.unit_key, good))


def test_executor_flags_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        headroom.main([*ARGS, "--out", str(tmp_path / "x"), "--executor", "nope"])
    with pytest.raises(SystemExit):
        headroom.main([*ARGS, "--out", str(tmp_path / "x"), "--address", "auto"])
    assert "--address auto needs --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_input_is_a_clean_error(tmp_path, capsys):
    assert headroom.main(["--env", "kd_env/Nope-v0", "--out", str(tmp_path / "x")]) == 2
    assert "unknown env id" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        headroom.main(["--selection-seeds", "0-3", "--test-seeds", "3-5"])
    with pytest.raises(SystemExit):
        headroom.main(["--selection-seeds", "a-b"])


def test_two_stage_schedules_switch_inside_the_episode_and_a_one_phase_env_has_none(tmp_path):
    kwargs = {"config": "quick", "instances": "tiny-headroom"}
    many = headroom.HeadroomRun(headroom.HeadroomSettings.quick(env_kwargs=kwargs, out=str(tmp_path)))
    assert many.num_phases >= 2
    schedules = many.two_stage_schedules(["1100", "0100"])
    assert schedules == [f"schedule:1100>0100@{many.num_phases // 2}", f"schedule:0100>1100@{many.num_phases // 2}"]
    one = headroom.HeadroomRun(headroom.HeadroomSettings.quick(
        env="kd_env/DigitsKD-BetweenOracle-v0", out=str(tmp_path)))  # one decision per episode
    assert one.num_phases == 1 and one.two_stage_schedules(["00001", "10000"]) == []


def test_batched_episodes_score_what_single_env_episodes_score(quick_run, tmp_path):
    """The default runs open-loop episodes side by side on the batched env; one at a time on the
    single env (``--batch 1``) every unit ends with the same student (dev and test metric) and
    the same return up to float rounding."""
    out, _ = quick_run
    single = tmp_path / "single"
    assert headroom.main([*ARGS, "--out", str(single), "--batch", "1"]) == 0

    def by_key(folder):
        return {headroom.unit_key(u): u for u in units(folder)}

    batched, alone = by_key(out), by_key(single)
    assert batched.keys() == alone.keys()
    open_loop = [k for k in batched if k.startswith(headroom.OPEN_LOOP)]
    assert len(open_loop) > 20
    for key in open_loop:
        a, b = batched[key], alone[key]
        assert (a["dev"], a["test"], a["length"]) == (b["dev"], b["test"], b["length"]), key
        assert a["return"] == pytest.approx(b["return"], abs=1e-5), key


def test_batch_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        headroom.main([*ARGS, "--out", str(tmp_path / "x"), "--batch", "0"])
    assert "--batch must be >= 1" in capsys.readouterr().err


# ---- sources of gain -----------------------------------------------------------------------------


def test_sources_of_gain_rows_and_blocks_agree_with_the_units(quick_run):
    """The oracles choose on the held-out situation's selection seeds (dev only), the value of
    switching is their paired test difference, and the observable baselines with one train
    situation play its best mask."""
    out, res = quick_run
    done = units(out)
    rows = {r["policy"]: r for r in res["policies"]}
    assert {rows[p]["kind"] for p in ("oracle_constant", "oracle_schedule")} == {"oracle"}
    assert {rows[p]["kind"] for p in ("lookup", "bandit")} == {"baseline"}
    # every record of a finished episode carries its instance's observable situation
    vectors = {}
    for u in done:
        assert len(u["situation"]) == len(res["situation_features"]) == 7
        assert vectors.setdefault(u["instance"], u["situation"]) == u["situation"]
    assert vectors["clean"] != vectors["few-labels"]
    # oracle_schedule: the best by dev among the fixed masks and the held-out situation's own schedules
    dev = {u["policy"]: u["dev"] for u in done if u["instance"] == "few-labels" and u["seed"] == 0}
    own = [p for p in dev if p.startswith("schedule:")]
    assert own and all(u["test"] is None for u in done if u["policy"] in own and u["seed"] == 0)
    top = sorted((p for p in dev if p.startswith("fixed:")), key=lambda p: -dev[p])[:3]
    assert {p[9:].split("@")[0] for p in own} <= {f"{a[6:]}>{b[6:]}" for a in top for b in top}
    chosen = res["choices"]["oracle_schedule"]["few-labels"]
    assert dev[chosen] == max(dev.values())
    assert res["choices"]["oracle_constant"]["few-labels"] == max(top, key=dev.get)
    # value of switching = mean of the paired (oracle_schedule - oracle_constant) test differences
    test = {(u["policy"], u["seed"]): u["test"] for u in done if u["instance"] == "few-labels" and u["test"] is not None}
    const = res["choices"]["oracle_constant"]["few-labels"]
    diffs = [test[(chosen, s)] - test[(const, s)] for s in (100, 101)]
    sw = res["switching"]
    assert sw["mean"] == pytest.approx(sum(diffs) / 2) and sw["per_situation"]["few-labels"] == pytest.approx(sw["mean"])
    assert sw["situation_wins"] == int(sw["mean"] > 0) and sw["situations"] == 1 and sw["pairs"] == 2
    assert rows["oracle_schedule"]["test_mean"] - rows["oracle_constant"]["test_mean"] == pytest.approx(sw["mean"])
    # one selection seed: every resample is the full sample
    assert res["stability"]["per_situation"]["few-labels"] == {"oracle_constant": 1.0, "oracle_schedule": 1.0}
    # one train situation: its best mask is lookup's choice and the bandit's (only an intercept is left)
    assert res["lookup_neighbour"]["few-labels"] == "clean"
    assert res["choices"]["lookup"]["few-labels"] == res["choices"]["bandit"]["few-labels"] == f"fixed:{res['best_fixed']}"
    text = (out / "results.md").read_text()
    assert "## Sources of gain" in text and "value of switching" in text and "full exploration" in text


def test_a_run_whose_units_hold_no_situation_still_reports(quick_run, tmp_path):
    """A result folder written before the units recorded the situation loads, runs nothing again
    and reports the oracles without the observable baselines."""
    out, res = quick_run
    old = ResultStore(tmp_path / "units")
    for rec in units(out):
        old.write(file_key(headroom.unit_key(rec)), {k: v for k, v in rec.items() if k != "situation"})
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "units").glob("*.json")}
    assert headroom.main([*ARGS, "--out", str(tmp_path)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "units").glob("*.json")} == before
    again = json.loads((tmp_path / "results.json").read_text())
    policies = {r["policy"] for r in again["policies"]}
    assert {"oracle_constant", "oracle_schedule"} <= policies and not {"lookup", "bandit"} & policies
    assert again["switching"]["mean"] == pytest.approx(res["switching"]["mean"])
    assert "`lookup` and `bandit` are absent" in (tmp_path / "results.md").read_text()


def test_lookup_picks_the_mask_of_an_identical_train_situation():
    train = {"a": [0.0, 0.5, 0.0], "b": [1.0, 0.5, 0.1], "c": [0.5, 0.5, 0.05]}
    best = {"a": "fixed:1000", "b": "fixed:0100", "c": "fixed:1100"}
    for name, vector in train.items():
        assert sources.lookup(train, best, vector) == (name, best[name])
    # the middle column does not vary among the train situations: it is dropped, however far off
    assert sources.lookup(train, best, [0.95, 100.0, 0.1]) == ("b", "fixed:0100")
    # distances are in train-std units: raw, [0.2, ., 0.1] is nearest to a; scaled, column 2
    # (std 0.04) outweighs column 0 (std 0.41) and c is nearest
    query = [0.2, 0.5, 0.1]
    assert min(train, key=lambda n: np.linalg.norm(np.subtract(train[n], query))) == "a"
    assert sources.lookup(train, best, query) == ("c", "fixed:1100")


def test_the_bandit_separates_two_situations_by_one_feature():
    """Per mask a ridge regression of dev on the standardised situation: with one feature column
    telling two situations apart (the others constant), each gets the mask that is best on it."""
    train = {"low": [0.2, 0.7, 0.3], "high": [0.8, 0.7, 0.3]}
    dev = {("low", "fixed:10"): 0.9, ("low", "fixed:01"): 0.5, ("high", "fixed:10"): 0.4, ("high", "fixed:01"): 0.8}
    episodes = [(s, m, d + noise) for (s, m), d in dev.items() for noise in (-0.01, 0.01)]
    predict = sources.bandit(train, episodes)
    for name, best in (("low", "fixed:10"), ("high", "fixed:01")):
        pred = predict(train[name])
        assert max(pred, key=pred.get) == best
    pred = predict([0.3, 0.1, 0.9])  # near "low" on the only column that varies
    assert max(pred, key=pred.get) == "fixed:10"
    # the closed form: no penalty is least squares; the intercept is never shrunk
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 2)), rng.normal(size=20) + 3.0
    assert np.allclose(sources.ridge(x, y, 0.0), np.linalg.lstsq(np.column_stack([np.ones(20), x]), y, rcond=None)[0])
    assert sources.ridge(np.zeros((5, 1)), np.full(5, 3.0), 100.0)[0] == pytest.approx(3.0)


def test_select_and_choice_stability_on_a_synthetic_dev_table():
    fixed = ["fixed:10", "fixed:01"]
    table = {("t", "fixed:10"): {0: 0.9, 1: 0.9}, ("t", "fixed:01"): {0: 0.5, 1: 0.5},
             ("h", "fixed:10"): {0: 1.0, 1: 0.0, 2: 1.0}, ("h", "fixed:01"): {0: 0.0, 1: 0.9, 2: 0.0},
             ("h", "schedule:10>01@1"): {0: 1.0, 1: 0.95, 2: 0.1}}
    sel = sources.select(table, {}, ["t"], ["h"], fixed, {"h": ["schedule:10>01@1"]})
    assert sel["choices"] == {"oracle_constant": {"h": "fixed:10"}, "oracle_schedule": {"h": "schedule:10>01@1"}}
    # stability: the share of resamples of the seeds (same draws as below) that keep the full choice
    candidates = [*fixed, "schedule:10>01@1"]
    picks = np.random.default_rng(0).integers(0, 3, size=(sources.STABILITY_REPS, 3))
    same = [sources.choose({k: {j: v[int(s)] for j, s in enumerate(p)} for k, v in table.items() if k[0] == "h"},
                           "h", candidates) == "schedule:10>01@1" for p in picks]
    share = sel["stability"]["h"]["oracle_schedule"]
    assert share == pytest.approx(np.mean(same)) and 0.0 < share < 1.0
    assert sources.stability(table, "t", fixed) == 1.0
    # with situation vectors the observable baselines choose too
    both = sources.select(table, {"t": [0.1, 0.2], "h": [0.3, 0.2]}, ["t"], ["h"], fixed, {"h": []})
    assert both["choices"]["lookup"] == both["choices"]["bandit"] == {"h": "fixed:10"}
