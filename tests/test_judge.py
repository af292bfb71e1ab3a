"""Judging end to end: the problems in tests/problems against solutions that are
accepted, wrong, wrong only in whitespace, too slow, too big, crashing, failing to
compile and flooding their output - every verdict right, the program compiled once;
an interactive problem (tests/problems/guess: guess the number, a C++ interactor)
against right, wrong, slow, crashing, deadlocked and answer-peeking solutions."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from workerutil import SANDBOX_CLI

from sandbox.errors import JobError
from sandbox.judge.checkers import CheckerKind
from sandbox.judge.problem import Checker, Problem, load_problem
from sandbox.judge.run import Submission, judge
from sandbox.languages import RunnerStages
from sandbox.models import Job, Pipe, Result

PROBLEMS = Path(__file__).parent / "problems"
SOLUTIONS = PROBLEMS / "solutions"
LANG = {".cpp": "cpp", ".py": "python3"}


class CountingStages(RunnerStages):
    """The runner's stages, counting compile jobs: compile once must be proven."""

    def __init__(self, runner: Any) -> None:
        super().__init__(runner)
        self.compiles = 0
        self.seen: list[tuple[Job, Result]] = []

    def run(self, job: Job, trace: list[Any] | None) -> Result:
        self.compiles += job.profile == "compile"
        try:
            result = super().run(job, trace)
        finally:
            self.runner.tidy()
        self.seen.append((job, result))
        return result

    def run_group(self, jobs: list[Job], pipes: list[Pipe]) -> list[Result]:
        try:
            results = super().run_group(jobs, pipes)
        finally:
            self.runner.tidy()
        self.seen.extend(zip(jobs, results, strict=True))
        return results


@pytest.fixture
def stages(runner, language_image) -> CountingStages:
    return CountingStages(runner)


def submission(name: str) -> Submission:
    path = SOLUTIONS / name
    return Submission.from_file(LANG[path.suffix], path)


def statuses(report: Any) -> list[str]:
    return [t.status.value for t in report.tests]


@pytest.mark.parametrize(("solution", "verdict", "tests"), [
    ("sum_ok.cpp", "accepted", ["accepted"] * 3),
    ("sum_ok.py", "accepted", ["accepted"] * 3),
    ("sum_wrong.cpp", "wrong_answer", ["accepted", "wrong_answer", "accepted"]),
    ("sum_spaces.py", "accepted", ["accepted"] * 3),
    ("sum_slow.cpp", "time_limit", ["time_limit"] * 3),
    ("sum_big.cpp", "memory_limit", ["memory_limit"] * 3),
    ("sum_crash.cpp", "signaled", ["accepted", "signaled", "signaled"]),
    ("sum_crash.py", "runtime_error", ["runtime_error"] * 3),
    ("sum_flood.py", "output_limit", ["output_limit"] * 3),
])
def test_every_verdict_and_one_compile(stages: CountingStages, solution: str, verdict: str, tests: list[str]) -> None:
    problem = load_problem(PROBLEMS / "sum")
    report = judge(stages, problem, submission(solution))
    assert (report.verdict, statuses(report)) == (verdict, tests), report.to_json_dict()
    assert [t.name for t in report.tests] == ["1", "2", "10"]
    assert report.score == pytest.approx(100 * tests.count("accepted") / 3)
    assert stages.compiles == 1


def test_a_compile_error_runs_nothing(stages: CountingStages) -> None:
    report = judge(stages, load_problem(PROBLEMS / "sum"), submission("sum_compile_error.cpp"))
    assert (report.verdict, report.tests, report.score) == ("compile_error", [], 0.0)
    assert report.compile is not None and b"undeclared" in report.compile.stderr
    assert stages.compiles == 1


def test_whitespace_is_a_presentation_error_for_the_exact_checker(stages: CountingStages) -> None:
    exact: Problem = dataclasses.replace(load_problem(PROBLEMS / "sum"), checker=Checker(CheckerKind.EXACT))
    report = judge(stages, exact, submission("sum_spaces.py"))
    assert (report.verdict, statuses(report)) == ("presentation_error", ["presentation_error"] * 3)


