"""Density: how many sleeping sandboxes one machine holds, what each costs the
host, and what a trivial job's latency becomes meanwhile.

How: one worker whose slots each hold one sleeping job (the worker runs one job per
slot, so N concurrent sandboxes need N slots, each with its single-threaded launcher) plus
two spare slots that measure a trivial job's latency at each step. Many `sandbox run`
processes would cost the same Python interpreter per sandbox without the shared pages a
launcher's forks get, and are not how a judge would run 1,000 jobs.

Host memory per sandbox = (PSS of each busy slot's launcher and of every process below it
+ the memory charged to the job cgroups + the worker's PSS shared over its slots) /
sandboxes. PSS splits pages shared between a launcher and the sandbox init it forked, so
nothing is counted twice except the sleeping program's own few pages (also in its
cgroup).

The bench stops at the first of: the largest step, a memory budget (the machine is
shared: at most ``budget`` bytes, and never below a reserve of available memory), or a
step that took too long; it records which, and projects how far each of the machine's
own limits (memory, processes, the worker's open files) would let it go. Starting
hundreds of launchers at once drives the load average up for a minute: it runs last.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from bench.common import Worker, children_map, descendants, pss_bytes, show, summary, target
from bench.worker import STATIC, client_latency
from sandbox.models import Job, Limits
from worker.client import Client

SLEEP = ["sleep", "3600"]
PROBE_SLOTS = 2
GIB = 1 << 30


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


def host_memory(worker_pid: int, slots: int) -> dict[str, int]:
    """What the running sandboxes hold: for each launcher whose slot runs a sleeper, its
    PSS and its descendants' (the sandbox init it forked, the program), the memory
    charged to the job cgroups, and the worker's PSS shared over all slots. Idle slots
    (the latency probes, with a prepared sandbox each) are left out."""
    launchers, sandboxes, job_cgroups, running, processes = 0, 0, 0, 0, 0
    children = children_map()
    for launcher in children.get(worker_pid, []):
        try:
            if b"worker.launcher" not in Path(f"/proc/{launcher}/cmdline").read_bytes():
                continue
        except OSError:
            continue
        tree = descendants(launcher, children)
        if not any(_is_sleeper(pid) for pid in tree):
            continue
        running += 1
        processes += 1 + len(tree)
        launchers += pss_bytes(launcher)
        sandboxes += sum(pss_bytes(pid) for pid in tree)
        for pid in tree:
            found = cgroup_memory(pid) if _is_sleeper(pid) else None
            job_cgroups += found[1] if found else 0
    return {"running": running, "worker_share_pss": pss_bytes(worker_pid) * running // slots,
            "launchers_pss": launchers, "sandboxes_pss": sandboxes, "job_cgroups": job_cgroups,
            "processes": processes}


def project(row: dict[str, Any], slots: int, worker_fds: int) -> dict[str, int]:
    """How many sleeping sandboxes each of the machine's limits would allow, from the
    cost of one measured at the last step: memory (all of RAM), processes (the lowest of
    RLIMIT_NPROC, kernel.pid_max and threads-max) and the worker's open files."""
    per_memory = row["per_sandbox_bytes"]
    per_processes = row["processes"] / row["sandboxes"]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    kernel = min(int(Path(f"/proc/sys/kernel/{name}").read_text()) for name in ("pid_max", "threads-max"))
    fds_per_slot = max(1.0, worker_fds / slots)
    return {
        "memory (all of RAM)": int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // per_memory),
        "processes": int(min(kernel, nproc if nproc != resource.RLIM_INFINITY else kernel) // per_processes),
        f"worker open files (soft limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, "
        f"{fds_per_slot:.1f} per slot)": int(resource.getrlimit(resource.RLIMIT_NOFILE)[0] // fds_per_slot),
    }


def sleeping(worker_pid: int) -> int:
    """Sandboxes whose program is already running (a submitted job may still be queued)."""
    return sum(_is_sleeper(pid) for pid in descendants(worker_pid))


def run(quick: bool, budget: int = 8 * GIB, reserve: int = 8 * GIB, step_timeout_s: float = 180.0) -> dict:
    steps = [5, 20] if quick else [10, 50, 100, 250, 500, 1000]
    # The worker's slots are fixed when it starts, so they are sized from the cost of a
    # sandbox measured before (~20-32 MiB on 2026-11-28); the reserve is checked as it goes.
    estimate = 32 * (1 << 20)
    steps_fit = [s for s in steps if s * estimate <= budget]
    slots = steps_fit[-1] + PROBE_SLOTS
    rows: list[dict[str, Any]] = []
    stop = f"reached the largest step ({steps[-1]})" if steps_fit == steps else (
        f"memory budget: {steps[len(steps_fit)]} sandboxes at ~{estimate >> 20} MiB each would exceed the bench's "
        f"{budget / GIB:.0f} GiB budget (the machine is shared)")
    start = time.perf_counter()
    with Worker(slots=slots, warm=slots) as worker:
        started_s = time.perf_counter() - start
        worker_fds = len(os.listdir(f"/proc/{worker.process.pid}/fd"))
        with Client(worker.socket) as client:
            client_latency(client, STATIC, 5)
            sleepers: list[str] = []
            for step in steps_fit:
                step_start = time.perf_counter()
                job = Job(cmd=SLEEP, limits=Limits(wall_time="3600s", cpu_time="3600s"))
                sleepers += [client.submit(job) for _ in range(step - len(sleepers))]
                while sleeping(worker.process.pid) < step:
                    if time.perf_counter() - step_start > step_timeout_s:
                        stop = f"time: {step} sandboxes were not all running after {step_timeout_s:.0f} s"
                        break
                    # Read what the worker sent meanwhile (each sleeper's "accepted" and
                    # "started"): a client that lets them pile up is cut off as not reading.
                    client.ping()
                    time.sleep(0.2)
                else:
                    memory = host_memory(worker.process.pid, slots)
                    total = sum(v for k, v in memory.items() if k not in ("running", "processes"))
                    rows.append({"sandboxes": step, "ramp_s": time.perf_counter() - step_start, **memory,
                                 "per_sandbox_bytes": total / max(1, memory["running"]),
                                 "probe_ms": summary(client_latency(client, STATIC, 10 if quick else 30)),
                                 "mem_available": mem_available()})
                    print(f"  {step:5d} sandboxes: {rows[-1]['per_sandbox_bytes'] / (1 << 20):6.1f} MiB each (launcher "
                          f"{memory['launchers_pss'] / step / (1 << 20):.1f}, sandbox processes "
                          f"{memory['sandboxes_pss'] / step / (1 << 20):.1f}, cgroup "
                          f"{memory['job_cgroups'] / step / (1 << 20):.2f}), trivial job p50 "
                          f"{rows[-1]['probe_ms']['p50']:.1f} ms")
                    if mem_available() < reserve:
                        stop = f"memory reserve: under {reserve / GIB:.0f} GiB available"
                        break
                    continue
                break
            for job_id in sleepers:
                client.cancel(job_id)
            for job_id in sleepers:
                try:
                    client.wait(job_id)
                except Exception:
                    pass
    best = rows[-1] if rows else None
    projection = project(best, slots, worker_fds) if best else {}
    targets = [
        target("concurrent sleeping sandboxes", best["sandboxes"] if best else 0, 1000, at_most=False),
        target("host memory per sandbox (MiB)", best["per_sandbox_bytes"] / (1 << 20) if best else 0, 2.0),
    ]
    print(f"density: stopped at {best['sandboxes'] if best else 0}: {stop}; worker with {slots} slots started "
          f"in {started_s:.1f} s; the machine's own limits would allow: {projection}")
    for figure in targets:
        show(figure)
    return {"slots": slots, "worker_start_s": started_s, "steps": rows, "stop_reason": stop, "projection": projection,
            "budget_bytes": budget, "reserve_bytes": reserve, "targets": targets}
