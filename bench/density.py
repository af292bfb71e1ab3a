"""Density: how many sleeping sandboxes one machine holds, what each costs the
host, and what a trivial job's latency becomes meanwhile.

How: one worker with a slot for each sleeping job plus two spare slots that measure a
trivial job's latency at each step, and its default launchers (one per CPU): a slot is a
job that may run at once, not a process, and each launcher supervises its share of the
jobs on a thread each. Many `sandbox run` processes would cost a Python interpreter per
sandbox, and are not how a judge would run 1,000 jobs.

Host memory per sandbox, beyond the program's own cgroup charge = (the worker's PSS + the
launchers' PSS + the PSS of every process below them but the sleeping programs: zygotes,
spawners, sandbox inits, the spare slots' warm sandboxes) / sandboxes. PSS splits the pages
a launcher shares with what it forked, so nothing is counted twice. The programs' own
PSS and their cgroups' charge are reported beside it (the all-in figure adds both, which
counts the programs' few pages twice).

The bench stops at the first of: the largest step, a memory budget (the machine is
shared: at most ``budget`` bytes, and never below a reserve of available memory), or a
step that took too long; it records which, and projects how far each of the machine's
own limits (memory, processes and threads, the launchers' open files) would let it go.
Starting a thousand sandboxes drives the load average up for a while: it runs last.
"""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import Worker, children_map, descendants, pss_bytes, show, summary, target
from bench.worker import STATIC, client_latency
from sandbox.models import Job, Limits, Status
from worker.client import Client

