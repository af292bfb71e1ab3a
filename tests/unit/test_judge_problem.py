"""Problem packages and scoring, on their own: no sandbox needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.judge import report as judged
from sandbox.judge.checkers import CheckerKind
from sandbox.judge.interactive import InteractiveTests
from sandbox.judge.problem import ProblemError, load_problem, natural_key, read_package
from sandbox.judge.testlib import package_files
from sandbox.models import Result, Status
from sandbox.units import MAX_DURATION_MS


def package(root: Path, toml: str = "", tests: tuple[str, ...] = ("1", "2", "10"), answer: str = ".out") -> Path:
    (root / "tests").mkdir(parents=True)
    for name in tests:
        (root / "tests" / f"{name}.in").write_text(f"{name}\n")
        (root / "tests" / f"{name}{answer}").write_text(f"{name}\n")
    if toml:
        (root / "problem.toml").write_text(toml)
    return root


def test_a_bare_package_has_token_checker_default_limits_and_natural_order(tmp_path: Path) -> None:
    problem = load_problem(package(tmp_path, answer=".ans"))
    assert [t.name for t in problem.tests] == ["1", "2", "10"]
    assert problem.checker.kind is CheckerKind.TOKENS
    assert problem.max_score == 100 and problem.interactor is None


def test_problem_toml_sets_limits_checker_and_groups(tmp_path: Path) -> None:
    problem = load_problem(package(tmp_path, """
