"""CPU overhead and fidelity: what the sandbox costs a CPU-bound program, and how faithful
the usage it reports is.

- CPU overhead: a ~1 s C loop (bench/programs/loop.c), inside through the worker and
  natively, interleaved so drift on a shared machine hits both alike. Compared: the
  loop's own CPU time (what the sandbox adds to running code: seccomp, namespaces,
  cgroup accounting) and the job's CPU time (cgroup cpu_ms vs the child's rusage).
- Timing fidelity: the CV of the reported cpu_ms over the same runs while another job
  spins on the other slot, interleaved with native runs under the same spinner: its
  target is the CV the sandbox adds to the native loop's (a shared VM's own noise, which
  the native loop shows too, is no fault of the figures). And the reported peak memory
  of a program touching exactly 10, 100 and 500 MiB (tests/programs/touch_memory.c),
  plus 0 MiB to show the baseline: its target allows for the kernel's charge
  granularity (``charge_granularity``).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import PROGRAMS, REPO, Worker, compile_program, cv_percent, show, target
from sandbox.models import Blob, InputFile, Job, Limits
from worker.client import Client

MIB = 1 << 20


def _binary_job(binary: Path, args: list[str], **limits: str) -> Job:
    """A job running a host binary copied into /work (the host image binds only /usr,
    /bin, /lib*: a binary built in a temporary directory is not visible otherwise)."""
    return Job(cmd=[f"/work/{binary.name}", *args],
               files=[InputFile(f"/work/{binary.name}", Blob(path=str(binary)), mode=0o755)],
               limits=Limits(**limits))


def calibrate(loop: Path, seconds: float) -> int:
    """Iterations for ``seconds`` of CPU, from a short native run."""
    probe = 50_000_000
    cpu_ns = int(subprocess.run([str(loop), str(probe)], capture_output=True, text=True, check=True).stdout.split()[0])
    return int(probe * seconds * 1e9 / cpu_ns)


def native_run(loop: Path, iterations: int) -> tuple[float, float]:
    """(loop CPU ms as the program saw it, the child's user+sys ms): the difference of
    RUSAGE_CHILDREN around it, as nothing else is reaped meanwhile."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([str(loop), str(iterations)], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return int(out.split()[0]) / 1e6, used * 1000


def cpu_and_fidelity(client: Client, loop: Path, spin: Path, iterations: int, runs: int) -> dict:
    """Parts 3 and 4 (CPU): interleaved inside/native runs, then the same with a spinner
    on the other slot."""
    job = _binary_job(loop, [str(iterations)], cpu_time="60s", wall_time="120s")
    inside_loop, inside_cpu, native_loop, native_cpu = [], [], [], []
    for _ in range(runs):
        result = client.run(job)
        inside_loop.append(int(result.stdout.split()[0]) / 1e6)
        inside_cpu.append(result.usage.cpu_ms)
        loop_ms, cpu_ms = native_run(loop, iterations)
        native_loop.append(loop_ms)
        native_cpu.append(cpu_ms)
    spinner = client.submit(_binary_job(spin, ["0"], cpu_time="600s", wall_time="600s"))
    time.sleep(0.5)
    contended, contended_native = [], []
    for _ in range(runs):
        contended.append(client.run(job).usage.cpu_ms)
        contended_native.append(native_run(loop, iterations)[1])
    client.cancel(spinner)
    figures = {
        "iterations": iterations, "runs": runs,
        "inside": {"loop_ms_median": statistics.median(inside_loop), "loop_cv_pct": cv_percent(inside_loop),
                   "cpu_ms_median": statistics.median(inside_cpu), "cpu_cv_pct": cv_percent(inside_cpu)},
        "native": {"loop_ms_median": statistics.median(native_loop), "loop_cv_pct": cv_percent(native_loop),
                   "cpu_ms_median": statistics.median(native_cpu), "cpu_cv_pct": cv_percent(native_cpu)},
        "contended_cpu_ms": {"median": statistics.median(contended), "cv_pct": cv_percent(contended)},
        "contended_native_cpu_ms": {"median": statistics.median(contended_native),
                                    "cv_pct": cv_percent(contended_native)},
        "raw": {"inside_loop_ms": inside_loop, "inside_cpu_ms": inside_cpu, "native_loop_ms": native_loop,
                "native_cpu_ms": native_cpu, "contended_cpu_ms": contended,
                "contended_native_cpu_ms": contended_native},
    }
    loop_overhead = 100 * (figures["inside"]["loop_ms_median"] / figures["native"]["loop_ms_median"] - 1)
    cpu_overhead = 100 * (figures["inside"]["cpu_ms_median"] / figures["native"]["cpu_ms_median"] - 1)
    figures["targets"] = [
        target("CPU overhead, the loop's own CPU time, inside vs native (%)", loop_overhead, 0.5),
        target("CPU overhead, job CPU (cgroup) vs native rusage (%)", cpu_overhead, 0.5),
        target("CV of reported cpu_ms with a spinner on the other core, beyond the native loop's CV in the "
               "same runs (%)", figures["contended_cpu_ms"]["cv_pct"] - figures["contended_native_cpu_ms"]["cv_pct"],
               1.0),
    ]
    return figures


def charge_granularity() -> int:
    """Bytes by which a memory cgroup's peak may exceed what its processes used: the kernel
    charges a cgroup 64 pages at a time per CPU (MEMCG_CHARGE_BATCH) and keeps what a
    charge has not used yet in a per-CPU reserve, which the high-water mark counts. A job
    may run on every CPU it is allowed, so a reserve on each."""
    return 64 * resource.getpagesize() * len(os.sched_getaffinity(0))


def beyond_granularity_pct(peak: float, touched: int, granularity: int) -> float:
    """The peak's error against ``touched`` bytes once the kernel's charge granularity is
    allowed for, in percent: an excess within it is no error (the counter cannot say
    better), an excess beyond it counts from there, and a peak below ``touched`` counts
    whole (no reserve makes the mark lower)."""
    excess = peak - touched
    error = max(0.0, excess - granularity) if excess > 0 else -excess
    return 100 * error / touched


def memory_fidelity(client: Client, touch: Path) -> dict:
    """Part 4 (memory): reported cgroup peak vs exactly N MiB touched. The raw error is
    recorded for every size; the target is the error beyond the kernel's charge
    granularity, as 64 pages per CPU are 5% of 10 MiB on 2 CPUs: no reading of the
    kernel's counter could meet 2% there, whatever the sandbox does."""
    granularity = charge_granularity()
    rows = {}
    for mib in (0, 10, 100, 500):
        peaks = [client.run(_binary_job(touch, [str(mib)], memory="1G")).usage.memory_peak_bytes or 0
                 for _ in range(3)]
        peak = statistics.median(peaks)
        rows[mib] = {"peak_bytes": peak, "error_pct": 100 * (peak - mib * MIB) / (mib * MIB) if mib else None,
                     "beyond_granularity_pct": beyond_granularity_pct(peak, mib * MIB, granularity) if mib else None}
    targets = [target(f"memory peak error at {mib} MiB beyond the kernel's charge granularity (%)",
                      rows[mib]["beyond_granularity_pct"], 2.0)
               for mib in (10, 100, 500)]
    return {"mib": rows, "granularity_bytes": granularity, "targets": targets}


def run(quick: bool) -> dict:
    runs, seconds = (5, 0.2) if quick else (30, 1.0)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as directory:
        build = Path(directory)
        loop = compile_program(PROGRAMS / "loop.c", build)
        spin = compile_program(REPO / "tests" / "programs" / "spin.c", build)
        touch = compile_program(REPO / "tests" / "programs" / "touch_memory.c", build)
        iterations = calibrate(loop, seconds)
        with Worker(slots=2, warm=2) as worker, Client(worker.socket) as client:
            cpu = cpu_and_fidelity(client, loop, spin, iterations, runs)
            memory = memory_fidelity(client, touch)
    print(f"\nCPU: {runs} runs of a {seconds:g} s loop; median loop CPU inside "
          f"{cpu['inside']['loop_ms_median']:.1f} ms "
          f"vs native {cpu['native']['loop_ms_median']:.1f} ms; job CPU {cpu['inside']['cpu_ms_median']:.1f} ms "
          f"(CV {cpu['inside']['cpu_cv_pct']:.2f} %) vs native {cpu['native']['cpu_ms_median']:.1f} ms "
          f"(CV {cpu['native']['cpu_cv_pct']:.2f} %)")
    for figure in cpu["targets"]:
        show(figure)
    print("memory: reported peak for N MiB touched: " + ", ".join(
        f"{mib} MiB -> {row['peak_bytes'] / MIB:.2f} MiB" for mib, row in memory["mib"].items()))
    for figure in memory["targets"]:
        show(figure)
    return {"cpu": cpu, "memory": memory}
