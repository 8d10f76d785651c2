"""The whole invocation's clock: elapsed time and an estimate of what is left, over every
situation and stage of a ``glue_ac`` run (``make demo`` runs two situations of four stages each).

A selector training episode and a student cost about the same (one distillation episode of the
same student; a student adds one test evaluation), so the estimate counts the work left in
*episodes*: the selector episodes left, plus the students left divided by the workers that run
them at once, times the seconds one episode has taken so far in this invocation.  A teacher still
to fine-tune in a later situation is counted at the measured seconds of this invocation's last
fine-tune (a teacher read from the cache costs seconds; the estimate then runs high, and says so
by falling at the next stage).  Before the first episode has been timed there is no estimate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..logs import get_logger
from .timing import clock

LOGGER = get_logger("glue_ac")

__all__ = ["RunClock", "RUN_CLOCK"]


@dataclass
class RunClock:
    """What is left of one invocation; the pipeline reports each finished piece of work."""

    situations_left: int = 1
    """situations not yet started (the current one not counted)"""
    episodes: int = 0
    """selector episodes of one situation"""
    students: int = 0
    """students of one situation"""
    workers: int = 1
    start: float = field(default_factory=time.perf_counter)
    episode_seconds: list[float] = field(default_factory=list)
    """wall seconds of each selector episode and each student (scaled to one worker) so far"""
    teacher_seconds: float | None = None
    episodes_left: int = 0
    students_left: int = 0
    teacher_pending: bool = False

    def restart(self, situations: int) -> None:
        """A new invocation of ``situations`` situations: the clock starts now."""
        fresh = RunClock(situations_left=int(situations))
        self.__dict__.update(fresh.__dict__)

    def begin_situation(self, episodes: int, students: int, workers: int) -> None:
        """A situation starts: its selector episodes and students are the work of this one and,
        as an estimate, of each situation still to come."""
        self.episodes, self.students, self.workers = int(episodes), int(students), max(1, int(workers))
        self.episodes_left, self.students_left = self.episodes, self.students
        self.situations_left = max(0, self.situations_left - 1)
        self.teacher_pending = True

    def teacher_done(self, seconds: float, fine_tuned: bool) -> None:
        self.teacher_pending = False
        if fine_tuned:
            self.teacher_seconds = float(seconds)

    def episode_done(self, seconds: float) -> None:
        self.episodes_left = max(0, self.episodes_left - 1)
        self.episode_seconds.append(float(seconds))

    def selector_done(self) -> None:
        """The selector is trained (or was loaded: a resumed run's episodes are not run again)."""
        self.episodes_left = 0

    def students_planned(self, count: int, workers: int) -> None:
        """The students this situation still has to distil (a resumed run has fewer)."""
        self.students_left, self.workers = int(count), max(1, int(workers))

    def student_done(self, seconds: float) -> None:
        self.students_left = max(0, self.students_left - 1)
        self.episode_seconds.append(float(seconds))

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float | None:
        """Estimated seconds left, or ``None`` before any episode has been timed."""
        if not self.episode_seconds:
            return None
        recent = self.episode_seconds[-8:]
        per_episode = sum(recent) / len(recent)
        episodes = self.episodes_left + self.situations_left * self.episodes
        students = self.students_left + self.situations_left * self.students
        seconds = per_episode * (episodes + students / self.workers)
        teachers = self.situations_left + int(self.teacher_pending)
        if self.teacher_seconds is not None:
            seconds += teachers * self.teacher_seconds
        return seconds

    def line(self) -> str:
        """``whole run: 4:10 elapsed, about 5:30 left`` (or ``left: not yet estimated``)."""
        left = self.left()
        estimate = "left: not yet estimated" if left is None or not math.isfinite(left) else f"about {clock(left)} left"
        return f"whole run: {clock(self.elapsed())} elapsed, {estimate}"

    def note(self) -> str | None:
        """The estimate alone for a progress bar (``~5:30 left``), or ``None`` before one exists."""
        left = self.left()
        return None if left is None or not math.isfinite(left) else f"~{clock(left)} left"

    def report(self) -> None:
        LOGGER.info(f"  ({self.line()})")


#: the clock of this process's invocation (``run_situations`` restarts it for its situations; a
#: lone ``run_experiment`` for its one)
RUN_CLOCK = RunClock()
