"""kd_env.checks: the one type checker of DistillConfig, the experiments' config files and agent
hyperparameters; and what agents declare at registration."""

from __future__ import annotations

from typing import Any, Literal, Optional

import pytest

from kd_env.checks import check_known, check_types, describe, matches, yaml_kinds


@pytest.mark.parametrize("value, annotation, fits", [
    (3, int, True), (True, int, False), (3.0, int, False),          # an integer is never a bool
    (3, float, True), (2.5, float, True), (False, float, False),     # a float field accepts an integer
    ("1e-3", float, False), (None, float, False),
    (None, Optional[int], True), (4, int | None, True), ("4", int | None, False),
    ("mask", Literal["mask", "weights"], True), ("soft", Literal["mask", "weights"], False),
    ([64, 64], tuple[int, ...], True), ((64,), tuple[int, ...], True), ([64, "a"], tuple[int, ...], False),
    ("ab", tuple[str, ...], False),                                  # a string is not a list of strings
    ([4, "steps"], tuple[int, str], True), ([4], tuple[int, str], False),
    ({"a": 1}, dict[str, Any], True), ({1: 1}, dict[str, Any], False), ([1], dict[str, Any], False),
    (print, Any, True), (print, float | None, False),
])
def test_matches_config_file_rules(value, annotation, fits):
    assert matches(value, annotation) is fits


def test_descriptions_name_what_fits():
    assert describe(int | None) == "an integer or None"
    assert describe(tuple[int, ...]) == "a list of integers"
    assert describe(Literal["mask", "weights"]) == "one of ['mask', 'weights']"
    assert yaml_kinds(tuple[int, ...]) == "list" and yaml_kinds(Optional[float]) == "float or null"


def test_errors_name_the_key_the_value_and_what_is_valid():
    with pytest.raises(ValueError, match=r"^config\.seed must be an integer, got 'x' \(str\)$"):
        check_types({"seed": "x", "other": object()}, {"seed": int}, "config.")
    with pytest.raises(ValueError, match=r"write 1\.0e-3"):
        check_types({"lr": "1e-3"}, {"lr": float})
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['lrr'\]; valid: \['gamma', 'lr'\]"):
        check_known({"lrr": 1}, {"lr": float, "gamma": float}, "where", error=KeyError)

    class Settings:
        seed = True

    with pytest.raises(ValueError, match="seed must be an integer, got True"):
        check_types(Settings(), {"seed": int})  # attributes of an object (a dataclass) too


def test_distill_config_uses_the_checker():
    from kd_env import DistillConfig

    with pytest.raises(ValueError, match=r"config\.label_noise must be a number, got True"):
        DistillConfig(label_noise=True)
    with pytest.raises(ValueError, match=r"config\.teacher_hidden must be a list of integers"):
        DistillConfig(teacher_hidden=(32, "64"))
    with pytest.raises(ValueError, match=r"config\.total_steps must be a positive integer"):
        DistillConfig(total_steps="10")


def test_agents_declare_their_hyperparameters_where_registered(monkeypatch):
    from agents import base
    from agents.ac_config import ActorCriticConfig
    from agents.base import agent_hyperparameters, register_agent

    # the test agent below stays out of the real registry
    monkeypatch.setattr(base, "AGENT_REGISTRY", base.AGENT_REGISTRY.copy())

    ac = agent_hyperparameters("ac")
    assert ac == agent_hyperparameters("ac_q") and "critic" not in ac
    assert ac["lr"] is float and ac["hidden_sizes"] == tuple[int, ...] and ac["log_dir"] == str | None
    assert set(ac) == {*ActorCriticConfig.field_names(), "log_dir", "tensorboard"} - {"critic"}
    ppo = agent_hyperparameters("ppo")
    assert {"n_steps", "learning_rate", "policy", "action_noise_std"} <= set(ppo) and "env" not in ppo
    assert matches(1.0e-3, ppo["learning_rate"]) and not matches("fast", ppo["learning_rate"])
    assert agent_hyperparameters("fixed:1010") is None  # declares nothing: left to the agent

    @register_agent("test_declared", hyperparameters={"p": float})
    def make(env, **hp):  # pragma: no cover - never built
        raise AssertionError

    assert agent_hyperparameters("test_declared") == {"p": float}
