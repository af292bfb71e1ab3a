"""Every benchmark in one run: ``bench/run [--quick] [--only PART ...]``.

Runs the parts in order, each as it is documented in its module, records the machine
and the 1-minute load average at the start, before each part and at the end (the
machine is shared: a reader needs the conditions), profiles the hot path when a latency,
throughput or HumanEval target is missed, then writes bench/results/latest.json, bench/results/REPORT.md, the plots, and
the summary in README.md (bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    build,
    cli,
    cpu,
    density,
    doors,
    humaneval,
    images,
    judge,
    kernel_steps,
    profile,
    report,
    shape,
    worker,
)
from bench.common import REPO, load_average, machine

PARTS: dict[str, Callable[[bool], dict]] = {
    "kernel": kernel_steps.load,                                        # recorded as root by bench/run, first
    "worker": worker.run,                                               # parts 1 and 2
    "shape": shape.run,                                                 # the floor of the warm pool's design
    "cpu": cpu.run,                                                     # parts 3 and 4
    "images": lambda quick: images.measure(1 if quick else 3, 10 if quick else 200),  # part 6
    "humaneval": humaneval.run,                                         # part 7
    "judge": judge.run,                                                 # part 8
    "doors": doors.run,                                                 # part 9
    "cli": cli.run,                                                     # the CLI's cold path
    "build": build.run,                                                 # sandbox build against podman build
    # last: starting thousands of sandboxes loads the machine for a minute after it
    "density": density.run,                                             # part 5
}


def missed_speed(results: dict[str, Any]) -> bool:
    """Whether a latency or throughput target was missed (the profile explains those)."""
    part = results.get("worker", {})
    figures = [t for row in part.get("latency", {}).values() for t in row["targets"]]
    figures += part.get("throughput", {}).get("targets", [])
    figures += results.get("humaneval", {}).get("targets", [])
    return any(not f["ok"] for f in figures)


def profile_if_missed(results: dict[str, Any], quick: bool) -> None:
    if "profile" not in results and missed_speed(results):
        run_part(results, "profile", lambda q: {"static": profile.run(worker.STATIC, 5 if q else 15)}, quick)


def run_part(results: dict[str, Any], name: str, part: Callable[[bool], dict], quick: bool) -> None:
    """One part, timed, with the load it started under; a failure is recorded, not fatal."""
    print(f"\n== {name} ==", flush=True)
    start, load = time.perf_counter(), load_average()
    try:
        results[name] = part(quick)
    except Exception as exc:
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    # (a part measured before this process, the kernel profile, brings its own)
    results[name].setdefault("elapsed_s", time.perf_counter() - start)
    results[name].setdefault("load_1min_before", load)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few runs of everything: a smoke test, not figures")
    parser.add_argument("--only", nargs="*", choices=sorted(PARTS), help="run only these parts")
    args = parser.parse_args()
    # Every Python the bench starts (`sandbox run` per job above all) writes and then
    # loads its bytecode cache, as on a user's machine: a PYTHONDONTWRITEBYTECODE
    # inherited from the caller (a CI's or a tool's environment, through bench/run's su)
    # would have each run compile the project's modules anew.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick, "machine": machine(),
        "load_1min_start": load_average(),
    }
    print(f"machine: {results['machine']}\nload average (1 min) at start: {results['load_1min_start']:.2f}")
    started = time.perf_counter()
    steps = {name: part for name, part in PARTS.items() if not args.only or name in args.only}
    for name, part in steps.items():
        if name == "density":
            profile_if_missed(results, args.quick)  # on a machine density has not loaded yet
        run_part(results, name, part, args.quick)
    profile_if_missed(results, args.quick)
    results["load_1min_end"] = load_average()
    results["elapsed_s"] = time.perf_counter() - started
    print(f"\nload average (1 min) at end: {results['load_1min_end']:.2f}; took {results['elapsed_s']:.0f} s")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    # Only a full run of every part is published (latest.json, REPORT.md, README).
    prefix = "quick-" if args.quick else "partial-" if args.only else ""
    json_name = f"{prefix[:-1]}.json" if prefix else "latest.json"
    (out / json_name).write_text(json.dumps(results, indent=1, default=str))
    report.write(results, out, prefix, readme=None if prefix else REPO / "README.md")
    print(f"results: {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