def test_stop_on_failure_skips_the_rest(stages: CountingStages) -> None:
    report = judge(stages, load_problem(PROBLEMS / "sum"), submission("sum_wrong.cpp"), stop_on_failure=True)
    assert statuses(report) == ["accepted", "wrong_answer", "skipped"]
    assert report.verdict == "wrong_answer"


@pytest.mark.parametrize(("solution", "verdict"), [("float_ok.py", "accepted"), ("float_rough.py", "wrong_answer")])
def test_the_float_checker_takes_its_tolerance(stages: CountingStages, solution: str, verdict: str) -> None:
    assert judge(stages, load_problem(PROBLEMS / "float"), submission(solution)).verdict == verdict


@pytest.mark.parametrize(("solution", "verdict", "score", "tests"), [
    ("anyorder_ok.py", "accepted", 100, ["accepted", "accepted"]),
    ("anyorder_reversed.py", "partial", 40 + 60 * 0.5, ["accepted", "partial"]),
    ("anyorder_wrong.py", "wrong_answer", 0, ["wrong_answer", "wrong_answer"]),
])
def test_a_custom_checker_judges_many_valid_answers(stages: CountingStages, solution: str, verdict: str,
                                                    score: float, tests: list[str]) -> None:
    report = judge(stages, load_problem(PROBLEMS / "anyorder"), submission(solution))
    assert (report.verdict, report.score, statuses(report)) == (verdict, score, tests), report.to_json_dict()
    assert report.tests[0].checker_message.startswith(("ok 5 + 5", "10 + 1 is not 10"))
    assert stages.compiles == 2  # the solution and the checker, once each


def test_a_failing_checker_is_the_judges_error_not_the_solutions(stages: CountingStages, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "tests").mkdir()
    for name in ("1", "2"):
        (root / "tests" / f"{name}.in").write_text("1 2\n")
        (root / "tests" / f"{name}.out").write_text("3\n")
    (root / "problem.toml").write_text("[checker]\nkind = 'custom'\nsource = 'check.py'\nlang = 'python3'\n")
    (root / "check.py").write_text("import sys\nprint('cannot read the answer', file=sys.stderr)\nsys.exit(3)\n")
    report = judge(stages, load_problem(root), submission("sum_ok.py"))
    assert (report.verdict, statuses(report)) == ("judge_error", ["judge_error"] * 2)
    assert "cannot read the answer" in (report.tests[0].error or "")


def test_the_solutions_sandbox_holds_no_answer_and_no_checker(stages: CountingStages, tmp_path: Path) -> None:
    spy = tmp_path / "spy.py"
    spy.write_text("import os\nprint(sorted(os.listdir('/work')), sorted(os.listdir('/tmp')))\n")
    judge(stages, load_problem(PROBLEMS / "anyorder"), Submission.from_file("python3", spy))
    runs = [result for job, result in stages.seen if job.profile == "default" and job.cmd[-1] == "main.py"]
    assert [r.stdout for r in runs] == [b"['main.py'] []\n"] * 2


