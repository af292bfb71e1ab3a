"""Where a warm static job's CPU goes, per process and per kernel step, against bwrap.

The per-process figures elsewhere come from /proc (user and system time as ticks); they
cannot say which kernel work a job costs. This samples the whole machine with ``perf
record -a -g`` (cpu-clock, every CPU, kernel call chains) while trivial jobs run back to
back, first through the worker, then through bwrap, and sums each sample's period by
process role and by kernel step (the system call its chain entered by, or the page fault,
interrupt or kernel thread it ran in), divided by the jobs run. The kernel threads'
deferred work (a network namespace's teardown, a cgroup's release) is counted too: it is
what a job costs the machine, for both runners.

Kernel call chains need root (``perf_event_paranoid``), the jobs must run as the bench
user: ``bench/run`` calls ``record`` as root before the other parts, which runs ``loop``
as that user and hands it the go once perf is recording; ``bench/main.py`` then takes
the figures into the run's results (``load``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STATIC = ["/usr/bin/busybox", "true"]
JOBS = {"worker": 2000, "bwrap": 1000}
FREQUENCY_HZ = 1999
KERNEL_FLOOR = 0xFFFF800000000000  # x86-64: addresses above are the kernel's
# What the syscall dispatcher calls, down to the call's name (inlined entries show their
# inner function: ksys_write, __sys_recvmsg, do_seccomp).
SYSCALL_PREFIXES = ("__x64_sys_", "__do_sys_", "__se_sys_", "___sys_", "__sys_", "ksys_", "do_")
SYSCALL_PATHS = {
    "syscall_trace_enter": "seccomp checks on entry",
    "exit_to_user_mode_loop": "return to user space",
    "syscall_exit_to_user_mode": "return to user space",
}
ENV_FILE = "BENCH_KERNEL_STEPS"  # where bench/run left the figures for bench/main.py
CLIENT = "client (the timing loop)"
ROLES = {
    "python": "worker (trio)",
    "sandbox-launch": "launchers",
    "sandbox-zygote": "zygote",
    "sandbox-spawn": "sandbox processes",
    "sandbox-init": "sandbox processes",
    "sandbox-program": "sandbox processes",
    "busybox": "sandbox processes",
    "bwrap": "sandbox processes",
    "bench-client": CLIENT,
}
INTERRUPT_FRAMES = ("asm_sysvec_", "sysvec_", "asm_common_interrupt", "handle_softirqs", "__irq_exit_rcu")
CGROUP_FRAMES = ("cgroup", "__cgroup", "css_", "kernfs_")
KERNEL_THREADS = ("kworker", "ksoftirqd", "rcu", "kthreadd", "migration")


# ---- as the bench user: the jobs ---------------------------------------------------
def loop(runner: str, count: int) -> None:
    """Warm up, say "ready", wait for the go on stdin, run ``count`` jobs, say "done"."""
    from sandbox.linux.syscalls import set_process_name

    set_process_name("bench-client")
    if runner == "worker":
        from bench.common import Worker
        from bench.worker import client_latency
        from worker.client import Client

        with Worker(slots=2, warm=4) as worker, Client(worker.socket) as client:
            client_latency(client, STATIC, 50)
            _run_on_go(lambda: client_latency(client, STATIC, count))
    else:
        from bench.peers import BWRAP

        def jobs() -> None:
            for _ in range(count):
                subprocess.run([*BWRAP, *STATIC], check=True)

        for _ in range(20):
            subprocess.run([*BWRAP, *STATIC], check=True)
        _run_on_go(jobs)


def _run_on_go(jobs: Any) -> None:
    print("ready", flush=True)
    if sys.stdin.readline() != "go\n":
        return  # perf did not start: no jobs to sample
    jobs()
    print("done", flush=True)


# ---- as root: perf around the loops -------------------------------------------------
def record(user: str, python: str, src: Path, quick: bool) -> dict[str, Any]:
    """Both runners' figures (the loops run as ``user``, with ``python`` in ``src``)."""
    started = time.perf_counter()
    figures: dict[str, Any] = {"frequency_hz": FREQUENCY_HZ, "load_1min_before": os.getloadavg()[0]}
    for runner, count in JOBS.items():
        count = count // 10 if quick else count
        with tempfile.TemporaryDirectory(prefix="bench-kernel-") as directory:
            data = Path(directory) / "perf.data"
            script = _perf_script(_sample(user, python, src, runner, count, data))
            figures[runner] = {"jobs": count, **summarise(script, count)}
    figures["elapsed_s"] = time.perf_counter() - started
    return figures


