"""Where a warm job's time goes, for the report of a missed latency target: py-spy
samples the worker and its launchers (and their zygotes and sandbox inits) while a client
runs trivial jobs back to back, and the top frames are summed from its collapsed stacks.

Two views per process: "self" (the innermost frame of each sample) and "inclusive"
(every function on the stack: which step of the path holds the time). Samples are
wall-clock (--idle: a latency is wall time, waits included); py-spy runs with
--nonblocking so the sampled processes are never paused. Beside it, the CPU each
process spent per job (/proc utime+stime, children included once reaped), which says
what bounds throughput on 2 CPUs.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import Worker, worker_cpu_ms
from bench.worker import worker_latency

TOP = 15
RATE = 500  # samples per second and process
ROLES = ("worker (trio)", "launcher", "zygote and sandbox processes (children of the launcher)")


def _frame(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py:123)``; a shorter, stable name."""
    match = re.match(r"(.*) \((.*?):?(\d*)\)$", frame)
    if not match:
        return frame
    name, path, line = match.groups()
    return f"{name} ({Path(path).name}{':' + line if line else ''})"


def summarise(collapsed: str) -> dict:
    """Top frames by process role from py-spy's raw (collapsed) output."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        depth = sum(1 for f in frames if f.startswith("process "))  # worker > launcher > zygote, inits
        role = ROLES[min(depth, len(ROLES)) - 1]
        frames = [_frame(f) for f in frames[depth:]] or ["(no Python frame)"]
        count = int(count_text)
        totals[role] += count
        own[role][frames[-1]] += count
        for name in set(frames):
            inclusive[role][name] += count
    return {
        role: {"samples": totals[role],
               "self": [(name, round(100 * n / totals[role], 1)) for name, n in own[role].most_common(TOP)],
               # frames on (nearly) every stack (runpy, main, serve) say nothing: left out
               "inclusive": [(name, round(100 * n / totals[role], 1)) for name, n in inclusive[role].most_common()
                             if n < 0.99 * totals[role]][:TOP]}
        for role in totals
    }


def run(cmd: list[str], seconds: float) -> dict:
    """Profile ``seconds`` of back-to-back warm jobs running ``cmd``."""
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as directory:
        return _record(cmd, seconds, Path(directory) / "stacks.txt")


def _record(cmd: list[str], seconds: float, out: Path) -> dict:
    with Worker(slots=2, warm=4) as worker:
        worker_latency(worker.socket, cmd, 10)
        spy = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(worker.process.pid),
             "--subprocesses", "--nonblocking", "--idle", "--rate", str(RATE), "--duration", str(int(seconds)),
             "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        jobs: list[float] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                jobs.extend(worker_latency(worker.socket, cmd, 20))

        thread = threading.Thread(target=client)
        time.sleep(1.0)  # py-spy attaches
        before = worker_cpu_ms(worker.process.pid)
        thread.start()
        _, err = spy.communicate(timeout=seconds + 60)
        stop.set()
        thread.join()
        after = worker_cpu_ms(worker.process.pid)
    if not out.exists():
        return {"error": f"py-spy failed: {err.strip()[-500:]}"}
    per_job = {role: (after[role] - before.get(role, 0.0)) / max(1, len(jobs)) for role in after}
    return {"cmd": cmd, "seconds": seconds, "jobs": len(jobs), "cpu_ms_per_job": per_job,
            "roles": summarise(out.read_text())}
