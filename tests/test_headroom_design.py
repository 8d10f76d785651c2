"""``python -m experiments.headroom.design``: the value of switching on a set's train situations."""

from __future__ import annotations

import json

import pytest

import kd_env
from experiments.headroom import design
from kd_env import Instance, InstanceSet

SET = InstanceSet(name="design-test", base="quick",
                  instances=[Instance("clean", {}), Instance("noisy", {"label_noise": 0.4, "label_fraction": 0.3}),
                             Instance("held", {"label_fraction": 0.5})],
                  held_out=["held"], description="quick situations for the design test")
if SET.name not in kd_env.instance_set_names():
    kd_env.register_instance_set(SET)


def test_design_measures_train_situations_only_and_its_value_is_the_check_difference(tmp_path, capsys):
    out = tmp_path / "design.json"
    assert design.main(["--instances", SET.name, "--choice-seeds", "0,1", "--check-seeds", "5,6", "--top", "2",
                        "--switches", "2", "--batch", "8", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["instance"] for r in res["rows"]] == ["clean", "noisy"]  # the held-out one is never run
    for r in res["rows"]:
        # the switching choice is a constant or a schedule, and never worse than the constant on the
        # seeds it was chosen on
        assert r["switching"] == r["constant"] or r["switching"].startswith("schedule:")
        assert r["choice_dev"]["switching"] >= r["choice_dev"]["constant"]
        assert r["value"] == pytest.approx(r["check_switching"] - r["check_constant"])
        assert r["value"] == pytest.approx(sum(r["per_seed_value"]) / 2)
    assert res["value_of_switching"] == pytest.approx(sum(r["value"] for r in res["rows"]) / 2)
    assert res["low"] <= res["value_of_switching"] <= res["high"]
    assert "value of switching over 2 situations" in capsys.readouterr().out


def test_design_refuses_overlapping_seeds_and_unknown_sets():
    with pytest.raises(SystemExit):
        design.main(["--instances", SET.name, "--choice-seeds", "0,1", "--check-seeds", "1,2"])
    with pytest.raises(SystemExit):
        design.main(["--instances", "no-such-set"])


def test_design_takes_masks_situations_and_references(tmp_path, capsys):
    out = tmp_path / "design.json"
    assert design.main(["--instances", SET.name, "--situations", "held,noisy", "--masks", "1100,0100,1111",
                        "--choice-seeds", "0,1", "--check-seeds", "5,6", "--top", "2", "--switches", "2",
                        "--reference", "fixed:1000", "--reference", "agent:dynamic_kd", "--batch", "8",
                        "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["instance"] for r in res["rows"]] == ["held", "noisy"]  # named ones, held-out included
    for r in res["rows"]:
        fixed = {p for p in r["choice_table"] if p.startswith("fixed:")}
        assert fixed == {"fixed:1100", "fixed:0100", "fixed:1111"}  # only the masks asked for
        assert r["constant"] in fixed
        for ref in ("fixed:1000", "agent:dynamic_kd"):
            gains = r["per_seed_gain"][ref]
            assert len(gains["constant"]) == 2
            assert sum(gains["switching"]) / 2 == pytest.approx(r["check"][r["switching"]] - r["check"][ref])
    for ref in ("fixed:1000", "agent:dynamic_kd"):
        g = res["gain_over"][ref]["switching"]
        assert g["low"] <= g["mean"] <= g["high"]
    assert "oracle_switching - agent:dynamic_kd" in capsys.readouterr().out


def test_design_rejects_bad_masks_references_and_situations():
    for bad in (["--masks", "11x0"], ["--reference", "vanilla_kd"], ["--situations", "nowhere"]):
        with pytest.raises(SystemExit):
            design.main(["--instances", SET.name, *bad])
