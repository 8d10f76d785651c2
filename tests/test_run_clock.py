"""The whole-run clock of glue_ac (elapsed time and the estimate of what is left)."""

from __future__ import annotations

import pytest

from experiments.glue_ac.eta import RunClock


def test_estimate_counts_episodes_students_per_worker_and_teachers_left():
    clock = RunClock()
    clock.restart(2)
    clock.begin_situation(episodes=6, students=27, workers=2)
    assert clock.left() is None and clock.note() is None and "not yet estimated" in clock.line()
    clock.teacher_done(100.0, fine_tuned=True)
    for _ in range(6):
        clock.episode_done(10.0)
    clock.selector_done()
    # this situation: 27 students on 2 workers; the next: 6 episodes, 27 students and a teacher
    assert clock.left() == pytest.approx(10.0 * (27 / 2 + 6 + 27 / 2) + 100.0)
    clock.students_planned(20, 2)  # a resumed run: 7 students were done before
    for _ in range(20):
        clock.student_done(12.0)
    # the rate is the mean of the last 8 timed pieces of work: 12 s
    assert clock.left() == pytest.approx(12.0 * (6 + 27 / 2) + 100.0)
    clock.begin_situation(episodes=6, students=27, workers=2)
    assert clock.situations_left == 0 and clock.teacher_pending
    clock.teacher_done(3.0, fine_tuned=False)  # read from the cache: the estimate keeps the fine-tune's
    assert clock.left() == pytest.approx(12.0 * (6 + 27 / 2))
    assert clock.note().startswith("~") and clock.line().startswith("whole run: ")


def test_a_loaded_selector_leaves_no_episodes():
    clock = RunClock()
    clock.restart(1)
    clock.begin_situation(episodes=4, students=2, workers=1)
    clock.student_done(5.0)
    assert clock.left() == pytest.approx(5.0 * (4 + 1))
    clock.selector_done()
    assert clock.left() == pytest.approx(5.0 * 1)
