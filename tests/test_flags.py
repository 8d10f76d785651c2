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


# ---- benchmark and headroom: their flags are their config's fields ------------------------------


@dataclass
class Repeated:
    sets: list[str] = field(default_factory=list, metadata={"flag": "--set", "repeat": True, "metavar": "K=V"})
    """one setting (repeatable)"""
    pairs: dict[str, Any] = field(default_factory=dict, metadata={"repeat": True, "type": lambda t: tuple(t.split("="))})
    """a mapping one pair a flag"""
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"note": "the shared forms"})
    """training seeds"""


def test_repeatable_flags_and_shared_notes():
    p = argparse.ArgumentParser()
    assert add_config_flags(p, Repeated) == ["sets", "pairs", "seeds"]
    given = given_flags(p.parse_args(["--set", "a=1,2", "--set", "b=3", "--pairs", "x=1"]), ["sets", "pairs", "seeds"])
    assert given == {"sets": ["a=1,2", "b=3"], "pairs": [("x", "1")]}  # no comma split: one item a use
    assert given_flags(p.parse_args([]), ["sets", "pairs"]) == {}
    text = " ".join(p.format_help().split())
    assert "--set K=V one setting (repeatable)" in text
    assert "training seeds: the shared forms (default: 0)" in text


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


def test_every_benchmark_config_field_is_a_flag_but_the_shared_ones(capsys):
    from experiments.benchmark import BenchmarkConfig, parse_args
    from experiments.benchmark.__main__ import build_parser

    shared = {"tensorboard", "plugins", "verbose"}  # --no-tensorboard, --plugin, -q/-v: experiments.cli, logs
    fields = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    assert fields - shared <= _dests(build_parser())
    text = " ".join(build_parser().format_help().split())
    for expected in ("--name NAME run folder: <out>/benchmark-<name> (default: default)",
                     "--set ALGO.KEY=VALUE override a config value", "--no-plots", "--eval-split {test,dev,held-out-dev}",
                     "--bootstrap-reps BOOTSTRAP_REPS", "(default: 2000)", "--fresh, --no-fresh rerun finished cells too",
                     "--algos A,B,...", "(default: ac,ac_q,ppo,dqn,vanilla_kd,dynamic_kd,random_hard)"):
        assert expected in text, expected
    config = parse_args(["--algos", "ac, ppo", "--set", "ac.episodes=3", "--set", "ppo.env_kwargs.x=[1, 2]",
                         "--no-plots", "--fresh", "--plugin", "a.py", "--plugin", "b.py", "--no-tensorboard"])
    assert config.algos == ["ac", "ppo"] and config.overrides == ["ac.episodes=3", "ppo.env_kwargs.x=[1, 2]"]
    assert (config.plots, config.fresh, config.tensorboard, config.plugins) == (False, True, False, ["a.py", "b.py"])
    assert parse_args([]) == BenchmarkConfig()  # no flag: the dataclass's defaults


def test_benchmark_validates_once_before_the_plugins_load(monkeypatch, tmp_path: Path, capsys):
    from experiments import benchmark
    from experiments.benchmark import BenchmarkConfig, ConfigError, run_benchmark
    from experiments.benchmark import grid, runner

    calls = {"checks": 0, "plugins": 0}
    check = grid.check_executor

    def counted(*args):
        calls["checks"] += 1
        return check(*args)

    def plugins(paths):
        calls["plugins"] += 1
        raise FileNotFoundError("plugin 'x.py' is not a .py file")

    monkeypatch.setattr(grid, "check_executor", counted)
    monkeypatch.setattr(runner, "load_plugins", plugins)
    assert benchmark.main(["--out", str(tmp_path), "--eval-every", "0", "--plugin", "x.py"]) == 2
    assert "eval_every must be a positive integer" in capsys.readouterr().err
    assert calls == {"checks": 1, "plugins": 0}  # a bad value: no plug-in file was opened
    assert benchmark.main(["--out", str(tmp_path), "--plugin", "x.py"]) == 2
    assert "plugin 'x.py'" in capsys.readouterr().err
    assert calls == {"checks": 2, "plugins": 1}  # validated by the command line, not again by run_benchmark
    with pytest.raises(ConfigError, match="confidence"):
        run_benchmark(BenchmarkConfig(out=str(tmp_path), confidence=1.5))
    with pytest.raises(ConfigError, match="bootstrap_reps"):
        benchmark.parse_args(["--bootstrap-reps", "0"])
    assert not any(tmp_path.iterdir())


def test_every_headroom_setting_is_a_flag_and_checked_before_the_plugins_load(monkeypatch, tmp_path: Path, capsys):
    from experiments.headroom import cli
    from experiments.headroom.settings import HeadroomSettings

    shared = {"tensorboard", "plugins", "switch_points"}  # switch_points: a tuple of fractions, the code's
    assert {f.name for f in dataclasses.fields(HeadroomSettings)} - shared <= _dests(cli.build_parser())
    text = " ".join(cli.build_parser().format_help().split())
    for expected in ("--env-kwarg KEY=VALUE extra gym.make keyword (JSON value), repeatable",
                     "--selection-seeds SEEDS reset seeds on which every choice is made (dev metric): one seed '7'",
                     "--batch BATCH", "(default: 32)", "--quick", "selection_seeds [0, 1]", "--plugin",
                     "--no-tensorboard"):
        assert expected in text, expected
    loaded: list[Any] = []
    monkeypatch.setattr(cli, "load_plugins", loaded.append)
    with pytest.raises(SystemExit):
        cli.main(["--batch", "0", "--plugin", "x.py"])
    assert "--batch must be >= 1" in capsys.readouterr().err and loaded == []
    seen: list[HeadroomSettings] = []

    class Stop(Exception):
        pass

    def run(settings):
        seen.append(settings)
        raise Stop

    monkeypatch.setattr(cli, "HeadroomRun", run)
    with pytest.raises(Stop):
        cli.main(["--quick", "--env-kwarg", "total_steps=60", "--env-kwarg", "config=quick", "--rewards",
                  "dev_metric_delta", "--greedy-seeds", "2", "--plugin", "x.py", "--out", str(tmp_path)])
    s = seen[0]
    assert s.env_kwargs == {"total_steps": 60, "config": "quick"} and s.rewards == ("dev_metric_delta",)
    assert (s.greedy_seeds, s.selection_seeds, s.random_episodes) == (2, [0, 1], 12)  # --quick's, then the flags
    assert loaded == [["x.py"]] and s.plugins == ["x.py"]
