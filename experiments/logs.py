"""The runners' logging: one place that turns ``-q``/``-v`` into :mod:`logging` levels.

Every runner (``benchmark``, ``headroom``, ``glue_ac``) adds the flags with
:func:`add_verbosity_flags` and calls :func:`setup_logging` first thing.  Progress and status
lines go through the ``experiments`` logger (:func:`get_logger`) at ``INFO``; results (tables,
summaries) are printed to stdout as before, and errors stay one ``error: ...`` line on stderr.

==========  =========  ==========================================================
flags       level      what is shown
==========  =========  ==========================================================
``-qq``     ERROR      errors only
``-q``      WARNING    warnings and errors; no progress lines, no progress bars
(none)      INFO       progress and status lines (the default)
``-v``      DEBUG      also debug lines (of ``experiments``, ``kd_env`` and ``agents``)
==========  =========  ==========================================================

Log lines go to the *current* ``sys.stderr`` as plain messages (so a line reads as it did when
it was a ``print``).  A program that embeds the runners and configures :mod:`logging` itself
need not call :func:`setup_logging`: the loggers propagate to the root logger as usual.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["LOGGER_NAME", "PACKAGES", "add_verbosity_flags", "get_logger", "level_of", "setup_logging"]

#: the runners' logger (and the parent of ``experiments.<module>`` loggers)
LOGGER_NAME = "experiments"
#: the loggers whose level ``-q``/``-v`` set
PACKAGES = ("experiments", "kd_env", "agents")


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``experiments`` logger, or its child ``experiments.<name>``."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` and ``-q/--quiet`` (each repeatable) on ``parser``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="more output: debug lines (default: progress and status lines)")
    group.add_argument("-q", "--quiet", action="count", default=0,
                       help="less output: -q hides progress lines and bars (warnings and errors stay), -qq shows "
                            "errors only")


def level_of(verbose: int = 0, quiet: int = 0) -> int:
    """The :mod:`logging` level for ``-v`` x ``verbose`` and ``-q`` x ``quiet``."""
    score = int(verbose) - int(quiet)
    if score >= 1:
        return logging.DEBUG
    if score == 0:
        return logging.INFO
    return logging.WARNING if score == -1 else logging.ERROR


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record is written (so that a
    redirected or captured stderr gets the lines)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]  # logging.StreamHandler declares a plain attribute
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # the base class assigns it; the property ignores it
        pass


def setup_logging(args: argparse.Namespace | None = None, *, verbose: int = 0, quiet: int = 0) -> int:
    """Set the level of :data:`PACKAGES`' loggers from ``-v``/``-q`` (``args``, or the counts
    given) and give the ``experiments`` logger one plain stderr handler (calling this again
    replaces it, it never adds a second).  ``-q`` also turns :func:`kd_env.io.progress_bar`'s
    bars off.  Returns the level."""
    if args is not None:
        verbose, quiet = getattr(args, "verbose", 0) or 0, getattr(args, "quiet", 0) or 0
    level = level_of(verbose, quiet)
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(handler)
        if name == LOGGER_NAME or level <= logging.DEBUG:
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s" if name == LOGGER_NAME
                                                   else "%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
    from kd_env import io

    io.set_progress_bars(level <= logging.INFO)
    return level
