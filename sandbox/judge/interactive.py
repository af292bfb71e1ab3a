"""Interactive problems: the problem's interactor and the solution run at once, each in
a sandbox of its own, wired both ways by pipes (a group: ``Stages.run_group``) - the
solution's stdout is the interactor's stdin and back.

The interactor is run as testlib runs one: ``interactor input.txt output.txt
answer.txt``, the test's input and answer as files in its own sandbox only (the
solution's holds its compiled program and nothing of the test), ``output.txt`` a file it
may write. It says the verdict by its exit code (``testlib.verdict``). A problem with a
custom checker as well has the interactor's ``output.txt`` collected and checked, as
``checker input output answer``, once the interactor has accepted: the checker's word is
the test's (a problem with a built-in checker kind leaves it all to the interactor).

Who is blamed (``decide``), in this order:
- the solution's own limits - time, memory, output, and its wall clock (a deadlock: both
  sides waiting to read ends there, and is ``wall_time_limit``, whatever the interactor
  said after, on reading EOF) - are its verdict;
- an interactor that failed (exit 3, another code, a crash, a limit) is ``judge_error``,
  never the solution's fault;
- a solution that exited 0, or was killed by SIGPIPE (it wrote after the interactor had
  ended: the interactor's verdict came first, provably), gets the interactor's verdict;
- any other failure of the solution (a crash, another signal, a syscall violation, a
  non-zero exit) is its own verdict. Which side ended first cannot be told reliably
  from two sandboxes' clocks, so only SIGPIPE is taken as proof that the interactor had
  already failed the solution; a solution that exits non-zero on reading EOF after a
  wrong answer is a ``runtime_error`` - exit 0 there to get the interactor's word.
An interactor killed by SIGPIPE met a solution that stopped reading before the dialogue
was over: ``wrong_answer``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import replace

from sandbox.judge.checkers import Checked, CheckStatus
from sandbox.judge.problem import Interactor, Problem, Test
from sandbox.judge.report import InteractorRun, TestReport, TestStatus
from sandbox.judge.testlib import JudgeFault, package_files, verdict, why
from sandbox.languages import (
    Compiled,
    Stages,
    compile_source,
    compiled_job,
    load_preset,
    read_source,
    run_stages_together,
)
from sandbox.models import WORKDIR, Blob, Collect, InputFile, Limits, Pipe, Result, Status
from sandbox.units import MAX_DURATION_MS

INTERACTOR, SOLUTION = 0, 1  # the group's members
BOTH_WAYS = [Pipe.of([SOLUTION, "stdout"], [INTERACTOR, "stdin"]), Pipe.of([INTERACTOR, "stdout"], [SOLUTION, "stdin"])]
_ARGS = ("input.txt", "output.txt", "answer.txt")  # testlib's order
# The interactor's limits that [interactor.limits] does not give: a wall clock past the
# solution's (a deadlocked solution is killed first, and then the interactor reads EOF).
_WALL_MARGIN_MS = 1000
_OUTPUT = "1M"
OUTPUT_FILE = f"{WORKDIR}/output.txt"  # what the interactor leaves for a checker
_OUTPUT_FILE_MAX = "64M"
_OWN_LIMITS = (Status.TIME_LIMIT, Status.MEMORY_LIMIT, Status.OUTPUT_LIMIT, Status.WALL_TIME_LIMIT)


class InteractiveTests:
    """Judges a compiled solution on one test at a time, with the interactor compiled
    here, once (with the package's other files, as a checker)."""

    def __init__(self, stages: Stages, problem: Problem, interactor: Interactor,
                 checker: Callable[[Test, bytes], Checked] | None = None) -> None:
        self.stages, self.problem, self.interactor, self.checker = stages, problem, interactor, checker
        self.fault: str | None = None
        try:
            files = package_files(problem, interactor.program)
        except JudgeFault as exc:
            self.fault = str(exc)
            return
        self.compiled = compile_source(stages, load_preset(interactor.program.lang),
                                       read_source(interactor.program.source), files=files)
        if self.compiled.status is not Status.OK:
            self.fault = f"the interactor did not compile: {why(self.compiled.result)}"

    def __call__(self, solution: Compiled, test: Test, args: Sequence[str] = ()) -> TestReport:
        if self.fault is not None:
            return TestReport(test.name, TestStatus.JUDGE_ERROR, error=self.fault)
        inputs = [InputFile(f"{WORKDIR}/input.txt", Blob(path=str(test.input))),
                  InputFile(f"{WORKDIR}/answer.txt", Blob(path=str(test.answer)))]
        interactor = compiled_job(self.stages, self.compiled, args=_ARGS, inputs=inputs, limits=self._limits(test))
        if self.checker is not None:
            interactor = replace(interactor, collect=[Collect(OUTPUT_FILE, max=_OUTPUT_FILE_MAX)])
        jobs = [interactor, compiled_job(self.stages, solution, limits=self.problem.limits, args=args)]
        results = run_stages_together(self.stages, jobs, BOTH_WAYS)
        report = decide(test.name, results[SOLUTION], results[INTERACTOR])
        if self.checker is None or report.status is not TestStatus.ACCEPTED:
            return report
        return self._check(report, test, results[INTERACTOR], self.checker)

    @staticmethod
    def _check(report: TestReport, test: Test, interactor: Result, checker: Callable[[Test, bytes], Checked],
               ) -> TestReport:
        """The checker's word on what the interactor left in output.txt."""
        output = interactor.files.get(OUTPUT_FILE)
        try:
            if output is None:
                detail = interactor.file_errors.get(OUTPUT_FILE, "not collected")
                raise JudgeFault(f"the interactor left no output.txt for the checker ({detail})")
            checked = checker(test, output)
        except JudgeFault as exc:
            report.status, report.score, report.error = TestStatus.JUDGE_ERROR, 0.0, str(exc)
            return report
        report.status, report.score = TestStatus(checked.status.value), checked.score
        report.checker_message = checked.message
        return report

    def _limits(self, test: Test) -> Limits:
        """[interactor.limits] where given; else a wall clock past the solution's (up to
        the longest a limit may be), room for its two files, and a modest output cap."""
        room = test.input.stat().st_size + test.answer.stat().st_size + (16 << 20)
        wall_ms = min(self.problem.limits.wall_time_ms + _WALL_MARGIN_MS, MAX_DURATION_MS)
        defaults = {"wall_time": f"{wall_ms}ms", "disk": room, "output": _OUTPUT}
        return Limits(**{**defaults, **self.interactor.limits.given_values()})


def decide(name: str, solution: Result, interactor: Result) -> TestReport:
    """The test's report from both sides' Results (the rules in the module's doc)."""
    report = TestReport.of_run(name, solution, None)
    report.interactor = InteractorRun.of(interactor)
    if solution.status in _OWN_LIMITS or solution.status is Status.INTERNAL_ERROR:
        return report  # (of_run: the limit, or judge_error for the solution's sandbox failing)
    if _killed_by(interactor, signal.SIGPIPE):
        said = Checked(CheckStatus.WRONG_ANSWER, 0.0, "the solution stopped reading before the interactor was done")
    else:
        try:
            said = verdict(interactor, "the interactor")
        except JudgeFault as exc:
            report.status, report.error = TestStatus.JUDGE_ERROR, str(exc)
            return report
    if solution.status is Status.OK or _killed_by(solution, signal.SIGPIPE):
        report.status, report.score, report.checker_message = TestStatus(said.status.value), said.score, said.message
        report.error = None
    return report


def _killed_by(result: Result, number: int) -> bool:
    return result.status is Status.SIGNALED and result.signal == number
