"""A problem package: ``problem.toml`` plus ``tests/NAME.in`` and ``tests/NAME.out`` (or
``.ans``), optional checker and interactor sources and the files they need.

The package is the problem setter's, read by the host: it is validated whole before any
submission runs, so a mistake in it is a clear error naming the file, never a verdict
against a solution. Tests run in natural sort order (``2`` before ``10``).
"""

from __future__ import annotations

import math
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import JobError
from sandbox.judge.checkers import CheckerKind
from sandbox.languages import preset_names
from sandbox.models import Limits

DEFAULT_MAX_SCORE = 100.0
_KEYS = {"limits", "checker", "interactor", "groups"}
_CHECKER_KEYS = {"kind", "abs", "rel", "source", "lang"}
_PROGRAM_KEYS = {"source", "lang"}
_INTERACTOR_KEYS = {"source", "lang", "limits"}
_GROUP_KEYS = {"name", "tests", "points"}
_ANSWER_SUFFIXES = (".out", ".ans")


_PACKAGE_FILE_NAME = re.compile(r"(tests/)?[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")


def is_package_file_name(name: str) -> bool:
    """A package file's name as a judge request carries it: problem.toml, a top-level
    file (a checker's source, testlib.h), or a test (``tests/NAME``)."""
    return bool(_PACKAGE_FILE_NAME.fullmatch(name)) and ".." not in name and name != "tests"


