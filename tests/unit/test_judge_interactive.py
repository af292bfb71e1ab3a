"""Who is blamed on an interactive test (``interactive.decide``): every rule on the two
sides' Results, including the ones a real run reaches only by a broken interactor."""

from __future__ import annotations

import signal

import pytest

from sandbox.judge.interactive import decide
from sandbox.models import Result, Status, Usage


def ran(status: Status, exit_code: int | None = None, sig: int | None = None, stderr: bytes = b"") -> Result:
    return Result(status, exit_code=exit_code, signal=sig, stderr=stderr, usage=Usage(cpu_ms=1.0, wall_ms=2.0))


OK = ran(Status.OK, 0)
SAID_WRONG = ran(Status.RUNTIME_ERROR, 1, stderr=b"too many guesses")
SAID_RIGHT = ran(Status.OK, 0, stderr=b"found")


@pytest.mark.parametrize(("solution", "interactor", "status"), [
    (OK, SAID_RIGHT, "accepted"),
    (OK, SAID_WRONG, "wrong_answer"),
    (OK, ran(Status.RUNTIME_ERROR, 2), "presentation_error"),
    (ran(Status.SIGNALED, sig=signal.SIGPIPE), SAID_WRONG, "wrong_answer"),  # wrote after the interactor ended
    (OK, ran(Status.SIGNALED, sig=signal.SIGPIPE), "wrong_answer"),  # stopped reading too soon
    (ran(Status.WALL_TIME_LIMIT), SAID_WRONG, "wall_time_limit"),  # a deadlock: the interactor read EOF after
    (ran(Status.TIME_LIMIT), SAID_WRONG, "time_limit"),
    (ran(Status.MEMORY_LIMIT), ran(Status.SIGNALED, sig=signal.SIGSEGV), "memory_limit"),
    (ran(Status.SIGNALED, sig=signal.SIGSEGV), SAID_WRONG, "signaled"),
    (ran(Status.RUNTIME_ERROR, 1), SAID_WRONG, "runtime_error"),
    (ran(Status.SYSCALL_VIOLATION, sig=signal.SIGSYS), SAID_WRONG, "syscall_violation"),
    (OK, ran(Status.RUNTIME_ERROR, 3, stderr=b"bad input"), "judge_error"),  # testlib's fail
    (OK, ran(Status.SIGNALED, sig=signal.SIGSEGV), "judge_error"),
    (OK, ran(Status.TIME_LIMIT), "judge_error"),
    (ran(Status.RUNTIME_ERROR, 1), ran(Status.WALL_TIME_LIMIT), "judge_error"),  # never the solution's fault
    (ran(Status.INTERNAL_ERROR), SAID_RIGHT, "judge_error"),
])
def test_who_is_blamed(solution: Result, interactor: Result, status: str) -> None:
    report = decide("1", solution, interactor)
    assert report.status.value == status, report
    assert report.interactor is not None and report.interactor.status is interactor.status
    assert report.usage is solution.usage and report.interactor.usage is interactor.usage
    assert (report.error is not None) == (status == "judge_error")


def test_the_interactors_message_and_score() -> None:
    partial = ran(Status.RUNTIME_ERROR, 7, stderr=b"points 0.25\nclose")
    report = decide("1", OK, partial)
    assert (report.status.value, report.score, report.checker_message) == ("partial", 0.25, "points 0.25\nclose")
    report = decide("1", OK, SAID_WRONG)
    assert (report.score, report.checker_message) == (0.0, "too many guesses")
    assert "the interactor failed (fail)" in str(decide("1", OK, ran(Status.RUNTIME_ERROR, 3)).error)