SLEEP = ["sleep", "3600"]
PROBE_SLOTS = 2
CANCEL_BATCH = 200
GIB = 1 << 30
MIB = 1 << 20


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def cgroup_memory(pid: int) -> tuple[str, int] | None:
    """(memory cgroup path, bytes charged to it) of a process, v1 or v2."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            usage = Path(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
        elif controllers == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            usage = Path(f"/sys/fs/cgroup{path}/memory.current")
        else:
            continue
        try:
            return path, int(usage.read_text())
        except OSError:
            return None
    return None


def _is_sleeper(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == b"\0".join(a.encode() for a in SLEEP) + b"\0"
    except OSError:
        return False


def launchers_of(worker_pid: int, children: dict[int, list[int]]) -> list[int]:
    found = []
    for pid in children.get(worker_pid, []):
        try:
            if b"worker.launcher" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def host_memory(worker_pid: int) -> dict[str, int]:
    """What the running sandboxes cost: the worker's PSS, its launchers' PSS, the PSS of
    every process below them (sleeping programs apart), the sleeping programs' PSS and the
    memory charged to their cgroups; the number of sleepers, of processes and of threads
    (a launcher's job is a thread of it) and the most open files of a launcher."""
    children = children_map()
    launchers = launchers_of(worker_pid, children)
    below = [pid for launcher in launchers for pid in descendants(launcher, children)]
    sleepers = [pid for pid in below if _is_sleeper(pid)]
    programs = set(sleepers)
    job_cgroups = {}
    for pid in sleepers:
        found = cgroup_memory(pid)
        if found is not None:
            job_cgroups[found[0]] = found[1]
    threads = sum(_threads(pid) for pid in [worker_pid, *launchers, *below])
    return {"running": len(sleepers), "worker_pss": pss_bytes(worker_pid),
            "launchers_pss": sum(pss_bytes(pid) for pid in launchers),
            "sandboxes_pss": sum(pss_bytes(pid) for pid in below if pid not in programs),
            "programs_pss": sum(pss_bytes(pid) for pid in sleepers),
            "job_cgroups": sum(job_cgroups.values()),
            "processes": 1 + len(launchers) + len(below), "threads": threads,
            "launcher_fds": max((_open_files(pid) for pid in launchers), default=0)}


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def project(row: dict[str, Any]) -> dict[str, int]:
    """How many sleeping sandboxes each of the machine's limits would allow, from the
    cost of one measured at the last step: memory (all of RAM, all-in), processes and
    threads (the lowest of RLIMIT_NPROC, kernel.pid_max and threads-max; each sandbox's
    processes and its launcher thread take a pid) and the launchers' open files (the
    worker raises its soft limit to the hard one, which the launchers inherit)."""
    sandboxes = row["sandboxes"]
    per_memory = row["per_sandbox_bytes"]
    per_task = row["threads"] / sandboxes
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    kernel = min(int(Path(f"/proc/sys/kernel/{name}").read_text()) for name in ("pid_max", "threads-max"))
    hard_files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    launchers = row["launchers"]
    fds_per_job = max(1.0, row["launcher_fds"] * launchers / sandboxes)
    return {
        "memory (all of RAM)": int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // per_memory),
        f"pids ({per_task:.1f} tasks each)": int(min(kernel, nproc if nproc != resource.RLIM_INFINITY else kernel)
                                                 // per_task),
        f"launchers' open files ({launchers} x hard limit {hard_files}, {fds_per_job:.1f} per job)":
            int(launchers * hard_files // fds_per_job),
    }


def sleeping(worker_pid: int) -> int:
    """Sandboxes whose program is already running (a submitted job may still be queued)."""
    return sum(_is_sleeper(pid) for pid in descendants(worker_pid))


def run(quick: bool, budget: int = 8 * GIB, reserve: int = 8 * GIB, step_timeout_s: float = 300.0) -> dict:
    steps = [5, 20] if quick else [10, 100, 250, 500, 1000, 2000, 3000, 5000]
    # The worker's slots are fixed when it starts, so they are sized from the cost of a
    # sandbox measured before (under 1 MiB all-in on 2026-12-06); the reserve is checked as it goes.
    estimate = 1 << 20
    steps_fit = [s for s in steps if s * estimate <= budget]
    slots = steps_fit[-1] + PROBE_SLOTS
    rows: list[dict[str, Any]] = []
    stop = f"reached the largest step ({steps[-1]})" if steps_fit == steps else (
        f"memory budget: {steps[len(steps_fit)]} sandboxes at ~{estimate >> 20} MiB each would exceed the bench's "
        f"{budget / GIB:.0f} GiB budget (the machine is shared)")
    start = time.perf_counter()
    # Warm sandboxes for the probes only (a launcher keeps its slots' share, rounded up):
    # the sleepers' sandboxes are made as they come, as a burst of jobs' are.
    with Worker(slots=slots, warm=PROBE_SLOTS) as worker:
        started_s = time.perf_counter() - start
        with Client(worker.socket) as client:
            launchers = client.stats()["launchers"]
            client_latency(client, STATIC, 5)
            idle_ms = summary(client_latency(client, STATIC, 10 if quick else 30))
            print(f"  idle worker ({launchers} launchers): trivial job p50 {idle_ms['p50']:.1f} ms")
            available_idle = mem_available()
            sleepers: list[str] = []

            def measure(sandboxes: int, ramp_s: float) -> None:
                memory = host_memory(worker.process.pid)
                running = max(1, memory["running"])
                overhead = memory["worker_pss"] + memory["launchers_pss"] + memory["sandboxes_pss"]
                available = mem_available()
                rows.append({"sandboxes": sandboxes, "ramp_s": ramp_s, "launchers": launchers, **memory,
                             "overhead_per_sandbox_bytes": overhead / running,
                             "per_sandbox_bytes": (overhead + memory["programs_pss"] + memory["job_cgroups"]) / running,
                             # The machine's MemAvailable fell by this much per sandbox since the
                             # idle worker: kernel memory too (namespaces, page tables), and
                             # whatever else the shared machine did meanwhile.
                             "available_drop_per_sandbox_bytes": (available_idle - available) / running,
                             "probe_ms": summary(client_latency(client, STATIC, 10 if quick else 30)),
                             "mem_available": available})
                row = rows[-1]
                print(f"  {sandboxes:5d} sandboxes: {row['overhead_per_sandbox_bytes'] / MIB:5.2f} MiB each beyond the "
                      f"program's cgroup (worker {memory['worker_pss'] / running / MIB:.2f}, launchers "
                      f"{memory['launchers_pss'] / running / MIB:.2f}, sandbox processes "
                      f"{memory['sandboxes_pss'] / running / MIB:.2f}; program "
                      f"{memory['programs_pss'] / running / MIB:.2f} PSS, cgroup "
                      f"{memory['job_cgroups'] / running / MIB:.2f}; MemAvailable fell "
                      f"{row['available_drop_per_sandbox_bytes'] / MIB:.2f} each), {memory['threads']} tasks, "
                      f"launcher fds up to {memory['launcher_fds']}, trivial job p50 {row['probe_ms']['p50']:.1f} ms "
                      f"(idle {idle_ms['p50']:.1f}), ramp {ramp_s:.1f} s")

            for step in steps_fit:
                step_start = time.perf_counter()
                job = Job(cmd=SLEEP, limits=Limits(wall_time="3600s", cpu_time="3600s"))
                sleepers += [client.submit(job) for _ in range(step - len(sleepers))]
                while (now_sleeping := sleeping(worker.process.pid)) < step:
                    # (also reads what the worker sent meanwhile - each sleeper's "accepted"
                    # and "started": a client that lets them pile up is cut off as not reading)
                    failed = {k: v for k, v in client.stats()["by_status"].items() if k != "ok"}
                    if failed:  # a sleeper ended before its time: the machine's limits reached
                        stop = f"{step} sandboxes: {failed} with {now_sleeping} running (errors below)"
                        measure(now_sleeping, time.perf_counter() - step_start)
                        break
                    if time.perf_counter() - step_start > step_timeout_s:
                        stop = f"time: {step} sandboxes were not all running after {step_timeout_s:.0f} s"
                        break
                    time.sleep(0.2)
                else:
                    measure(step, time.perf_counter() - step_start)
                    if mem_available() < reserve:
                        stop = f"memory reserve: under {reserve / GIB:.0f} GiB available"
                        break
                    continue
                break
            errors: Counter[str] = Counter()
            # In batches: each cancel is answered by an event, which the client reads only
            # as it waits - thousands at once would fill the worker's queue for this
            # connection, and the worker cuts off a client that does not read.
            for first in range(0, len(sleepers), CANCEL_BATCH):
                batch = sleepers[first:first + CANCEL_BATCH]
                for job_id in batch:
                    client.cancel(job_id)
                for job_id in batch:
                    try:
                        result = client.wait(job_id)
                    except Exception as exc:
                        errors[f"{type(exc).__name__}: {exc}"] += 1
                        continue
                    if result.status is Status.INTERNAL_ERROR:
                        errors[str(result.error)] += 1
            if errors:
                stop += "; " + "; ".join(f"{count} x {error}" for error, count in errors.most_common(3))
    best = rows[-1] if rows else None
    at_1000 = next((row for row in rows if row["sandboxes"] == 1000), best)
    projection = project(best) if best else {}
    targets = [
        target("concurrent sleeping sandboxes", best["sandboxes"] if best else 0, 1000, at_most=False),
        target("host memory per sandbox beyond its cgroup (MiB)",
               at_1000["overhead_per_sandbox_bytes"] / MIB if at_1000 else 0, 2.0),
        target("trivial job p50 among the sleepers / idle worker's",
               at_1000["probe_ms"]["p50"] / idle_ms["p50"] if at_1000 else 0, 2.0),
    ]
    print(f"density: stopped at {best['sandboxes'] if best else 0}: {stop}; worker with {slots} slots on "
          f"{launchers} launchers started in {started_s:.1f} s; the machine's own limits would allow: {projection}")
    for figure in targets:
        show(figure)
    return {"slots": slots, "launchers": launchers, "worker_start_s": started_s, "idle_probe_ms": idle_ms,
            "mem_available_idle": available_idle,
            "steps": rows, "stop_reason": stop, "projection": projection, "budget_bytes": budget,
            "reserve_bytes": reserve, "targets": targets}