class ProblemError(JobError):
    """The problem package is malformed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Program:
    """A checker's or interactor's source in the package, and its language preset."""

    source: Path
    lang: str


@dataclass(frozen=True)
class Checker:
    kind: CheckerKind = CheckerKind.TOKENS
    abs_tol: float = 1e-6
    rel_tol: float = 1e-6
    program: Program | None = None  # kind "custom"


@dataclass(frozen=True)
class Interactor:
    """An interactive problem's interactor: its program and the limits it was given
    (``[interactor.limits]``; the judge fills in the rest: ``judge.interactive``)."""

    program: Program
    limits: Limits


@dataclass(frozen=True)
class Test:
    name: str
    input: Path
    answer: Path


@dataclass(frozen=True)
class Group:
    name: str
    tests: tuple[str, ...]
    points: float


@dataclass(frozen=True)
class Problem:
    root: Path
    limits: Limits
    checker: Checker
    tests: tuple[Test, ...]
    groups: tuple[Group, ...] = ()
    interactor: Interactor | None = None  # an interactive problem

    @property
    def max_score(self) -> float:
        return sum(g.points for g in self.groups) if self.groups else DEFAULT_MAX_SCORE


def load_problem(root: Path) -> Problem:
    """Read and validate the package at ``root``."""
    config_path = root / "problem.toml"
    try:
        config = tomllib.loads(config_path.read_text()) if config_path.exists() else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ProblemError(f"{config_path}: {exc}") from exc
    _check_keys(config, _KEYS, config_path, "the top level")
    try:
        limits = Limits(**_table(config, "limits", config_path))
    except (JobError, TypeError) as exc:
        raise ProblemError(f"{config_path}: [limits]: {exc}") from exc
    tests = _tests(root)
    return Problem(
        root=root,
        limits=limits,
        checker=_checker(root, _table(config, "checker", config_path), config_path),
        tests=tests,
        groups=_groups(config.get("groups", []), {t.name for t in tests}, config_path),
        interactor=_interactor(root, config, config_path),
    )


def read_package(root: Path) -> dict[str, bytes]:
    """The package's files as a worker's ``judge`` request carries them: problem.toml and
    the other top-level files (a checker's source, headers) by name, the tests as
    ``tests/NAME``; regular files only, as ``load_problem`` reads them. Hidden files
    (``.gitignore``) stay behind; a name a worker would refuse is refused here, before
    anything is sent."""
    load_problem(root)  # a broken package is refused here, before anything is sent
    files = {}
    for directory, prefix in ((root, ""), (root / "tests", "tests/")):
        for entry in sorted(directory.iterdir()):
            if entry.is_symlink() or not entry.is_file() or entry.name.startswith("."):
                continue
            if not is_package_file_name(prefix + entry.name):
                raise ProblemError(f"{entry}: a package's file names are letters, digits and _ . + - "
                                   "(up to 128, not starting with . + or -, no ..)")
            try:
                files[prefix + entry.name] = entry.read_bytes()
            except OSError as exc:
                raise ProblemError(f"{entry}: {exc.strerror}") from exc
    return files


def natural_key(name: str) -> list[int | str]:
    """``2`` before ``10``, ``a2`` before ``a10``: digit runs compare as numbers."""
    return [int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", name)]


def _tests(root: Path) -> tuple[Test, ...]:
    directory = root / "tests"
    if not directory.is_dir():
        raise ProblemError(f"{directory}: no tests directory")
    tests = []
    for entry in sorted(directory.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.suffix != ".in":
            continue
        _regular(entry)
        answers = [entry.with_suffix(s) for s in _ANSWER_SUFFIXES if entry.with_suffix(s).exists()]
        if len(answers) != 1:
            raise ProblemError(f"{entry}: needs exactly one answer file ({' or '.join(_ANSWER_SUFFIXES)})")
        tests.append(Test(entry.stem, entry, _regular(answers[0])))
    if not tests:
        raise ProblemError(f"{directory}: no tests (NAME.in with NAME.out or NAME.ans)")
    return tuple(tests)


def _checker(root: Path, table: dict[str, Any], where: Path) -> Checker:
    _check_keys(table, _CHECKER_KEYS, where, "[checker]")
    try:
        kind = CheckerKind(table.get("kind", CheckerKind.TOKENS.value))
    except ValueError:
        known = ", ".join(k.value for k in CheckerKind)
        raise ProblemError(f"{where}: [checker] kind must be one of {known}") from None
    tolerances = {}
    for key in ("abs", "rel"):
        tolerances[key] = _non_negative(table.get(key, 1e-6), where, f"[checker] {key}")
    program = _program(root, table, where, "[checker]") if kind is CheckerKind.CUSTOM else None
    return Checker(kind, tolerances["abs"], tolerances["rel"], program)


def _interactor(root: Path, config: dict[str, Any], where: Path) -> Interactor | None:
    if "interactor" not in config:
        return None
    table = _table(config, "interactor", where)
    _check_keys(table, _INTERACTOR_KEYS, where, "[interactor]")
    try:
        limits = Limits(**_table(table, "limits", where))
    except (JobError, TypeError) as exc:
        raise ProblemError(f"{where}: [interactor.limits]: {exc}") from exc
    return Interactor(_program(root, table, where, "[interactor]"), limits)


def _program(root: Path, table: dict[str, Any], where: Path, section: str) -> Program:
    source, lang = table.get("source"), table.get("lang")
    if not isinstance(source, str) or not isinstance(lang, str) or "\0" in source:
        raise ProblemError(f"{where}: {section} needs source (a file name) and lang (a language preset)")
    if lang not in preset_names():
        raise ProblemError(f"{where}: {section} lang {lang!r} is not a language preset ({', '.join(preset_names())})")
    path = root / source
    if root.resolve() not in path.resolve().parents:
        raise ProblemError(f"{where}: {section} source {source!r} is outside the package")
    return Program(_regular(path), lang)


def _groups(entries: Any, names: set[str], where: Path) -> tuple[Group, ...]:
    if not isinstance(entries, list):
        raise ProblemError(f"{where}: [[groups]] must be an array of tables")
    groups, seen = [], set()
    for index, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ProblemError(f"{where}: [[groups]] entry {index} must be a table")
        _check_keys(entry, _GROUP_KEYS, where, f"[[groups]] entry {index}")
        tests, points = entry.get("tests"), entry.get("points")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise ProblemError(f"{where}: [[groups]] entry {index}: tests must be a list of test names")
        score = _non_negative(points, where, f"[[groups]] entry {index}: points")
        for name in tests:
            if name not in names:
                raise ProblemError(f"{where}: [[groups]] entry {index}: no test named {name!r}")
            if name in seen:
                raise ProblemError(f"{where}: [[groups]] entry {index}: test {name!r} is in two groups")
            seen.add(name)
        groups.append(Group(str(entry.get("name", index)), tuple(tests), score))
    return tuple(groups)


def _non_negative(value: Any, where: Path, what: str) -> float:
    """A number >= 0 from problem.toml, as a float (a TOML integer may be past any)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ProblemError(f"{where}: {what} must be a finite number >= 0")
    try:
        return float(value)
    except OverflowError:
        raise ProblemError(f"{where}: {what} is too large") from None


def _table(config: dict[str, Any], key: str, where: Path) -> dict[str, Any]:
    value = config.get(key, {})
    if not isinstance(value, dict):
        raise ProblemError(f"{where}: [{key}] must be a table")
    return value


def _check_keys(table: dict[str, Any], known: set[str], where: Path, section: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ProblemError(
            f"{where}: unknown key(s) {', '.join(unknown)} in {section} (known: {', '.join(sorted(known))})")


def _regular(path: Path) -> Path:
    """A regular file, not a symlink: a package's files are read by the host, and a link
    could point it at any file the host user can read."""
    try:
        mode = path.lstat().st_mode
    except OSError as exc:
        raise ProblemError(f"{path}: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise ProblemError(f"{path}: not a regular file")
    return path
