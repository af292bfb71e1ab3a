"""Worker latency and throughput against bubblewrap, measured in one run on one machine.

    .venv/bin/python bench/worker.py [--jobs 300] [--quick]

Run it as the user the worker would run as, with cgroups delegated (scripts/test does
that for its test user). Prints the machine, each figure, its ratio to bwrap measured in
the same run and PASS/MISS against the targets of issue 5; writes the raw numbers to
bench/results/raw/worker-<time>.json. Targets are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sandbox.models import Job  # noqa: E402
from worker.client import Client  # noqa: E402

STATIC = ["/usr/bin/busybox", "true"]
PYTHON = ["python3", "-c", "pass"]
BWRAP = [
    "bwrap", "--unshare-all", "--die-with-parent", "--new-session",
    "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "mean": statistics.fmean(values)}


def machine() -> dict[str, object]:
    cgroup = "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1/hybrid"
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cgroup": cgroup, "python": platform.python_version()}


class Worker:
    def __init__(self, slots: int, warm: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-worker-")
        self.socket = os.path.join(self.dir, "w.sock")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandbox.cli", "serve", "--socket", self.socket, "--slots", str(slots),
             "--warm", str(warm)],
            stderr=subprocess.DEVNULL, cwd=REPO,
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("worker did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def worker_latency(socket_path: str, cmd: list[str], count: int, pause: float = 0.0) -> list[float]:
    latencies = []
    with Client(socket_path) as client:
        for _ in range(count):
            start = time.perf_counter()
            result = client.run(Job(cmd=cmd))
            latencies.append((time.perf_counter() - start) * 1000)
            if result.status.value != "ok":
                raise RuntimeError(f"job failed: {result}")
            if pause:
                time.sleep(pause)
    return latencies


def bwrap_latency(cmd: list[str], count: int, pause: float = 0.0) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        subprocess.run([*BWRAP, *cmd], check=True)
        latencies.append((time.perf_counter() - start) * 1000)
        if pause:
            time.sleep(pause)
    return latencies


def worker_throughput(socket_path: str, cmd: list[str], total: int, concurrency: int) -> float:
    per_thread = max(1, total // concurrency)

    def client_loop() -> None:
        with Client(socket_path) as client:
            ids = []
            for _ in range(per_thread):
                ids.append(client.submit(Job(cmd=cmd)))
            for job_id in ids:
                client.wait(job_id)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return per_thread * concurrency / (time.perf_counter() - start)


def bwrap_throughput(cmd: list[str], total: int, parallel: int = 2) -> float:
    command = " ".join(BWRAP + cmd)
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(parallel), "-I{}", "sh", "-c", command],
        input="\n".join(str(n) for n in range(total)).encode(), check=True,
    )
    return total / (time.perf_counter() - start)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--idle-jobs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="fewer jobs, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.idle_jobs = 40, 8
    report: dict[str, object] = {"machine": machine(), "jobs": args.jobs}
    print("machine:", report["machine"])
    slots = os.cpu_count() or 2
    worker = Worker(slots=slots, warm=2 * slots)
    try:
        for name, cmd in (("static", STATIC), ("python", PYTHON)):
            worker_latency(worker.socket, cmd, 10)  # warm-up
            warm = summary(worker_latency(worker.socket, cmd, args.jobs))
            idle = summary(worker_latency(worker.socket, cmd, args.idle_jobs, pause=0.2))
            bwrap = summary(bwrap_latency(cmd, args.jobs))
            report[f"latency_{name}"] = {"worker_warm": warm, "worker_after_idle": idle, "bwrap": bwrap}
            print(f"\n{name} ({' '.join(cmd)}), latency in ms")
            print(f"  worker warm   p50 {warm['p50']:7.2f}  p99 {warm['p99']:7.2f}")
            print(f"  worker idle   p50 {idle['p50']:7.2f}  p99 {idle['p99']:7.2f}  (one job every 200 ms)")
            print(f"  bwrap         p50 {bwrap['p50']:7.2f}  p99 {bwrap['p99']:7.2f}")
            print(f"  warm p50 / bwrap p50 = {warm['p50'] / bwrap['p50']:.2f}  (target <= 0.5: "
                  f"{verdict(warm['p50'] <= 0.5 * bwrap['p50'])})")
            print(f"  warm p99 / bwrap p99 = {warm['p99'] / bwrap['p99']:.2f}  (target <= 1.0: "
                  f"{verdict(warm['p99'] <= bwrap['p99'])})")
            print(f"  idle p50 / warm p50  = {idle['p50'] / warm['p50']:.2f}  (target <= 1.5: "
                  f"{verdict(idle['p50'] <= 1.5 * warm['p50'])})")
        bwrap_rate = bwrap_throughput(STATIC, args.jobs)
        print(f"\nthroughput, static, jobs/s (bwrap via xargs -P2: {bwrap_rate:.0f}/s)")
        rates = {}
        for concurrency in (1, 2, 8, 32):
            rate = worker_throughput(worker.socket, STATIC, args.jobs, concurrency)
            rates[concurrency] = rate
            print(f"  concurrency {concurrency:2d}: {rate:6.0f}/s  ratio {rate / bwrap_rate:.2f}  "
                  f"(target >= 1.0: {verdict(rate >= bwrap_rate)})")
        report["throughput_static"] = {"worker": rates, "bwrap_xargs_p2": bwrap_rate}
    finally:
        worker.stop()
    out = REPO / "bench" / "results" / "raw"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"worker-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nraw: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
