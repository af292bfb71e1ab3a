"""What a judged submission gets back: a status per test, a score, an overall verdict.

The field names and status strings are fixed: tools read them. The rules, the ones
judges use:
- a run that failed (time, memory, a crash...) keeps the run's status; only a run that
  exited 0 is given to the checker;
- a fault of the sandbox, the checker or the interactor is ``judge_error``, never
  blamed on the solution;
- the overall verdict is ``compile_error``, else the first test in order that is not
  ``accepted`` (``skipped`` tests, after a failure with stop-on-failure, are passed
  over), else ``accepted``;
- without groups the tests share the points equally; a group scores its points times
  the lowest score of its tests (all must pass for all of it).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox.judge.checkers import Checked
from sandbox.judge.problem import Problem
from sandbox.models import Result, Status, Usage


class TestStatus(str, enum.Enum):
    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    PRESENTATION_ERROR = "presentation_error"
    PARTIAL = "partial"
    TIME_LIMIT = "time_limit"
    WALL_TIME_LIMIT = "wall_time_limit"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    RUNTIME_ERROR = "runtime_error"
    SIGNALED = "signaled"
    SYSCALL_VIOLATION = "syscall_violation"
    SKIPPED = "skipped"
    JUDGE_ERROR = "judge_error"


COMPILE_ERROR = "compile_error"
# The run statuses a test keeps as its own; OK goes on to the checker.
_RUN_STATUSES = {
    Status.TIME_LIMIT: TestStatus.TIME_LIMIT,
    Status.WALL_TIME_LIMIT: TestStatus.WALL_TIME_LIMIT,
    Status.MEMORY_LIMIT: TestStatus.MEMORY_LIMIT,
    Status.OUTPUT_LIMIT: TestStatus.OUTPUT_LIMIT,
    Status.RUNTIME_ERROR: TestStatus.RUNTIME_ERROR,
    Status.SIGNALED: TestStatus.SIGNALED,
    Status.SYSCALL_VIOLATION: TestStatus.SYSCALL_VIOLATION,
}


@dataclass
class TestReport:
    name: str
    status: TestStatus
    score: float = 0.0  # the fraction of the test's points, 0..1
    checker_message: str = ""
    exit_code: int | None = None
    signal_name: str | None = None
    usage: Usage | None = None
    error: str | None = None  # why a judge_error
    interactor: InteractorRun | None = None  # an interactive problem's other side


    @classmethod
    def of_run(cls, name: str, result: Result, checked: Checked | None) -> TestReport:
        """A test from its run's Result and, for a run that exited 0, the checker's word."""
        report = cls(name, TestStatus.JUDGE_ERROR, exit_code=result.exit_code, signal_name=result.signal_name,
                     usage=result.usage)
        if result.status in _RUN_STATUSES:
            report.status = _RUN_STATUSES[result.status]
        elif result.status is not Status.OK:
            report.error = f"the solution's sandbox failed: {result.status.value}: {result.error}"
        elif checked is not None:
            report.status = TestStatus(checked.status.value)
            report.score, report.checker_message = checked.score, checked.message
        return report

    @classmethod
    def skipped(cls, name: str) -> TestReport:
        return cls(name, TestStatus.SKIPPED)

    def to_json_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "score": self.score,
                "checker_message": self.checker_message, "exit_code": self.exit_code,
                "signal_name": self.signal_name, "usage": None if self.usage is None else asdict(self.usage),
                "error": self.error, "interactor": None if self.interactor is None else self.interactor.to_json_dict()}


@dataclass
class InteractorRun:
    """How the interactor's side of a test went, reported on its own: its usage is never
    the solution's (``checker_message`` holds what it said, as a checker's)."""

    status: Status
    exit_code: int | None
    signal_name: str | None
    usage: Usage
    error: str | None = None

    @classmethod
    def of(cls, result: Result) -> InteractorRun:
        return cls(result.status, result.exit_code, result.signal_name, result.usage, result.error)

    def to_json_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "exit_code": self.exit_code, "signal_name": self.signal_name,
                "usage": asdict(self.usage), "error": self.error}


@dataclass
class JudgeReport:
    verdict: str
    score: float
    max_score: float
    compile: Result | None
    tests: list[TestReport] = field(default_factory=list)

    @classmethod
    def of(cls, problem: Problem, compile_result: Result | None, tests: list[TestReport]) -> JudgeReport:
        if compile_result is not None and compile_result.status is not Status.OK:
            return cls(COMPILE_ERROR, 0.0, problem.max_score, compile_result, tests)
        return cls(overall_verdict(tests), score(problem, tests), problem.max_score, compile_result, tests)

    def to_json_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "score": self.score, "max_score": self.max_score,
                "compile": None if self.compile is None else self.compile.to_json_dict(),
                "tests": [t.to_json_dict() for t in self.tests]}


def overall_verdict(tests: list[TestReport]) -> str:
    failed = (t.status for t in tests if t.status not in (TestStatus.ACCEPTED, TestStatus.SKIPPED))
    return next(failed, TestStatus.ACCEPTED).value


def score(problem: Problem, tests: list[TestReport]) -> float:
    by_name = {t.name: t.score for t in tests}
    if problem.groups:
        total = sum(g.points * min(by_name.get(name, 0.0) for name in g.tests) for g in problem.groups)
    else:
        total = sum(by_name.get(t.name, 0.0) for t in problem.tests) * problem.max_score / len(problem.tests)
    return round(total, 6)
