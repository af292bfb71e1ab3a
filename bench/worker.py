"""Latency of a trivial job and throughput, through the worker
socket (``--warm``) and through every peer of bench/peers.py, measured in one run.

    .venv/bin/python bench/worker.py [--quick]      (or everything: bench/run)

Run it as the user the worker would run as, with cgroups delegated (bench/run does that).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peers
from bench.common import Worker, machine, show, summary, target, worker_cpu_ms, write_raw
from sandbox.models import Job
from worker.client import Client

STATIC = ["/usr/bin/busybox", "true"]
PYTHON = ["python3", "-c", "pass"]
CONCURRENCY = (1, 2, 8, 32)
# What a job cgroup and a seccomp filter cost a sandbox (bwrap does neither): the CPU per
# warm job may exceed bwrap's by this much at most.
CGROUP_AND_FILTER_MS = 0.7
THROUGHPUT_ROUNDS = 5  # rounds of ``jobs`` per runner and concurrency (the median is the figure)
LATENCY_BLOCKS = 10  # the warm latency runs come in this many blocks per runner, the runners taking turns
SLOW_PEERS = ("podman", "sandbox run")  # ~0.2-0.5 s a job: fewer runs, one go
WORKER, INTERPRETER = "worker", "worker, interpreter mode"  # the worker's rows
IDLE_PAUSE_S = 0.2  # "after idle": one job every 200 ms, past the ~20 ms RCU stall window


def worker_latency(socket_path: str, cmd: list[str], count: int, pause: float = 0.0,
                   interpreter: list[str] | None = None) -> list[float]:
    """Client-side ms per job, submit to result, one job at a time on one connection
    (with ``interpreter``: in the interpreter mode, those modules imported ahead)."""
    with Client(socket_path) as client:
        return client_latency(client, cmd, count, pause, interpreter)


def client_latency(client: Client, cmd: list[str], count: int, pause: float = 0.0,
                   interpreter: list[str] | None = None) -> list[float]:
    """``worker_latency`` on a connection the caller already has."""
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        result = client.run(Job(cmd=cmd, interpreter=interpreter))
        latencies.append((time.perf_counter() - start) * 1000)
        if result.status.value != "ok":
            raise RuntimeError(f"job failed: {result}")
        if pause:
            time.sleep(pause)
    return latencies


def worker_throughput(socket_path: str, cmd: list[str], total: int, concurrency: int) -> float:
    """Jobs/s with ``concurrency`` clients, each keeping its share of jobs in flight."""
    per_thread = max(1, total // concurrency)

    def client_loop() -> None:
        with Client(socket_path) as client:
            ids = [client.submit(Job(cmd=cmd)) for _ in range(per_thread)]
            for job_id in ids:
                client.wait(job_id)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return per_thread * concurrency / (time.perf_counter() - start)


def latency(worker: Worker, peer_list: list[peers.Peer], jobs: int, idle_jobs: int, slow_jobs: int) -> dict:
    """Part 1: p50/p95/p99 warm and after idle, per command, for the worker and each peer,
    with the CPU a job costs (all processes, user + system). ``jobs`` warm runs each: a
    p99 needs about a thousand (of 200, it is the second-slowest job, and its ratio to
    bwrap's went from 0.60 to 1.08 between two runs of the same code). The warm runs
    come in ``LATENCY_BLOCKS`` blocks, the runners taking turns (``warm_in_turns``).
    Slow peers (podman, `sandbox run`: ~0.2-0.5 s a job) get ``slow_jobs`` runs."""
    out: dict[str, Any] = {}
    for name, cmd in (("static", STATIC), ("python", PYTHON)):
        worker_latency(worker.socket, cmd, 10)  # warm-up: caches, the launchers' first jobs
        fast = {peer.name: peer for peer in peer_list if peer.name not in SLOW_PEERS}
        interpreter = [] if name == "python" else None  # the opt-in mode: a fork per job, not a fresh python3
        warm = warm_in_turns(worker, fast, cmd, jobs, interpreter)
        rows: dict[str, Any] = {}
        for runner, (latencies, cpu_ms_per_job) in warm.items():
            if runner in fast:
                after_idle = peers.measure(fast[runner], cmd, idle_jobs, pause=IDLE_PAUSE_S)["ms"]
            else:
                after_idle = worker_latency(worker.socket, cmd, idle_jobs, pause=IDLE_PAUSE_S,
                                            interpreter=interpreter if runner == INTERPRETER else None)
            rows[runner] = {"warm": summary(latencies), "after_idle": summary(after_idle),
                            "cpu_ms_per_job": cpu_ms_per_job}
        for peer in peer_list:
            if peer.name in SLOW_PEERS:
                measured = peers.measure(peer, cmd, slow_jobs)
                idle_runs = peers.measure(peer, cmd, min(idle_jobs, slow_jobs), pause=IDLE_PAUSE_S)["ms"]
                rows[peer.name] = {"warm": summary(measured["ms"]), "after_idle": summary(idle_runs),
                                   "cpu_ms_per_job": measured["cpu_ms_per_job"]}
        order = [WORKER, INTERPRETER, *(peer.name for peer in peer_list)]  # the tables' order
        rows = {runner: rows[runner] for runner in order if runner in rows}
        warm_row, idle, bwrap = rows["worker"]["warm"], rows["worker"]["after_idle"], rows["bwrap"]["warm"]
        targets = [_p50_target(name, rows)]
        targets += [
            target(f"{name}: worker warm p99 / bwrap p99", warm_row["p99"] / bwrap["p99"], 1.0),
            target(f"{name}: worker after-idle p50 / warm p50", idle["p50"] / warm_row["p50"], 1.5),
        ]
        if name == "static":
            targets.append(target(
                "static: CPU per warm job, worker - bwrap (ms; bwrap makes no cgroup and installs no filter)",
                rows["worker"]["cpu_ms_per_job"] - rows["bwrap"]["cpu_ms_per_job"], CGROUP_AND_FILTER_MS))
        out[name] = {"cmd": cmd, "ms": rows, "targets": targets}
        print(f"\nlatency, {name} ({' '.join(cmd)}), ms: p50 / p95 / p99, warm | after idle; CPU per warm job")
        for peer_name, row in rows.items():
            w, i = row["warm"], row["after_idle"]
            print(f"  {peer_name:12s} {w['p50']:7.2f} {w['p95']:7.2f} {w['p99']:7.2f} | "
                  f"{i['p50']:7.2f} {i['p95']:7.2f} {i['p99']:7.2f}   x bwrap p50 {w['p50'] / bwrap['p50']:.2f}"
                  f"   CPU/job {row['cpu_ms_per_job']:.1f} ms")
        for figure in targets:
            show(figure)
    return out


def warm_in_turns(worker: Worker, fast: dict[str, peers.Peer], cmd: list[str], jobs: int,
                  interpreter: list[str] | None) -> dict[str, tuple[list[float], float]]:
    """``jobs`` warm runs of ``cmd`` per runner - the worker, each fast peer, and with
    ``interpreter`` the worker's interpreter mode (its own row: not a fresh process, so
    shown beside the others, not held to their targets) - in ``LATENCY_BLOCKS`` blocks,
    the runners taking turns, so that the machine's drift over a minute (its neighbours
    come and go) falls on all of them alike: each runner's latencies and CPU per job.

    The worker's CPU for a block runs from its start to the start of the worker's next
    block (or the end), so it includes what the worker does for the block's jobs after
    the last answer - replacing the warm sandboxes they took, making the next spare
    snippets - while the peers run (and the little its idle loops cost meanwhile)."""
    per_block = max(1, jobs // LATENCY_BLOCKS)
    runners = [WORKER, *fast, *([INTERPRETER] if interpreter is not None else [])]
    if interpreter is not None:
        worker_latency(worker.socket, cmd, 10, interpreter=interpreter)  # warm-up: each launcher's template
    latencies: dict[str, list[float]] = {runner: [] for runner in runners}
    cpu_ms: dict[str, float] = dict.fromkeys(runners, 0.0)
    open_window: tuple[str, float] | None = None  # the worker's runner whose CPU is being counted, from when

    def worker_reading() -> float:
        return sum(worker_cpu_ms(worker.process.pid).values())

    for _ in range(LATENCY_BLOCKS):
        for runner in runners:
            if runner not in fast:  # the worker's
                now = worker_reading()
                if open_window is not None:
                    cpu_ms[open_window[0]] += now - open_window[1]
                open_window = (runner, now)
                latencies[runner] += worker_latency(worker.socket, cmd, per_block,
                                                    interpreter=interpreter if runner == INTERPRETER else None)
            else:
                measured = peers.measure(fast[runner], cmd, per_block)
                latencies[runner] += measured["ms"]
                cpu_ms[runner] += measured["cpu_ms_per_job"] * per_block
    if open_window is not None:
        cpu_ms[open_window[0]] += worker_reading() - open_window[1]
    return {runner: (latencies[runner], cpu_ms[runner] / len(latencies[runner])) for runner in runners}


def _p50_target(name: str, rows: dict[str, Any]) -> dict[str, Any]:
    """The static job against bwrap's p50 (half of it); the interpreted one by its
    overhead over native instead: ``python3 -c pass`` natively already takes most of
    bwrap's time, so no sandbox could reach half of bwrap's total, and what a sandbox
    adds is the figure that compares them (at most half of what bwrap adds)."""
    warm, bwrap = rows["worker"]["warm"]["p50"], rows["bwrap"]["warm"]["p50"]
    if name == "static" or "native" not in rows:
        return target(f"{name}: worker warm p50 / bwrap p50", warm / bwrap, 0.5)
    native = rows["native"]["warm"]["p50"]
    return target(f"{name}: worker warm p50 over native / bwrap's over native", (warm - native) / (bwrap - native), 0.5)


def throughput(socket_path: str, peer_list: list[peers.Peer], jobs: int, slow_jobs: int, rounds: int) -> dict:
    """Part 2: jobs/s of the static job at each concurrency, worker vs each peer: the
    median of ``rounds`` rounds of ``jobs`` jobs, the runners taking turns in each round,
    so that a shared machine's drift (its neighbours come and go within seconds) falls
    on all of them alike and no runner's figure is one short burst. The slow peers
    (podman, ``sandbox run``) run one round of ``slow_jobs``."""
    samples: dict[str, dict[int, list[float]]] = {"worker": {}}
    for concurrency in CONCURRENCY:
        for round_ in range(rounds):
            samples["worker"].setdefault(concurrency, []).append(
                worker_throughput(socket_path, STATIC, jobs, concurrency))
            for peer in peer_list:
                slow = peer.name in SLOW_PEERS
                if slow and round_:
                    continue
                count = max(slow_jobs, concurrency) if slow else jobs
                samples.setdefault(peer.name, {}).setdefault(concurrency, []).append(
                    peers.measure(peer, STATIC, count, concurrency=concurrency)["jobs_per_s"])
    rates = {name: {c: statistics.median(runs) for c, runs in row.items()} for name, row in samples.items()}
    targets = [target(f"throughput at concurrency {c}: worker / bwrap", rates["worker"][c] / rates["bwrap"][c], 1.0,
                      at_most=False) for c in CONCURRENCY]
    print("\nthroughput, static job, jobs/s at concurrency " + " / ".join(map(str, CONCURRENCY)))
    for name, row in rates.items():
        print(f"  {name:12s} " + " ".join(f"{row[c]:7.1f}" for c in CONCURRENCY))
    for figure in targets:
        show(figure)
    return {"jobs_per_s": rates, "rounds": rounds, "raw_jobs_per_s": samples, "targets": targets}


def run(quick: bool) -> dict:
    """Parts 1 and 2 with one worker (slots = CPUs, 2 warm sandboxes per slot)."""
    jobs, idle_jobs, slow_jobs = (40, 8, 5) if quick else (200, 30, 15)
    rounds = 1 if quick else THROUGHPUT_ROUNDS
    latency_jobs = 40 if quick else 1000
    slots = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as directory, \
            Worker(slots=slots, warm=2 * slots) as worker:
        peer_list = peers.all_peers(Path(directory), [STATIC, PYTHON])
        return {
            "setup": {"slots": slots, "warm": 2 * slots, "jobs": jobs, "throughput_rounds": rounds,
                      "latency_jobs": latency_jobs,
                      "idle_jobs": idle_jobs, "slow_peer_jobs": slow_jobs, "idle_pause_s": IDLE_PAUSE_S},
            "latency": latency(worker, peer_list, latency_jobs, idle_jobs, slow_jobs),
            "throughput": throughput(worker.socket, peer_list, jobs, slow_jobs, rounds),
        }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer jobs, for a smoke run")
    args = parser.parse_args()
    print("machine:", machine())
    write_raw("worker", run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
