"""What every part of the benchmark shares: the machine description, statistics,
PASS/MISS against a target, and a worker process to measure against.

Targets are printed and recorded, never asserted: a benchmark on a shared 2-CPU machine
is a measurement, not a test.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.client import accepting

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "programs"


def machine() -> dict[str, Any]:
    """Kernel, CPUs (and the model the host shows the guest: runs on hosts of different
    models differ in every absolute figure), cgroup version and memory: printed next to
    every figure."""
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": models[0] if models else "unknown",
        "cgroup": "v2" if v2 else "v1 (hybrid)",
        "memory_total_mib": int(meminfo["MemTotal"].split()[0]) // 1024,
        "python": platform.python_version(),
        "user": os.environ.get("USER") or str(os.getuid()),
    }


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` took (perf_counter)."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def wall_ms(argv: list[str]) -> float:
    """Milliseconds a command took, from start to exit, its output discarded."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def write_raw(part: str, figures: dict[str, Any]) -> Path:
    """A part run on its own keeps its figures as raw JSON under bench/results/raw."""
    out = REPO / "bench" / "results" / "raw" / f"{part}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1))
    print(f"raw: {out}")
    return out


def load_average() -> float:
    """The 1-minute load average: a reader needs it to judge a shared machine's figures."""
    return os.getloadavg()[0]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..1); no interpolation, so it is a measured value."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 0.50),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "mean": statistics.fmean(values),
        "n": len(values),
    }


def cv_percent(values: list[float]) -> float:
    """Coefficient of variation in percent (sample standard deviation over the mean)."""
    return 100 * statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def target(name: str, value: float, limit: float, *, at_most: bool = True, unit: str = "") -> dict[str, Any]:
    """One figure against its target, as recorded in the JSON and the report."""
    ok = value <= limit if at_most else value >= limit
    return {"name": name, "value": value, "target": f"{'<=' if at_most else '>='} {limit:g}{unit}",
            "ok": ok, "verdict": verdict(ok)}


def show(figure: dict[str, Any]) -> None:
    print(f"  {figure['name']}: {figure['value']:.3g}  (target {figure['target']}: {figure['verdict']})")


def compile_program(source: Path, out_dir: Path, *, static: bool = True) -> Path:
    """Compile a C program of the bench or the tests; static, so it runs in any root."""
    binary = out_dir / source.stem
    flags = ["-static"] if static else []
    subprocess.run(["gcc", "-O2", *flags, "-o", str(binary), str(source)], check=True)
    return binary


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages split among their users, so a sum over many
    processes forked from one parent is not counted many times over. 0 once gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...)."""
    children = children_map() if children is None else children
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def worker_cpu_ms(worker_pid: int) -> dict[str, float]:
    """CPU ms so far, user and system apart, of the worker and of every process below it:
    its launchers, their zygotes, and the sandbox processes (live ones by their own
    time; exited ones through the time of whoever reaped them - a launcher is the
    subreaper of its sandboxes). Differences of two readings are exact: a process
    counted live in the first and reaped before the second moves into its reaper's
    children time. System time is the kernel's share: clone, page faults, namespaces."""
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = collections.Counter()
    children = children_map()
    launchers = set(children.get(worker_pid, []))
    for pid in [worker_pid, *descendants(worker_pid, children)]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile: its reaper's children time has it next time
        fields = [int(f) * tick_ms for f in stat.rsplit(")", 1)[1].split()[11:15]]
        if pid == worker_pid:
            role = "worker (trio)"
        elif pid in launchers:
            role = "launchers"
        elif b"sandbox.zygote" in cmdline:
            role = "zygotes"
        else:
            role = "sandbox processes"
        totals[f"{role} user"] += fields[0]
        totals[f"{role} sys"] += fields[1]
        reaped = "zygotes" if role == "zygotes" else "sandbox processes"
        if pid != worker_pid:
            totals[f"{reaped} user"] += fields[2]
            totals[f"{reaped} sys"] += fields[3]
    return dict(totals)


class Worker:
    """A `sandbox serve` of its own on a private socket, stopped with SIGTERM; its JSON
    log goes to bench/results/raw/ (a launcher that dies says why there)."""

    def __init__(self, slots: int, warm: int, warm_for: tuple[str, ...] = ()) -> None:
        """``warm_for``: the ``--warm-for`` specs ("count=N,image=I") besides ``warm``."""
        self.dir = tempfile.mkdtemp(prefix="bench-worker-")
        self.socket = os.path.join(self.dir, "w.sock")
        logs = REPO / "bench" / "results" / "raw"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"worker-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{slots}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sandbox.cli", "serve", "--socket", self.socket,
                 "--slots", str(slots), "--warm", str(warm), "--queue", "100000",
                 *(arg for spec in warm_for for arg in ("--warm-for", spec))],
                stderr=log, cwd=REPO,
            )
        deadline = time.monotonic() + 120 + slots
        while not accepting(self.socket):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("worker did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
