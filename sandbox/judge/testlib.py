"""What the problem's own programs - a custom checker, an interactor - speak, testlib's
way: exit 0 accepted, 1 wrong answer, 2 presentation error, 7 partial (``points X`` on
stderr, or a number alone on stdout's first line: the fraction, 0..1); 3, any other
code, a crash or a limit is the program failing - the judge's fault (``JudgeFault``),
never the solution's. Their stderr is the message. They compile with the package's other
files (a testlib.h the setter ships)."""

from __future__ import annotations

import re

from sandbox.judge.checkers import Checked, CheckStatus
from sandbox.judge.problem import Problem, Program
from sandbox.languages import is_program_file, load_preset
from sandbox.models import WORKDIR, Blob, InputFile, Result, Status

_STATUS = {0: CheckStatus.ACCEPTED, 1: CheckStatus.WRONG_ANSWER, 2: CheckStatus.PRESENTATION_ERROR,
           7: CheckStatus.PARTIAL}
_FAIL = 3
_POINTS = re.compile(rb"^points\s+([0-9.eE+-]+)", re.MULTILINE)
_MESSAGE_BYTES = 4096
_PACKAGE_FILE_LIMIT = 64 << 20  # bytes of the package's own files a checker or interactor compiles with


class JudgeFault(Exception):
    """The checker, the interactor or the package failed on a test: ``judge_error``,
    never the solution's."""


def verdict(result: Result, who: str) -> Checked:
    """What the program ``who`` ("the checker", "the interactor") said by its exit, or
    JudgeFault when it failed instead."""
    message = result.stderr[:_MESSAGE_BYTES].decode(errors="replace").strip()
    exited = result.status in (Status.OK, Status.RUNTIME_ERROR)
    status = _STATUS.get(result.exit_code) if exited and result.exit_code is not None else None
    if status is None:
        code = "" if result.exit_code != _FAIL else " (fail)"
        raise JudgeFault(f"{who} failed{code}: {why(result)} {message}".strip())
    if status is CheckStatus.PARTIAL:
        return Checked(status, _fraction(result, who), message)
    return Checked(status, 1.0 if status is CheckStatus.ACCEPTED else 0.0, message)


def _fraction(result: Result, who: str) -> float:
    found = _POINTS.search(result.stderr)
    text = found.group(1) if found else (result.stdout.split(b"\n", 1)[0].strip() or b"?")
    try:
        value = float(text)
    except ValueError:
        raise JudgeFault(f"{who} said partial without points: {text[:40]!r}") from None
    if not 0.0 <= value <= 1.0:
        raise JudgeFault(f"{who}'s points {value} are outside 0..1")
    return value


def package_files(problem: Problem, program: Program) -> list[InputFile]:
    """The package's other top-level files (a testlib.h the setter ships, say), which
    the checker or interactor may need to compile; never the tests, nor a file its own
    compile names (a model solution's main.cpp beside a C++ checker: its compile makes
    its own)."""
    preset = load_preset(program.lang)
    files, total = [], 0
    for entry in sorted(problem.root.iterdir()):
        if entry == program.source or entry.name == "problem.toml" or entry.is_symlink() or not entry.is_file():
            continue
        if is_program_file(preset, entry.name):
            continue
        total += entry.stat().st_size
        if total > _PACKAGE_FILE_LIMIT:
            raise JudgeFault(
                f"{problem.root}: the package's files for its programs exceed {_PACKAGE_FILE_LIMIT >> 20} MiB")
        files.append(InputFile(f"{WORKDIR}/{entry.name}", Blob(path=str(entry))))
    return files


def why(result: Result) -> str:
    detail = result.error or (f"exit {result.exit_code}" if result.exit_code is not None else result.signal_name)
    return f"{result.status.value} ({detail})"
