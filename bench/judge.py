"""Judging end to end: one C++ submission on a 50-test problem (compile, 50 runs, the
tokens checker), done three ways in the same run on the same machine:

- ``sandbox judge``: one command; the submission is compiled once, each test runs in a
  sandbox of its own with its limits, and the checker compares in the judging process;
- the same steps as 51 ``sandbox run`` calls, as a judge without a judging layer drives
  the CLI: one compiles and collects the binary (``--collect``), then one per test gets it
  as ``--file`` with the test's input on stdin, and ``diff -bw`` compares each output;
- bubblewrap and ``diff``: the same steps with ``bwrap`` (compiling into a bound host
  directory). bwrap sets no memory, CPU or process limits and accounts for nothing: it is
  the floor of namespace isolation without judging, not an equal peer.

Every way must get every test right (the judge says ``accepted``; every diff is empty),
or the figure is recorded as an error. Wall time of the whole submission is the figure;
the median of a few repetitions.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import BWRAP

TESTS = 50
NUMBERS_PER_TEST = 20_000
SOLUTION = r"""
#include <cstdio>
int main() {
    long long total = 0, value;
    while (std::scanf("%lld", &value) == 1) total += value;
    std::printf("%lld\n", total);
}
"""
PROBLEM_TOML = """[limits]
cpu_time = "1s"
wall_time = "5s"
memory = "64M"
"""
SANDBOX = [str(Path(sys.executable).with_name("sandbox"))]  # the CLI as its users start it


def make_problem(directory: Path) -> tuple[Path, Path]:
    """The problem package and the solution's source, generated the same way every run."""
    problem = directory / "problem"
    tests = problem / "tests"
    tests.mkdir(parents=True)
    (problem / "problem.toml").write_text(PROBLEM_TOML)
    rng = random.Random(50)
    for number in range(1, TESTS + 1):
        values = [rng.randint(-10**9, 10**9) for _ in range(NUMBERS_PER_TEST)]
        (tests / f"{number:02d}.in").write_text(" ".join(map(str, values)) + "\n")
        (tests / f"{number:02d}.ans").write_text(f"{sum(values)}\n")
    source = directory / "sol.cpp"
    source.write_text(SOLUTION)
    return problem, source


def judge_command(problem: Path, source: Path, scratch: Path) -> None:
    """``sandbox judge``: one process does it all."""
    done = subprocess.run([*SANDBOX, "judge", str(problem), "--lang", "cpp", "--source", str(source), "--json"],
                          capture_output=True, check=False)
    report = json.loads(done.stdout)
    if report["verdict"] != "accepted" or len(report["tests"]) != TESTS:
        raise RuntimeError(f"sandbox judge: {report['verdict']}, {len(report['tests'])} tests")


def separate_runs(problem: Path, source: Path, scratch: Path) -> None:
    """51 ``sandbox run`` calls and 50 ``diff``s."""
    out = scratch / "collected"
    out.mkdir()
    subprocess.run(
        [*SANDBOX, "run", "--wall-time", "60s", "--memory", "1G", "--file", f"{source}:/work/sol.cpp",
         "--collect", "/work/sol", "--collect-to", str(out), "--", "g++", "-O2", "-o", "/work/sol", "/work/sol.cpp"],
        check=True, capture_output=True,
    )
    binary = out / "work" / "sol"
    binary.chmod(0o755)
    for test in sorted((problem / "tests").glob("*.in")):
        output = scratch / f"{test.stem}.out"
        with output.open("wb") as stdout:
            subprocess.run(
                [*SANDBOX, "run", "--cpu-time", "1s", "--wall-time", "5s", "--memory", "64M",
                 "--file", f"{binary}:/work/sol", "--stdin", str(test), "--", "/work/sol"],
                stdout=stdout, check=True,
            )
        _diff(output, test.with_suffix(".ans"))


def bubblewrap(problem: Path, source: Path, scratch: Path) -> None:
    """bwrap + diff: the same steps without limits, accounting or a judging layer."""
    build = scratch / "build"
    build.mkdir()
    shutil.copy(source, build / "sol.cpp")
    subprocess.run([*BWRAP, "--bind", str(build), "/work", "--chdir", "/work",
                    "g++", "-O2", "-o", "sol", "sol.cpp"], check=True, capture_output=True)
    for test in sorted((problem / "tests").glob("*.in")):
        output = scratch / f"{test.stem}.out"
        with test.open("rb") as stdin, output.open("wb") as stdout:
            subprocess.run([*BWRAP, "--ro-bind", str(build / "sol"), "/sol", "/sol"],
                           stdin=stdin, stdout=stdout, check=True)
        _diff(output, test.with_suffix(".ans"))


def _diff(output: Path, answer: Path) -> None:
    subprocess.run(["diff", "-bw", "-q", str(output), str(answer)], check=True, capture_output=True)


WAYS: dict[str, Callable[[Path, Path, Path], None]] = {
    "sandbox judge": judge_command,
    "51 x sandbox run + diff": separate_runs,
    "bwrap + diff": bubblewrap,
}


def language_image() -> None:
    """``sandbox judge`` compiles in the language image: build it first if this user's
    store lacks it (once per machine and recipe; not part of any figure)."""
    if subprocess.run([*SANDBOX, "languages"], capture_output=True, check=False).returncode != 0:
        print("  building the language image first (sandbox languages build)", flush=True)
        subprocess.run([*SANDBOX, "languages", "build"], check=True, capture_output=True)


def run(quick: bool) -> dict[str, Any]:
    language_image()
    repetitions = 1 if quick else 3
    results: dict[str, Any] = {"tests": TESTS, "numbers_per_test": NUMBERS_PER_TEST, "ways": {}}
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as name:
        directory = Path(name)
        problem, source = make_problem(directory)
        for way, steps in WAYS.items():
            if way.startswith("bwrap") and shutil.which("bwrap") is None:
                results["ways"][way] = {"error": "bwrap is not installed"}
                continue
            times = []
            try:
                for repetition in range(repetitions):
                    scratch = directory / f"{way.split()[0]}-{repetition}"
                    scratch.mkdir()
                    started = time.perf_counter()
                    steps(problem, source, scratch)
                    times.append(time.perf_counter() - started)
            except (subprocess.CalledProcessError, RuntimeError, ValueError, OSError) as exc:
                results["ways"][way] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            results["ways"][way] = {"wall_s": statistics.median(times), "runs": times}
            print(f"  {way}: {statistics.median(times):.2f} s for compile + {TESTS} tests + checks", flush=True)
    ours = results["ways"]["sandbox judge"].get("wall_s")
    for figures in results["ways"].values():
        if ours and "wall_s" in figures:
            figures["ratio_to_sandbox_judge"] = figures["wall_s"] / ours
    return results