def _sample(user: str, python: str, src: Path, runner: str, count: int, data: Path) -> Path:
    """``count`` jobs of ``runner`` run as ``user`` while perf records into ``data``."""
    command = f"cd {shlex.quote(str(src))} && exec {shlex.quote(python)} -m bench.kernel_steps loop {runner} {count}"
    jobs = subprocess.Popen(["su", "-s", "/bin/bash", user, "-c", command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert jobs.stdin is not None and jobs.stdout is not None
    perf: subprocess.Popen[bytes] | None = None
    try:
        if jobs.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {runner} loop did not start")
        perf = subprocess.Popen(["perf", "record", "-q", "-a", "-g", "-F", str(FREQUENCY_HZ), "-o", str(data)],
                                stdout=subprocess.DEVNULL)
        # perf makes its output file once every CPU's buffer is mapped: recording from then on
        deadline = time.monotonic() + 30
        while not data.exists() or data.stat().st_size == 0:
            if perf.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("perf record did not start")
            time.sleep(0.05)
        jobs.stdin.write("go\n")
        jobs.stdin.flush()
        if jobs.stdout.readline().strip() != "done":
            raise RuntimeError(f"the {runner} loop failed")
        return data
    finally:
        if perf is not None and perf.poll() is None:
            perf.send_signal(signal.SIGINT)  # perf writes its file out and ends
            perf.wait(timeout=60)
        jobs.stdin.close()
        jobs.wait(timeout=120)


def _perf_script(data: Path) -> str:
    return subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,period,ip,sym"], check=True,
                          capture_output=True, text=True).stdout


def role_of(comm: str) -> str | None:
    """The process role a sample's command name belongs to (None: the idle task)."""
    if comm == "swapper":
        return None
    if comm.startswith(KERNEL_THREADS):
        return "kernel threads (deferred work)"
    return ROLES.get(comm, "other processes")


def step_of(frames: list[tuple[int, str]]) -> str:
    """The kernel step of a call chain (innermost frame first): the system call it came
    in by (the frame the syscall dispatcher called; a clone's new network namespace
    apart, the largest piece of one), else the fault or interrupt it ran in, or a kernel
    thread's work item; user space when the sample was taken there."""
    if not frames or frames[0][0] < KERNEL_FLOOR:
        return "user space"
    names = [name for address, name in frames if address >= KERNEL_FLOOR]
    if "do_syscall_64" in names:
        inner = [name for name in names[:names.index("do_syscall_64")] if name != "x64_sys_call"]
        if not inner:
            return "system call entry"
        call = inner[-1]
        if call in SYSCALL_PATHS:
            return SYSCALL_PATHS[call]
        for prefix in SYSCALL_PREFIXES:
            call = call.removeprefix(prefix)
        return "clone: network namespace" if call.startswith("clone") and "copy_net_ns" in names else call
    if "exc_page_fault" in names:
        return "page faults"
    if any(name.startswith(INTERRUPT_FRAMES) for name in names):
        return "interrupts"
    if "process_one_work" in names:
        work = names.index("process_one_work")
        return f"work: {names[work - 1]}" if work else "work"
    return "task start" if "ret_from_fork" in names else "other kernel work"


def mechanism_of(frames: list[tuple[int, str]]) -> str | None:
    """"cgroups" or "seccomp" when a kernel frame of the chain is theirs - the two
    mechanisms bwrap does without, whose measured cost the CPU target allows - else None.
    Managing cgroups is cgroupfs (kernfs) and the cgroup core (making, joining, reading
    and releasing one); a memory cgroup's charging of pages, which every process pays
    wherever it runs, is neither."""
    for address, name in frames:
        if address >= KERNEL_FLOOR:
            if "seccomp" in name:
                return "seccomp"
            if name.startswith(CGROUP_FRAMES):
                return "cgroups"
    return None


def summarise(script: str, jobs: int) -> dict[str, Any]:
    """ms per job by role and by (role, step) from ``perf script`` output."""
    by_role: dict[str, float] = collections.defaultdict(float)
    by_step: dict[tuple[str, str], float] = collections.defaultdict(float)
    by_mechanism: dict[str, float] = collections.defaultdict(float)
    for block in script.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        head = lines[0].rsplit(None, 1)
        if len(head) != 2 or not head[1].isdigit():
            continue
        role = role_of(head[0].strip())
        if role is None:
            continue
        frames = []
        for line in lines[1:]:
            address, _, name = line.strip().partition(" ")
            try:
                frames.append((int(address, 16), name))
            except ValueError:
                continue
        ms = int(head[1]) / 1e6 / jobs
        by_role[role] += ms
        by_step[(role, step_of(frames))] += ms
        mechanism = mechanism_of(frames)
        if mechanism and role != CLIENT:
            by_mechanism[mechanism] += ms
    steps = sorted(by_step.items(), key=lambda item: -item[1])
    return {"ms_per_job": dict(by_role), "steps": [[role, step, ms] for (role, step), ms in steps],
            "mechanisms_ms_per_job": dict(by_mechanism)}


# ---- in bench/main.py ----------------------------------------------------------------
def load(quick: bool) -> dict[str, Any]:
    """The figures ``bench/run`` recorded as root at the start of this run."""
    path = os.environ.get(ENV_FILE)
    if not path or not Path(path).exists():
        raise RuntimeError("no kernel profile: bench/run records it as root (perf needs root for kernel samples)")
    figures: dict[str, Any] = json.loads(Path(path).read_text())
    from bench.common import show, target

    ours, bwrap = (job_cost(figures[runner]) for runner in ("worker", "bwrap"))
    allowed = sum(figures["worker"]["mechanisms_ms_per_job"].values())
    allowed -= sum(figures["bwrap"]["mechanisms_ms_per_job"].values())
    name = ("static: CPU per warm job by perf (every process and kernel thread), worker / "
            "(bwrap + the worker's measured cgroup and seccomp work)")
    figures["targets"] = [target(name, ours / (bwrap + allowed), 1.0)]
    print(f"CPU per warm static job (perf): worker {ours:.2f} ms, bwrap {bwrap:.2f} ms, the worker's cgroups and "
          f"seccomp {allowed:.2f} ms")
    for figure in figures["targets"]:
        show(figure)
    return figures


def job_cost(figures: dict[str, Any]) -> float:
    """ms per job of every process but the client, and the kernel threads' deferred work."""
    return float(sum(ms for role, ms in figures["ms_per_job"].items() if role != CLIENT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    looping = commands.add_parser("loop")
    looping.add_argument("runner", choices=sorted(JOBS))
    looping.add_argument("count", type=int)
    recording = commands.add_parser("record")
    recording.add_argument("--user", required=True)
    recording.add_argument("--python", required=True, help="the bench user's interpreter")
    recording.add_argument("--src", required=True, type=Path, help="the bench user's copy of the tree")
    recording.add_argument("--out", required=True, type=Path)
    recording.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.command == "loop":
        loop(args.runner, args.count)
    else:
        args.out.write_text(json.dumps(record(args.user, args.python, args.src, args.quick), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
