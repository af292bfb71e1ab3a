"""Judge one submission against a problem package: compile once, run every test in a
sandbox of its own, check each output, report.

What each sandbox holds is the point: the solution's gets its compiled program and the
test's input as stdin - never the answer files, the checker or another test; a custom
checker gets the input, the solution's output and the answer as files, in a sandbox of
its own with its own limits (problem setters make mistakes, and packages get shared).
The jobs go through ``Stages``: a Runner in this process, or a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import JobError
from sandbox.judge.checkers import Checked, CheckerKind, check
from sandbox.judge.interactive import InteractiveTests
from sandbox.judge.problem import Problem, Program, Test
from sandbox.judge.report import JudgeReport, TestReport, TestStatus
from sandbox.judge.testlib import JudgeFault, package_files, verdict, why
from sandbox.languages import Compiled, Stages, compile_source, load_preset, read_source, run_compiled
from sandbox.models import WORKDIR, Blob, InputFile, Limits, Status

_CHECKER_ARGS = ("input.txt", "output.txt", "answer.txt")  # testlib's order
_CHECKER_OUTPUT = "1M"


@dataclass(frozen=True)
class Submission:
    """What is judged: the source in a language, with the compiler options (from the
    preset's allow-list) and the program arguments it was submitted with; and the image
    it is compiled and run on (None: the language image; else an image built on it with
    what a course's programs need - ``sandbox build``)."""

    lang: str
    source: bytes
    compile_options: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    image: str | None = None
    # Its runs in the interpreter mode (python3: a clone of a waiting python3 with these
    # modules imported, a sandbox of its own per test); None: a fresh process each.
    interpreter: tuple[str, ...] | None = None

    @classmethod
    def from_file(cls, lang: str, source: Path, *, compile_options: Sequence[str] = (),
                  args: Sequence[str] = (), image: str | None = None,
                  interpreter: Sequence[str] | None = None) -> Submission:
        return cls(lang, read_source(source), tuple(compile_options), tuple(args), image,
                   None if interpreter is None else tuple(interpreter))


def judge(stages: Stages, problem: Problem, submission: Submission, *, stop_on_failure: bool = False,
          on_test: Callable[[TestReport], None] | None = None, parallel: int = 1) -> JudgeReport:
    """The report of ``submission`` on every test of ``problem``, in order. ``on_test``
    hears each test as it is decided, in order. With ``stop_on_failure``, the tests after
    the first that is not accepted are ``skipped``. With ``parallel`` > 1, that many
    tests run at once (``stages`` must take jobs from several threads); the report is
    the same as one test at a time."""
    if problem.interactor is not None and submission.interpreter is not None:
        raise JobError("an interactive problem runs its solution beside the interactor, not in the interpreter mode",
                       field="interpreter")
    compiled = compile_source(stages, load_preset(submission.lang), submission.source,
                              options=submission.compile_options, image=submission.image,
                              interpreter=submission.interpreter)
    if compiled.status is not Status.OK:
        return JudgeReport.of(problem, compiled.result, [])
    if problem.interactor is not None:
        custom = _checker(stages, problem) if problem.checker.kind is CheckerKind.CUSTOM else None
        interactive = InteractiveTests(stages, problem, problem.interactor, custom)

        def run_test(test: Test) -> TestReport:
            return interactive(compiled, test, submission.args)
    else:
        checker = _checker(stages, problem)

        def run_test(test: Test) -> TestReport:
            return _judge_test(stages, problem, compiled, checker, test, submission.args)

    reports = _run_tests(problem.tests, run_test, parallel=parallel, stop_on_failure=stop_on_failure,
                         on_test=on_test)
    return JudgeReport.of(problem, compiled.result, reports)


def _run_tests(tests: Sequence[Test], run_test: Callable[[Test], TestReport], *, parallel: int,
               stop_on_failure: bool, on_test: Callable[[TestReport], None] | None) -> list[TestReport]:
    """Each test's report, in test order. In parallel, tests after the first failure may
    have run already: with ``stop_on_failure`` they are ``skipped`` all the same (and
    those not started yet are not started), so the report never depends on ``parallel``."""
    reports: list[TestReport] = []

    def failed() -> bool:
        return stop_on_failure and any(r.status is not TestStatus.ACCEPTED for r in reports)

    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="judge-test") as pool:
        ahead: dict[int, Future[TestReport]] = {}
        for index, test in enumerate(tests):
            # Keep ``parallel`` tests in flight; one at a time runs nothing past a failure.
            for later in range(index, min(len(tests), index + parallel)):
                if later not in ahead and not failed():
                    ahead[later] = pool.submit(run_test, tests[later])
            future = ahead.pop(index, None)
            if failed() or future is None:
                if future is not None:
                    future.cancel()
                report = TestReport.skipped(test.name)
            else:
                report = future.result()
            reports.append(report)
            if on_test is not None:
                on_test(report)
        for future in ahead.values():
            future.cancel()
    return reports


def _judge_test(stages: Stages, problem: Problem, compiled: Compiled, checker: _Checker, test: Test,
                args: Sequence[str]) -> TestReport:
    result = run_compiled(stages, compiled, stdin=Blob(path=str(test.input)), limits=problem.limits, args=args)
    if result.status is not Status.OK:
        return TestReport.of_run(test.name, result, None)
    try:
        checked = checker(test, result.stdout)
    except JudgeFault as exc:
        report = TestReport.of_run(test.name, result, None)
        report.status, report.error = TestStatus.JUDGE_ERROR, str(exc)
        return report
    return TestReport.of_run(test.name, result, checked)


_Checker = Callable[[Test, bytes], Checked]


def _checker(stages: Stages, problem: Problem) -> _Checker:
    """The problem's checker as a function of (test, output); a custom one is compiled
    here, once."""
    spec = problem.checker
    if spec.kind is not CheckerKind.CUSTOM:
        def built_in(test: Test, output: bytes) -> Checked:
            return check(spec.kind, output, _read(test.answer), abs_tol=spec.abs_tol, rel_tol=spec.rel_tol)
        return built_in
    assert spec.program is not None  # load_problem requires it for "custom"
    return _ProgramChecker(stages, problem, spec.program)


class _ProgramChecker:
    """A testlib-style checker: ``checker input output answer`` in a sandbox of its own,
    saying its verdict by its exit code (``testlib.verdict``)."""

    def __init__(self, stages: Stages, problem: Problem, program: Program) -> None:
        self.stages = stages
        self.fault: str | None = None
        try:
            files = package_files(problem, program)
        except JudgeFault as exc:
            self.fault = str(exc)
            return
        self.compiled = compile_source(stages, load_preset(program.lang), read_source(program.source), files=files)
        if self.compiled.status is not Status.OK:
            self.fault = f"the checker did not compile: {why(self.compiled.result)}"

    def __call__(self, test: Test, output: bytes) -> Checked:
        if self.fault is not None:
            raise JudgeFault(self.fault)
        inputs = [InputFile(f"{WORKDIR}/{name}", blob) for name, blob in
                  zip(_CHECKER_ARGS, (Blob(path=str(test.input)), Blob(data=output), Blob(path=str(test.answer))),
                      strict=True)]
        room = test.input.stat().st_size + len(output) + test.answer.stat().st_size + (16 << 20)
        result = run_compiled(self.stages, self.compiled, args=_CHECKER_ARGS, inputs=inputs,
                              limits=Limits(disk=room, output=_CHECKER_OUTPUT))
        return verdict(result, "the checker")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise JudgeFault(f"{path}: {exc.strerror}") from exc