def test_the_cli_prints_a_json_report_and_exits_by_verdict(language_image) -> None:
    done = subprocess.run([*SANDBOX_CLI, "judge", str(PROBLEMS / "sum"), "--lang", "python3",
                           "--source", str(SOLUTIONS / "sum_ok.py"), "--json"], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "accepted" and report["score"] == 100 and report["max_score"] == 100
    assert [t["name"] for t in report["tests"]] == ["1", "2", "10"]
    assert set(report["tests"][0]) >= {"name", "status", "score", "checker_message", "usage", "exit_code"}
    wrong = subprocess.run([*SANDBOX_CLI, "judge", str(PROBLEMS / "sum"), "--lang", "cpp",
                            "--source", str(SOLUTIONS / "sum_wrong.cpp")], capture_output=True, timeout=300)
    assert wrong.returncode == 1
    assert wrong.stdout.decode().splitlines()[-1] == "wrong_answer  66.6667/100"
    interpreted = subprocess.run([*SANDBOX_CLI, "judge", str(PROBLEMS / "sum"), "--lang", "python3", "--interpreter",
                                  "--source", str(SOLUTIONS / "sum_ok.py"), "--json"], capture_output=True, timeout=300)
    assert interpreted.returncode == 0, interpreted.stderr
    assert json.loads(interpreted.stdout)["verdict"] == "accepted"


def test_the_cli_gives_the_solution_what_follows_the_double_dash(language_image, tmp_path: Path) -> None:
    solution = tmp_path / "sum_plus.py"  # right only when given "0" as its argument
    solution.write_text("import sys\na, b = map(int, input().split())\nprint(a + b + int(sys.argv[1]))\n")
    done = subprocess.run([*SANDBOX_CLI, "judge", str(PROBLEMS / "sum"), "--lang", "python3", "--source",
                           str(solution), "--json", "--", "0"], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "accepted"


def test_a_broken_package_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    done = subprocess.run([*SANDBOX_CLI, "judge", str(tmp_path), "--lang", "python3",
                           "--source", str(SOLUTIONS / "sum_ok.py")], capture_output=True, timeout=60)
    assert done.returncode == 125
    assert b"no tests" in done.stderr


# Interactive problems

GUESS = Path(__file__).parent / "problems" / "guess"


@pytest.mark.parametrize(("solution", "verdict", "tests"), [
    ("guess_ok.cpp", "accepted", ["accepted"] * 3),
    ("guess_ok.py", "accepted", ["accepted"] * 3),
    ("guess_linear.cpp", "wrong_answer", ["accepted", "wrong_answer", "wrong_answer"]),  # too many guesses
    ("guess_gives_up.py", "wrong_answer", ["wrong_answer"] * 3),
    ("guess_peek.py", "wrong_answer", ["wrong_answer"] * 3),  # no answer file in its sandbox
    ("guess_deadlock.cpp", "wall_time_limit", ["wall_time_limit"] * 3),
    ("guess_slow.cpp", "time_limit", ["time_limit"] * 3),
    ("guess_crash.cpp", "signaled", ["signaled"] * 3),
])
def test_every_verdict_of_an_interactive_problem(stages: CountingStages, solution: str, verdict: str,
                                                 tests: list[str]) -> None:
    report = judge(stages, load_problem(GUESS), submission(solution))
    assert (report.verdict, statuses(report)) == (verdict, tests), report.to_json_dict()
    assert stages.compiles == 2  # the solution and the interactor, once each
    for test in report.tests:
        assert test.interactor is not None and test.usage is not None
        assert test.interactor.usage is not test.usage
        assert test.to_json_dict()["interactor"]["usage"]["wall_ms"] > 0


def test_the_interactor_says_why(stages: CountingStages) -> None:
    report = judge(stages, load_problem(GUESS), submission("guess_linear.cpp"))
    assert [t.checker_message for t in report.tests] == [
        "found in 7 guesses", "too many guesses", "too many guesses"], report.to_json_dict()
    assert [t.interactor.exit_code for t in report.tests if t.interactor] == [0, 1, 1]


def test_the_solution_gets_neither_the_input_nor_the_answer(stages: CountingStages) -> None:
    judge(stages, load_problem(GUESS), submission("guess_ok.py"))
    runs = [job for job, _ in stages.seen if job.profile != "compile"]
    solutions = [job for job in runs if job.cmd[-1] == "main.py"]
    assert solutions and all(job.stdin is None for job in solutions)
    names = {file.dest for job in solutions for file in job.files}
    assert names == {"/work/main.py"}, names


DOUBLE_INTERACTOR = """import sys
n = open(sys.argv[1]).read().strip()
print(n, flush=True)
reply = input().strip()
if "{write}" == "yes":
    open(sys.argv[2], "w").write(reply + "\\n")
"""
DOUBLE_CHECKER = """import sys
said, answer = open(sys.argv[2]).read().split(), open(sys.argv[3]).read().split()
print("saw " + " ".join(said), file=sys.stderr)
sys.exit(0 if said == answer else 1)
"""


def double_problem(directory: Path, write_output: bool) -> Path:
    """An interactive problem whose interactor accepts whatever the solution replies and
    writes it to output.txt, for a custom checker to compare with the answer."""
    (directory / "tests").mkdir(parents=True)
    (directory / "problem.toml").write_text(
        '[interactor]\nsource = "interactor.py"\nlang = "python3"\n'
        '[checker]\nkind = "custom"\nsource = "check.py"\nlang = "python3"\n')
    (directory / "interactor.py").write_text(DOUBLE_INTERACTOR.replace("{write}", "yes" if write_output else "no"))
    (directory / "check.py").write_text(DOUBLE_CHECKER)
    for name, number in (("1", 21), ("2", 50)):
        (directory / "tests" / f"{name}.in").write_text(f"{number}\n")
        (directory / "tests" / f"{name}.ans").write_text(f"{number * 2}\n")
    return directory


@pytest.mark.parametrize(("reply", "verdict"), [("n * 2", "accepted"), ("n + 1", "wrong_answer")])
def test_the_interactors_output_goes_to_the_checker(stages: CountingStages, tmp_path: Path, reply: str,
                                                    verdict: str) -> None:
    solution = tmp_path / "sol.py"
    solution.write_text(f"n = int(input())\nprint({reply}, flush=True)\n")
    report = judge(stages, load_problem(double_problem(tmp_path / "p", True)), Submission.from_file("python3", solution))
    assert (report.verdict, statuses(report)) == (verdict, [verdict] * 2), report.to_json_dict()
    expected = ["saw 42", "saw 100"] if verdict == "accepted" else ["saw 22", "saw 51"]
    assert [t.checker_message for t in report.tests] == expected


def test_an_interactor_that_leaves_no_output_is_the_judges_error(stages: CountingStages, tmp_path: Path) -> None:
    solution = tmp_path / "sol.py"
    solution.write_text("n = int(input())\nprint(n * 2, flush=True)\n")
    report = judge(stages, load_problem(double_problem(tmp_path / "p", False)), Submission.from_file("python3", solution))
    assert statuses(report) == ["judge_error"] * 2
    assert "left no output.txt" in (report.tests[0].error or "")


# Tests in parallel

class InFlight(CountingStages):
    """The runner's stages, counting the jobs in flight at once: the peak proves the
    overlap without timing anything."""

    def __init__(self, runner: Any) -> None:
        super().__init__(runner)
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def run(self, job: Job, trace: list[Any] | None) -> Result:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            return super().run(job, trace)
        finally:
            with self.lock:
                self.now -= 1


def slow_sum_problem(root: Path, tests: int) -> Path:
    """The sum problem with more tests; the solution for it sleeps 300 ms a test, so tests
    run at once are certain to be in flight together."""
    (root / "tests").mkdir(parents=True)
    for index in range(1, tests + 1):
        (root / "tests" / f"{index}.in").write_text(f"{index} {index}\n")
        (root / "tests" / f"{index}.out").write_text(f"{2 * index}\n")
    (root / "problem.toml").write_text("[limits]\ncpu_time = '1s'\nwall_time = '5s'\n")
    return root


def comparable(report: Any) -> dict[str, Any]:
    """The report without what two runs of a test measure differently."""
    data = report.to_json_dict()
    data["compile"] = data["compile"]["status"]
    for test in data["tests"]:
        test["usage"] = None
    return data


def test_parallel_tests_overlap_and_report_as_one_at_a_time(runner, language_image, tmp_path: Path) -> None:
    problem = load_problem(slow_sum_problem(tmp_path / "slow", 5))
    solution = tmp_path / "slow_sum.py"
    solution.write_text("import time\ntime.sleep(0.3)\na, b = map(int, input().split())\nprint(a + b)\n")
    heard: list[str] = []
    sequential, parallel = InFlight(runner), InFlight(runner)
    one_at_a_time = judge(sequential, problem, Submission.from_file("python3", solution))
    at_once = judge(parallel, problem, Submission.from_file("python3", solution), parallel=3,
                    on_test=lambda test: heard.append(test.name))
    assert comparable(at_once) == comparable(one_at_a_time)
    assert at_once.verdict == "accepted" and heard == ["1", "2", "3", "4", "5"]
    assert (sequential.peak, parallel.peak) == (1, 3)


@pytest.mark.parametrize("parallel", [1, 3])
def test_stop_on_failure_in_parallel_skips_what_ran_after_the_failure(stages: CountingStages, parallel: int) -> None:
    report = judge(stages, load_problem(PROBLEMS / "sum"), submission("sum_wrong.cpp"), stop_on_failure=True,
                   parallel=parallel)
    assert statuses(report) == ["accepted", "wrong_answer", "skipped"]
    assert report.verdict == "wrong_answer" and report.score == pytest.approx(100 / 3)


def test_an_interactive_problem_in_parallel_through_a_worker(worker, language_image) -> None:
    here = subprocess.run([*SANDBOX_CLI, "judge", str(GUESS), "--lang", "cpp", "--source",
                           str(SOLUTIONS / "guess_linear.cpp"), "--json"], capture_output=True, timeout=300)
    there = subprocess.run([*SANDBOX_CLI, "judge", str(GUESS), "--lang", "cpp", "--source",
                            str(SOLUTIONS / "guess_linear.cpp"), "--json", "--parallel", "3",
                            "--socket", worker.socket_path], capture_output=True, timeout=300)
    assert (here.returncode, there.returncode) == (1, 1), there.stderr
    reports = [json.loads(done.stdout) for done in (here, there)]
    assert [[t["status"] for t in r["tests"]] for r in reports] == [["accepted", "wrong_answer", "wrong_answer"]] * 2
    assert all(t["interactor"]["exit_code"] in (0, 1) for r in reports for t in r["tests"])


@pytest.mark.parametrize(("solution", "verdict", "tests"), [
    ("sum_ok.py", "accepted", ["accepted"] * 3),
    ("sum_crash.py", "runtime_error", ["runtime_error"] * 3),
    ("sum_flood.py", "output_limit", ["output_limit"] * 3),
])
def test_a_python_submission_judged_in_the_interpreter_mode(stages: CountingStages, solution: str, verdict: str,
                                                              tests: list[str]) -> None:
    path = SOLUTIONS / solution
    try:
        report = judge(stages, load_problem(PROBLEMS / "sum"), Submission.from_file("python3", path, interpreter=[]))
    finally:
        stages.runner.close_interpreters()
        stages.runner.tidy()
    assert (report.verdict, statuses(report)) == (verdict, tests), report.to_json_dict()
    runs = [job for job, _ in stages.seen if job.profile != "compile"]
    assert len(runs) == 3 and all(job.interpreter == [] for job in runs)  # every test a snippet


def test_the_interpreter_mode_is_for_python_and_not_for_interactive_problems(stages: CountingStages) -> None:
    with pytest.raises(JobError, match="the interpreter mode runs python3"):
        judge(stages, load_problem(PROBLEMS / "sum"), Submission.from_file("cpp", SOLUTIONS / "sum_ok.cpp",
                                                                          interpreter=[]))
    with pytest.raises(JobError, match="interactive problem"):
        judge(stages, load_problem(PROBLEMS / "guess"), Submission.from_file("python3", SOLUTIONS / "sum_ok.py",
                                                                            interpreter=[]))
