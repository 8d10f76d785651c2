"""The runners' shared dialect: ``-q``/``-v`` as logging levels, console scripts beside
``python -m``, package data an installed copy finds, and one lint/type-check setup run by
``make test``."""

from __future__ import annotations

import configparser
import importlib
import logging
import subprocess
import zipfile
from pathlib import Path

import pytest

from experiments import logs
from kd_env import io
from tests.helpers import PYTHON, ROOT, subprocess_env

RUNNERS = {"experiments.benchmark.__main__": "main", "experiments.headroom.cli": "main",
           "experiments.glue_ac.cli": "main", "experiments.headroom.design": "main"}


@pytest.fixture(autouse=True)
def _restore_logging():
    """``setup_logging`` sets process-wide levels and the bars' switch: put them back."""
    levels = {name: logging.getLogger(name).level for name in logs.PACKAGES}
    yield
    for name, level in levels.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in [h for h in logger.handlers if isinstance(h, logs._StderrHandler)]:
            logger.removeHandler(handler)
    io.set_progress_bars(True)


def test_verbosity_flags_map_to_logging_levels():
    assert logs.level_of() == logging.INFO
    assert logs.level_of(quiet=1) == logging.WARNING and logs.level_of(quiet=2) == logging.ERROR
    assert logs.level_of(verbose=1) == logging.DEBUG == logs.level_of(verbose=3)
    for _ in range(2):  # again: the handler is replaced, never added twice
        assert logs.setup_logging(verbose=0, quiet=1) == logging.WARNING
    handlers = [h for h in logging.getLogger("experiments").handlers if isinstance(h, logs._StderrHandler)]
    assert len(handlers) == 1 and logging.getLogger("kd_env").level == logging.WARNING
    assert io._PROGRESS_BARS is False  # -q: no progress bars either
    logs.setup_logging(verbose=1)
    assert io._PROGRESS_BARS is True and logging.getLogger("agents").level == logging.DEBUG


@pytest.mark.parametrize("module", sorted(RUNNERS))
def test_every_runner_takes_plugin_quiet_and_verbose(module, capsys):
    main = getattr(importlib.import_module(module), RUNNERS[module])
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--plugin", "-q, --quiet", "-v, --verbose"):
        assert flag in text, (module, flag)


@pytest.mark.parametrize("module", ["experiments.benchmark.__main__", "experiments.headroom.cli",
                                    "experiments.glue_ac.cli"])
def test_every_runner_takes_no_tensorboard(module, capsys):
    from experiments.cli import TENSORBOARD_HELP

    with pytest.raises(SystemExit):
        getattr(importlib.import_module(module), RUNNERS[module])(["--help"])
    assert "--no-tensorboard" in capsys.readouterr().out and "stable-baselines3" in TENSORBOARD_HELP


def _bench(tmp_path: Path, *flags: str) -> None:
    from experiments.benchmark import main

    args = ["--name", "flags", "--out", str(tmp_path), "--algos", "random_hard", "--envs", "kd_env/QuickKD-v0",
            "--seeds", "0", "--eval-episodes", "1", "--workers", "1", "--no-plots", "--bootstrap-reps", "50",
            "--baseline", "random_hard", "--fresh", *flags]
    assert main(args) == 0


def test_quiet_silences_the_benchmark_progress_lines_and_verbose_keeps_them(tmp_path, capsys):
    _bench(tmp_path)
    default = capsys.readouterr().err
    assert "[1/1] random_hard kd_env/QuickKD-v0 seed 0: test accuracy" in default and "benchmark finished" in default
    _bench(tmp_path, "-q")
    assert capsys.readouterr().err.strip() == ""
    _bench(tmp_path, "-v")
    assert "[1/1] random_hard" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one or the other
        _bench(tmp_path, "-q", "-v")


def test_glue_ac_and_headroom_set_the_level_from_their_flags():
    from experiments.glue_ac.cli import config_from_args

    config_from_args(["-q", "--preset", "quick", "--situations", "none"])
    assert logging.getLogger("experiments").getEffectiveLevel() == logging.WARNING
    from experiments.headroom.cli import main

    with pytest.raises(SystemExit):  # a bad value after parsing: the level is set first
        main(["-qq", "--batch", "0"])
    assert logging.getLogger("experiments").getEffectiveLevel() == logging.ERROR


def _metadata() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg


def test_console_scripts_name_the_runners_mains():
    scripts = dict(line.split("=", 1) for line in _metadata()["options.entry_points"]["console_scripts"].split("\n")
                   if line.strip())
    scripts = {k.strip(): v.strip() for k, v in scripts.items()}
    assert set(scripts) == {"kd-benchmark", "kd-headroom", "kd-glue-ac"}
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target


def test_an_installed_copy_has_the_configs_the_headroom_file_and_the_scripts(tmp_path):
    """A wheel built from the package folders (no results/, no repository around it): the
    benchmark's configs and glue_ac's committed headroom measurement are package data, found
    through importlib.resources from any folder; the wheel declares the console scripts."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("kd_env", "agents", "experiments"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300,
                          env=subprocess_env(PYTHONPATH=""))
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # what pip install does for a pure-Python wheel
        archive.extractall(site)
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        text = archive.read(entry_points).decode()
    assert "kd-benchmark = experiments.benchmark.__main__:main" in text and "kd-glue-ac" in text
    script = ("from experiments.benchmark.settings import CONFIG_DIR\n"
              "from experiments.glue_ac.config import TEXT3_HEADROOM\n"
              "from experiments.glue_ac.situations import dev_headroom\n"
              "h = dev_headroom(TEXT3_HEADROOM, ['rt-labels5'])\n"
              "print(CONFIG_DIR, (CONFIG_DIR / 'ac.yml').is_file(), h['missing'], sorted(h['situations']))\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([PYTHON, "-c", script], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                         env=subprocess_env(PYTHONPATH=str(site)))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [str(site / "experiments" / "configs"), "True", "False", "['rt-labels5']"]


def test_the_packaged_headroom_file_is_the_committed_one():
    from experiments.glue_ac.config import TEXT3_HEADROOM

    packaged = ROOT / "experiments" / "glue_ac" / "data" / Path(TEXT3_HEADROOM).name
    assert packaged.read_bytes() == (ROOT / TEXT3_HEADROOM).read_bytes()


def test_one_lint_config_and_make_test_runs_ruff_and_mypy():
    cfg = _metadata()
    assert "flake8" not in cfg.sections()  # ruff.toml alone says the line length
    assert "line-length" in (ROOT / "ruff.toml").read_text(encoding="utf-8")
    recipe = (ROOT / "Makefile").read_text(encoding="utf-8").split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check" in recipe and "mypy" in recipe and "pytest" in recipe
    dev = cfg["options.extras_require"]["dev"]
    assert "ruff" in dev and "mypy" in dev
    assert "[mypy]" in (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
