"""experiments.flags: flags generated from a config dataclass (names, types, defaults, help from
the attribute docstrings), one merge of defaults < YAML file < --set < flags, one validation, and
I/O only after it."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from experiments.flags import ConfigError, add_config_flags, build_config, field_docs, given_flags, parse_sets


@dataclass
class Toy:
    """A config for the tests."""

    steps: int = 10
    """optimizer steps per episode"""
    rate: float = 0.5
    """learning rate, 100% of it"""
    name: str | None = None
    """run name"""
    fast: bool = True
    """skip the slow checks"""
    mode: Literal["a", "b"] = "a"
    """which mode"""
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    """layer widths"""
    tags: tuple[str, ...] | None = None
    """labels"""
    colour: str = field(default="red", metadata={"choices": ("red", "blue"), "help": "the colour"})
    params: dict[str, Any] = field(default_factory=dict)
    """a mapping: YAML and --set only"""
    hidden: int = field(default=0, metadata={"flag": None})
    """no flag"""

    calls = 0  # validate() calls, on the class

    def validate(self) -> None:
        type(self).calls += 1
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_flags(p, Toy)
    return p


def _flags(*argv: str) -> dict[str, Any]:
    return given_flags(_parser().parse_args(list(argv)), [f.name for f in dataclasses.fields(Toy)])


def test_docstrings_are_the_help():
    docs = field_docs(Toy)
    assert docs["steps"] == "optimizer steps per episode" and docs["params"].startswith("a mapping")
    assert "colour" not in docs  # no docstring: its metadata's help
    text = " ".join(_parser().format_help().split())
    assert "--steps STEPS optimizer steps per episode (default: 10)" in text
    assert "learning rate, 100% of it (default: 0.5)" in text  # a '%' is not argparse's format
    assert "--colour {red,blue} the colour (default: red)" in text
    assert "--fast, --no-fast skip the slow checks (default: --fast)" in text
    assert "--params" not in text and "--hidden" not in text


def test_types_bools_lists_and_choices():
    assert _flags() == {}  # a flag not given is not a value: defaults stay the dataclass's
    assert _flags("--steps", "3", "--rate", "1e-3", "--name", "x") == {"steps": 3, "rate": 1e-3, "name": "x"}
    assert _flags("--no-fast") == {"fast": False} and _flags("--fast") == {"fast": True}
    assert _flags("--sizes", "4, 8,16", "--tags", "neg,pos") == {"sizes": [4, 8, 16], "tags": ["neg", "pos"]}
    assert _flags("--mode", "b") == {"mode": "b"}
    for bad in (["--mode", "c"], ["--steps", "x"], ["--colour", "green"], ["--sizes", "1,a"]):
        with pytest.raises(SystemExit):
            _flags(*bad)


def test_parse_sets_reads_yaml_values_and_dotted_keys():
    assert parse_sets(["steps=3", "rate=1.0e-3", "params.k=[1, 2]", "params.j=true"]) == \
        {"steps": 3, "rate": 1e-3, "params": {"k": [1, 2], "j": True}}
    for bad in ("steps", "=3", "a..b=1"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_sets([bad])


def test_precedence_defaults_file_sets_flags(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 5\nrate: 0.1\nname: file\nparams: {a: 1, b: 2}\n")
    built = build_config(Toy, file=cfg, sets=["rate=0.2", "name=set", "params.b=3"], flags={"name": "flag"})
    assert (built.steps, built.rate, built.name, built.params) == (5, 0.2, "flag", {"a": 1, "b": 3})
    assert built.sizes == [1, 2] and built.fast is True  # the defaults under everything
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['stepz'\]"):
        build_config(Toy, file=cfg, sets=["stepz=1"])


def test_validated_once_and_io_only_after_validation(tmp_path: Path, monkeypatch):
    seen: list[Any] = []
    Toy.calls = 0
    build_config(Toy, flags={"steps": 2}, io=[seen.append])
    assert Toy.calls == 1 and [c.steps for c in seen] == [2]
    Toy.calls = 0
    with pytest.raises(ValueError, match="steps must be positive"):
        build_config(Toy, flags={"steps": 0}, io=[seen.append])
    assert Toy.calls == 1 and len(seen) == 1  # a config that does not validate reads no file


def test_config_file_errors_name_the_keys(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file"):
        build_config(Toy, file=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        build_config(Toy, file=tmp_path)
    (tmp_path / "list.yaml").write_text("- steps\n")
    with pytest.raises(ConfigError, match=r"expected a mapping of keys \['steps'"):
        build_config(Toy, file=tmp_path / "list.yaml")


# ---- glue_ac: every flag declared once, validated once ------------------------------------------


def test_glue_ac_validates_once_and_reads_the_checkpoint_after(monkeypatch, tmp_path: Path):
    from experiments.glue_ac import ExperimentConfig, config_from_args
    from experiments.glue_ac import transfer

    calls = {"resolve": 0, "header": 0}
    resolve = ExperimentConfig._resolve

    def counted(self):
        calls["resolve"] += 1
        return resolve(self)

    monkeypatch.setattr(ExperimentConfig, "_resolve", counted)
    monkeypatch.setattr(transfer, "read_header", lambda path: calls.__setitem__("header", calls["header"] + 1))
    config = config_from_args(["--preset", "quick", "--out", str(tmp_path)])
    config.resolved(), config.resolved().resolved()
    assert calls["resolve"] == 1
    with pytest.raises(SystemExit, match="episodes must be an integer >= 0"):
        config_from_args(["--preset", "quick", "--episodes", "-1", "--transfer-checkpoint", str(tmp_path)])
    assert calls["header"] == 0  # validation failed: the checkpoint was never opened


def test_glue_ac_set_and_flags_over_the_config_file(tmp_path: Path):
    from experiments.glue_ac import config_from_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: quick\nepisodes: 7\ndistill: {total_steps: 20, lr: 0.01}\n")
    config = config_from_args(["--config", str(cfg), "--set", "distill.total_steps=30", "--set", "episodes=5",
                               "--episodes", "2", "--student-layers", "1"])
    assert config.episodes == 2
    assert config.distill == {"total_steps": 30, "lr": 0.01, "student_layers": 1}


def test_glue_ac_presets_name_kd_env_presets():
    from experiments.glue_ac import EXPERIMENT_PRESETS
    from kd_env import preset_names

    assert sorted(p.distill for p in EXPERIMENT_PRESETS.values()) == sorted(preset_names())
