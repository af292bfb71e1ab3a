"""The command line's cold path: `sandbox run -- /bin/true` - a process per job, as an
isolate-style judge calls it once per test - against `python3 -c pass` (the floor of
any Python CLI) and `bwrap ... /bin/true` (a C sandbox's CLI), all as the bench user;
beside them `sandbox submit -- /bin/true`, the same job through a worker already
serving (a judge that keeps one running and still calls a command per test).

Beside them, the floor of any Python CLI written with the same standard library:
`python3` importing the standard-library modules that `sandbox run -- /bin/true` loads
(read from its `-X importtime` list in the same run), and nothing else - no module of
the package, no sandbox. What `sandbox run` takes beyond that row is the engine's own
code and the sandbox's kernel work.

They run in rounds, one of each per round, so drift on a shared machine hits them
alike; the figure is each one's median wall time, and `sandbox run`'s as a multiple of
`python3 -c pass`'s (the target: within 3x). The bytecode cache and the user's cache of
compiled seccomp programs are warm (one unmeasured run of each first), as they are for
every run after a judge's first.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import Worker, show, target, wall_ms
from bench.peers import BWRAP

RUNS = 20
TARGET_RATIO = 3.0


STANDARD_LIBRARY_FLOOR = "python3 + the standard library sandbox run loads"


def commands(worker_socket: str, standard_library: list[str]) -> dict[str, list[str]]:
    sandbox_cli = str(Path(sys.executable).with_name("sandbox"))
    return {
        "python3 -c pass": ["python3", "-c", "pass"],
        STANDARD_LIBRARY_FLOOR: ["python3", "-c", "import " + ", ".join(standard_library)],
        "sandbox run": [sandbox_cli, "run", "--", "/bin/true"],
        "sandbox submit": [sandbox_cli, "submit", "--socket", worker_socket, "--", "/bin/true"],
        "bwrap": [*BWRAP, "/bin/true"],
    }


def standard_library_of_run() -> list[str]:
    """The standard-library modules `sandbox run -- /bin/true` loads, in the order it
    loads them (its ``-X importtime`` list, less the names it tried and this system has
    not, as pathlib's try of ``nt``)."""
    traced = subprocess.run([sys.executable, "-X", "importtime", "-m", "sandbox.cli", "run", "--", "/bin/true"],
                            capture_output=True, text=True, check=True)
    names: list[str] = []
    for line in traced.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[1].strip()
            top = name.split(".")[0]
            if top in sys.stdlib_module_names and importlib.util.find_spec(top) is not None and name not in names:
                names.append(name)
    return names


def run(quick: bool) -> dict[str, Any]:
    runs = 3 if quick else RUNS
    cpus = os.cpu_count() or 1
    standard_library = standard_library_of_run()
    with Worker(slots=cpus, warm=2 * cpus) as worker:
        argvs = commands(worker.socket, standard_library)
        for argv in argvs.values():
            wall_ms(argv)  # warm: bytecode, the seccomp program cache, the page cache
        ms: dict[str, list[float]] = {name: [] for name in argvs}
        for _ in range(runs):
            for name, argv in argvs.items():
                ms[name].append(wall_ms(argv))
    medians = {name: statistics.median(values) for name, values in ms.items()}
    ratio = medians["sandbox run"] / medians["python3 -c pass"]
    print(f"cli cold path ({runs} runs each, median ms): "
          + ", ".join(f"{name} {value:.1f}" for name, value in medians.items()))
    figure = target("sandbox run / python3 -c pass (median wall)", ratio, TARGET_RATIO, unit="x")
    show(figure)
    return {"runs": runs, "ms": ms, "median_ms": medians, "ratio_to_python": ratio,
            "standard_library_modules": len(standard_library), "targets": [figure]}