[limits]
cpu_time = "1s"
memory = "256M"
[checker]
kind = "float"
abs = 1e-4
rel = 0
[[groups]]
tests = ["1", "2"]
points = 30
[[groups]]
tests = ["10"]
points = 70
"""))
    assert problem.limits.cpu_time_ms == 1000 and problem.limits.memory_bytes == 256 << 20
    assert (problem.checker.kind, problem.checker.abs_tol, problem.checker.rel_tol) == (CheckerKind.FLOAT, 1e-4, 0.0)
    assert [g.points for g in problem.groups] == [30, 70] and problem.max_score == 100


@pytest.mark.parametrize(("toml", "words"), [
    ("[limits]\nmemory = 'lots'\n", "[limits]"),
    ("[checker]\nkind = 'fuzzy'\n", "kind must be one of"),
    ("[checker]\nkind = 'float'\nabs = -1\n", "abs must be a finite number >= 0"),
    ("[checker]\nkind = 'float'\nabs = 1" + "0" * 400 + "\n", "abs is too large"),  # past any float
    ("[checker]\nkind = 'custom'\n", "needs source"),
    ("[checker]\nkind = 'custom'\nsource = \"a\\u0000b\"\nlang = 'cpp'\n", "needs source (a file name)"),
    ("[limits]\ncpus = 1" + "0" * 400 + "\n", "cpus must be between"),
    ("[[groups]]\ntests = ['1', '2', '10']\npoints = inf\n", "points must be a finite number"),
    ("a = " + "[" * 3000 + "]" * 3000 + "\n", "problem.toml"),  # nested past the parser's recursion
    ("[checker]\nkind = 'custom'\nsource = '../../etc/passwd'\nlang = 'cpp'\n", "outside the package"),
    ("[[groups]]\ntests = ['1', 'nope']\npoints = 5\n", "no test named 'nope'"),
    ("[[groups]]\ntests = ['1']\npoints = 5\n[[groups]]\ntests = ['1']\npoints = 5\n", "in two groups"),
    ("[interactor]\nsource = 'missing.cpp'\nlang = 'cpp'\n", "missing.cpp"),
    ("[interactor]\nsource = 'x.cpp'\nlang = 'cpp'\n[interactor.limits]\nwall_time = 'soon'\n", "[interactor.limits]"),
    ("colour = 'red'\n", "unknown key(s) colour"),
    ("[checker\n", "problem.toml"),
])
def test_a_broken_package_is_an_error_naming_what_is_wrong(tmp_path: Path, toml: str, words: str) -> None:
    with pytest.raises(ProblemError, match=None) as raised:
        load_problem(package(tmp_path, toml))
    assert words in str(raised.value)


def test_tests_need_one_answer_each_and_no_symlinks(tmp_path: Path) -> None:
    root = package(tmp_path)
    (root / "tests" / "3.in").write_text("3\n")
    with pytest.raises(ProblemError, match="needs exactly one answer file"):
        load_problem(root)
    (root / "tests" / "3.in").unlink()
    (root / "tests" / "2.out").unlink()
    os.symlink("/etc/passwd", root / "tests" / "2.out")
    with pytest.raises(ProblemError, match="not a regular file"):
        load_problem(root)


def test_natural_order() -> None:
    assert sorted(["10", "2", "a10", "a2", "1"], key=natural_key) == ["1", "2", "10", "a2", "a10"]
    assert natural_key("1²") == ["", 1, "²"]  # a digit that is no decimal one stays text


def _report(name: str, status: judged.TestStatus, score: float = 0.0) -> judged.TestReport:
    return judged.TestReport(name, status, score=score)


def test_without_groups_tests_share_the_points_and_the_first_failure_is_the_verdict(tmp_path: Path) -> None:
    problem = load_problem(package(tmp_path))
    tests = [_report("1", judged.TestStatus.ACCEPTED, 1.0), _report("2", judged.TestStatus.TIME_LIMIT),
             _report("10", judged.TestStatus.PARTIAL, 0.5)]
    report = judged.JudgeReport.of(problem, Result(Status.OK), tests)
    assert (report.verdict, report.score, report.max_score) == ("time_limit", 50.0, 100)


def test_a_group_scores_its_lowest_test_and_skipped_tests_do_not_set_the_verdict(tmp_path: Path) -> None:
    problem = load_problem(package(tmp_path, "[[groups]]\ntests = ['1', '2']\npoints = 30\n"
                                             "[[groups]]\ntests = ['10']\npoints = 70\n"))
    tests = [_report("1", judged.TestStatus.ACCEPTED, 1.0), _report("2", judged.TestStatus.ACCEPTED, 1.0),
             _report("10", judged.TestStatus.WRONG_ANSWER), ]
    assert judged.JudgeReport.of(problem, None, tests).to_json_dict()["score"] == 30
    skipped = [_report("1", judged.TestStatus.ACCEPTED, 1.0), _report("2", judged.TestStatus.SKIPPED), _report("10", judged.TestStatus.SKIPPED)]
    assert judged.JudgeReport.of(problem, None, skipped).verdict == "accepted"


def test_a_failed_compile_is_the_verdict(tmp_path: Path) -> None:
    problem = load_problem(package(tmp_path))
    report = judged.JudgeReport.of(problem, Result(Status.COMPILE_ERROR, exit_code=1), [])
    assert (report.verdict, report.score) == ("compile_error", 0.0)


def test_a_run_that_failed_keeps_its_status_and_a_sandbox_fault_is_the_judges() -> None:
    assert judged.TestReport.of_run("1", Result(Status.MEMORY_LIMIT), None).status is judged.TestStatus.MEMORY_LIMIT
    fault = judged.TestReport.of_run("1", Result(Status.INTERNAL_ERROR, error="boom"), None)
    assert fault.status is judged.TestStatus.JUDGE_ERROR and "boom" in (fault.error or "")


def test_an_interactive_package_and_its_interactors_limits() -> None:
    problem = load_problem(Path(__file__).parent.parent / "problems" / "guess")
    assert problem.interactor is not None and problem.interactor.program.lang == "cpp"
    assert problem.interactor.program.source.name == "interactor.cpp"
    assert problem.interactor.limits.given == {"cpu_time"} and problem.interactor.limits.cpu_time_ms == 2000



def test_an_interactor_beside_the_longest_wall_time_gets_the_longest(tmp_path: Path) -> None:
    root = package(tmp_path, "[limits]\nwall_time = '168h'\n[interactor]\nsource = 'i.cpp'\nlang = 'cpp'\n")
    (root / "i.cpp").write_text("int main() {}\n")
    problem = load_problem(root)
    assert problem.interactor is not None
    tests = InteractiveTests.__new__(InteractiveTests)  # (its limits only: nothing compiled)
    tests.problem, tests.interactor = problem, problem.interactor
    assert tests._limits(problem.tests[0]).wall_time_ms == MAX_DURATION_MS


def test_a_package_read_to_send_leaves_hidden_files_and_refuses_names_a_worker_would(tmp_path: Path) -> None:
    root = package(tmp_path)
    (root / ".gitignore").write_text("*.o\n")
    (root / "tests" / ".gitkeep").write_text("")
    assert sorted(read_package(root)) == ["tests/1.in", "tests/1.out", "tests/10.in", "tests/10.out", "tests/2.in",
                                          "tests/2.out"]
    (root / "tests" / "1 copy.txt").write_text("x")
    with pytest.raises(ProblemError, match=r"1 copy\.txt"):
        read_package(root)


def test_a_checkers_package_files_leave_out_what_its_own_compile_names(tmp_path: Path) -> None:
    root = package(tmp_path, "[checker]\nkind = 'custom'\nsource = 'check.cpp'\nlang = 'cpp'\n")
    for name in ("check.cpp", "main.cpp", "main", "testlib.h"):  # main.cpp: the setter's model solution
        (root / name).write_text("x")
    problem = load_problem(root)
    assert problem.checker.program is not None
    assert [entry.dest for entry in package_files(problem, problem.checker.program)] == ["/work/testlib.h"]
