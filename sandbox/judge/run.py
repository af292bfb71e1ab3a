"""Judge one submission against a problem package: compile once, run every test in a
sandbox of its own, check each output, report.

What each sandbox holds is the point: the solution's gets its compiled program and the
test's input as stdin - never the answer files, the checker or another test; a custom
checker gets the input, the solution's output and the answer as files, in a sandbox of
its own with its own limits (problem setters make mistakes, and packages get shared).
The jobs go through ``Stages``: a Runner in this process, or a worker.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox.judge.checkers import Checked, CheckerKind, CheckStatus, check
from sandbox.judge.problem import Problem, Program, Test
from sandbox.judge.report import JudgeReport, TestReport, TestStatus
from sandbox.languages import Compiled, Stages, compile_source, load_preset, read_source, run_compiled
from sandbox.models import WORKDIR, Blob, InputFile, Limits, Result, Status

# testlib's exit codes, which custom checkers (and interactors) speak.
_TESTLIB = {0: CheckStatus.ACCEPTED, 1: CheckStatus.WRONG_ANSWER, 2: CheckStatus.PRESENTATION_ERROR,
            7: CheckStatus.PARTIAL}
_TESTLIB_FAIL = 3
_CHECKER_ARGS = ("input.txt", "output.txt", "answer.txt")  # testlib's order
_POINTS = re.compile(rb"^points\s+([0-9.eE+-]+)", re.MULTILINE)
_MESSAGE_BYTES = 4096
_CHECKER_OUTPUT = "1M"
_PACKAGE_FILE_LIMIT = 64 << 20  # bytes of the package's own files a checker compiles with


class JudgeFault(Exception):
    """The checker (or the package) failed on a test: ``judge_error``, never the solution's."""


@dataclass(frozen=True)
class Submission:
    """What is judged: the source in a language, with the compiler options (from the
    preset's allow-list) and the program arguments it was submitted with."""

    lang: str
    source: bytes
    compile_options: tuple[str, ...] = ()
    args: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, lang: str, source: Path, *, compile_options: Sequence[str] = (),
                  args: Sequence[str] = ()) -> Submission:
        return cls(lang, read_source(source), tuple(compile_options), tuple(args))


def judge(stages: Stages, problem: Problem, submission: Submission, *, stop_on_failure: bool = False,
          on_test: Callable[[TestReport], None] | None = None) -> JudgeReport:
    """The report of ``submission`` on every test of ``problem``, in order. ``on_test``
    hears each test as it is decided. With ``stop_on_failure``, the tests after the first
    that is not accepted are ``skipped``."""
    compiled = compile_source(stages, load_preset(submission.lang), submission.source,
                              options=submission.compile_options)
    if compiled.status is not Status.OK:
        return JudgeReport.of(problem, compiled.result, [])
    checker = _checker(stages, problem)
    reports: list[TestReport] = []
    for test in problem.tests:
        if stop_on_failure and any(r.status is not TestStatus.ACCEPTED for r in reports):
            report = TestReport.skipped(test.name)
        else:
            report = _judge_test(stages, problem, compiled, checker, test, submission.args)
        reports.append(report)
        if on_test is not None:
            on_test(report)
    return JudgeReport.of(problem, compiled.result, reports)


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
    """A testlib-style checker: ``checker input output answer`` in a sandbox of its own;
    exit 0 accepted, 1 wrong answer, 2 presentation error, 7 partial (``points X`` on
    stderr, or a number alone on stdout's first line: the fraction, 0..1), 3 or anything
    else - a crash, a limit - is the checker failing. Its stderr is the message."""

    def __init__(self, stages: Stages, problem: Problem, program: Program) -> None:
        self.stages = stages
        self.fault: str | None = None
        try:
            files = _package_files(problem, program)
        except JudgeFault as exc:
            self.fault = str(exc)
            return
        self.compiled = compile_source(stages, load_preset(program.lang), read_source(program.source), files=files)
        if self.compiled.status is not Status.OK:
            self.fault = f"the checker did not compile: {_why(self.compiled.result)}"

    def __call__(self, test: Test, output: bytes) -> Checked:
        if self.fault is not None:
            raise JudgeFault(self.fault)
        inputs = [InputFile(f"{WORKDIR}/{name}", blob) for name, blob in
                  zip(_CHECKER_ARGS, (Blob(path=str(test.input)), Blob(data=output), Blob(path=str(test.answer))),
                      strict=True)]
        room = test.input.stat().st_size + len(output) + test.answer.stat().st_size + (16 << 20)
        result = run_compiled(self.stages, self.compiled, args=_CHECKER_ARGS, inputs=inputs,
                              limits=Limits(disk=room, output=_CHECKER_OUTPUT))
        message = result.stderr[:_MESSAGE_BYTES].decode(errors="replace").strip()
        exited = result.status in (Status.OK, Status.RUNTIME_ERROR)
        status = _TESTLIB.get(result.exit_code) if exited and result.exit_code is not None else None
        if status is None:
            code = "" if result.exit_code != _TESTLIB_FAIL else " (fail)"
            raise JudgeFault(f"the checker failed{code}: {_why(result)} {message}".strip())
        if status is CheckStatus.PARTIAL:
            return Checked(status, _fraction(result), message)
        return Checked(status, 1.0 if status is CheckStatus.ACCEPTED else 0.0, message)


def _fraction(result: Result) -> float:
    found = _POINTS.search(result.stderr)
    text = found.group(1) if found else (result.stdout.split(b"\n", 1)[0].strip() or b"?")
    try:
        value = float(text)
    except ValueError:
        raise JudgeFault(f"the checker said partial without points: {text[:40]!r}") from None
    if not 0.0 <= value <= 1.0:
        raise JudgeFault(f"the checker's points {value} are outside 0..1")
    return value


def _package_files(problem: Problem, program: Program) -> list[InputFile]:
    """The package's other top-level files (a testlib.h the setter ships, say), which
    the checker may need to compile; never the tests."""
    files, total = [], 0
    for entry in sorted(problem.root.iterdir()):
        if entry == program.source or entry.name == "problem.toml" or entry.is_symlink() or not entry.is_file():
            continue
        total += entry.stat().st_size
        if total > _PACKAGE_FILE_LIMIT:
            raise JudgeFault(
                f"{problem.root}: the package's files for the checker exceed {_PACKAGE_FILE_LIMIT >> 20} MiB")
        files.append(InputFile(f"{WORKDIR}/{entry.name}", Blob(path=str(entry))))
    return files


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise JudgeFault(f"{path}: {exc.strerror}") from exc


def _why(result: Result) -> str:
    detail = result.error or (f"exit {result.exit_code}" if result.exit_code is not None else result.signal_name)
    return f"{result.status.value} ({detail})"
