"""The worker's three doors - its unix socket, HTTP+JSON and a Redis Streams queue -
measured with the same trivial job (``busybox true``, host image, default profile), with
one worker and with three on the same machine.

Equal slots either way: one worker of 3 slots, or three workers of 1 slot each (2 warm
sandboxes per slot), so a difference is the door's and the fleet's, not more capacity.
Every worker serves all three doors at once (``--socket``, ``--http``, ``--redis``), and
both fleets run side by side (a stream each), so the six measurements of a round are
taken one after another within a minute or so and a full run repeats the round: on a
shared machine the load changes from minute to minute, and interleaving spreads that
over every door and fleet rather than charging it to whichever ran last. Only one door
of one fleet carries jobs at a time; the idle workers wait in ``select``.

Every door is driven the same way, as a user after throughput would: ``CLIENTS``
producer threads (two per slot, so a slot never waits for its next job), each on one
long-lived connection running one job after another, submit to result:

- socket: ``worker.client.Client.run``;
- HTTP: ``POST /v1/jobs?wait=true`` on an httpx client with keep-alive;
- Redis: ``AsyncQueueClient.run`` (worker/queue_client.py) on one connection per thread,
  the blocking ``QueueClient`` connecting anew for every call.

With three workers the socket and HTTP producers are spread over the three sockets and
ports; the Redis producers share the one stream all three workers read. The bench starts
its own redis-server on a free loopback port, in a temporary directory, append-only as
docs/queue.md asks of a queue that must lose nothing (fsync every second, Redis's own
default). Every process it starts is stopped by its pid at the end, even on error.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import trio

from bench.common import REPO, summary
from bench.worker import STATIC
from sandbox.models import Job
from worker.client import Client, accepting
from worker.queue_client import AsyncQueueClient

TOTAL_SLOTS = 3
FLEETS = (1, 3)  # workers, each with TOTAL_SLOTS // workers slots
DOORS = ("socket", "http", "redis")
CLIENTS = 2 * TOTAL_SLOTS
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to this pid, SIGKILL if it has not gone within a minute."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A redis-server of the bench's own on a free loopback port; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "yes", "--logfile", str(directory / "redis.log"), "--daemonize", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {(directory / 'redis.log').read_text()[-500:]}")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class DoorWorker:
    """One ``sandbox serve`` with all three doors; its JSON log goes to bench/results/raw/."""

    def __init__(self, directory: Path, redis_url: str, stream: str, slots: int) -> None:
        self.stream = stream
        self.socket = str(directory / "w.sock")
        self.http = f"http://127.0.0.1:{free_port()}"
        logs = REPO / "bench" / "results" / "raw"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"doors-{time.strftime('%Y%m%dT%H%M%S')}-{directory.name}.log"
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sandbox.cli", "serve", "--socket", self.socket,
                 "--http", self.http.removeprefix("http://"), "--redis", redis_url, "--stream", stream,
                 "--slots", str(slots), "--warm", str(2 * slots), "--queue", "100000", "--max-queue", "100000"],
                stderr=log, cwd=REPO,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (accepting(self.socket) and self._healthy()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("worker did not start")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.http}/v1/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


@contextlib.contextmanager
def fleet(directory: Path, redis_url: str, workers: int) -> Iterator[list[DoorWorker]]:
    """``workers`` workers sharing TOTAL_SLOTS and a stream of their own, all started
    before any is waited for."""
    started: list[DoorWorker] = []
    try:
        for number in range(workers):
            home = directory / f"worker-{workers}-{number}"
            home.mkdir()
            started.append(DoorWorker(home, redis_url, f"bench-{workers}", TOTAL_SLOTS // workers))
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            stop(worker.process)


def _check(ok: bool, what: object) -> None:
    if not ok:
        raise RuntimeError(f"job failed: {what}")


def socket_loop(worker: DoorWorker, count: int) -> list[float]:
    job = Job(cmd=STATIC)
    latencies = []
    with Client(worker.socket) as client:
        for _ in range(count):
            start = time.perf_counter()
            result = client.run(job)
            latencies.append((time.perf_counter() - start) * 1000)
            _check(result.status.value == "ok", result)
    return latencies


def http_loop(worker: DoorWorker, count: int) -> list[float]:
    body = {"job": {"cmd": STATIC}}
    latencies = []
    with httpx.Client(base_url=worker.http, timeout=60) as client:
        for _ in range(count):
            start = time.perf_counter()
            answer = client.post("/v1/jobs", params={"wait": "true"}, json=body)
            latencies.append((time.perf_counter() - start) * 1000)
            document = answer.json()
            _check(answer.status_code == 200 and document["result"]["status"] == "ok", document)
    return latencies


def redis_loop(url: str, stream: str, count: int) -> list[float]:
    job = Job(cmd=STATIC)

    async def main() -> list[float]:
        latencies = []
        async with AsyncQueueClient(url, stream) as client:
            for _ in range(count):
                start = time.perf_counter()
                result = await client.run(job, timeout=60)
                latencies.append((time.perf_counter() - start) * 1000)
                _check(result.status.value == "ok", result)
        return latencies

    return trio.run(main)


def drive(loops: list[Callable[[], list[float]]]) -> tuple[float, list[float]]:
    """Runs every loop in a thread of its own; jobs/s over all of them and every latency."""
    latencies: list[float] = []
    errors: list[BaseException] = []

    def body(loop: Callable[[], list[float]]) -> None:
        try:
            latencies.extend(loop())
        except BaseException as exc:  # reported from the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(loop,)) for loop in loops]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return len(latencies) / elapsed, latencies


def measure(door: str, workers: list[DoorWorker], redis_url: str, jobs: int) -> tuple[float, list[float]]:
    """``jobs`` jobs through one door from CLIENTS threads (spread over the workers)."""
    def loop(client: int, count: int) -> Callable[[], list[float]]:
        worker = workers[client % len(workers)]
        if door == "socket":
            return lambda: socket_loop(worker, count)
        if door == "http":
            return lambda: http_loop(worker, count)
        return lambda: redis_loop(redis_url, worker.stream, count)

    drive([loop(client, 5) for client in range(CLIENTS)])  # warm-up: connections, launchers' first jobs
    return drive([loop(client, jobs // CLIENTS + (client < jobs % CLIENTS)) for client in range(CLIENTS)])


def run(quick: bool) -> dict[str, Any]:
    jobs, rounds = (200, 1) if quick else (2000, 3)
    taken: dict[tuple[str, int], tuple[list[float], list[float]]] = {
        (door, count): ([], []) for count in FLEETS for door in DOORS}
    directory = Path(tempfile.mkdtemp(prefix="bench-doors-"))
    try:
        with redis_server(directory) as redis_url, contextlib.ExitStack() as stack:
            fleets = {count: stack.enter_context(fleet(directory, redis_url, count)) for count in FLEETS}
            for number in range(rounds):
                for (door, count), (rates, latencies) in taken.items():
                    rate, measured = measure(door, fleets[count], redis_url, jobs)
                    rates.append(rate)
                    latencies += measured
                    print(f"  round {number + 1}: {door:6s} {count} worker(s): {rate:7.1f} jobs/s", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rows: list[dict[str, Any]] = [
        {"door": door, "workers": count, "slots_each": TOTAL_SLOTS // count, "jobs_per_s": median(rates),
         "jobs_per_s_rounds": rates, "latency_ms": summary(latencies)}
        for (door, count), (rates, latencies) in taken.items()]
    base = rows[0]
    for row in rows:
        row["ratio_to_socket_1"] = {
            "jobs_per_s": row["jobs_per_s"] / base["jobs_per_s"],
            "p50": row["latency_ms"]["p50"] / base["latency_ms"]["p50"],
            "p99": row["latency_ms"]["p99"] / base["latency_ms"]["p99"],
        }
    print(f"\ndoors, {' '.join(STATIC)}, {jobs} jobs x {rounds} round(s) each, {CLIENTS} producers, "
          f"{TOTAL_SLOTS} slots in all: jobs/s (median of rounds), latency p50 / p99 ms; each / socket x 1 worker")
    for row in rows:
        ms, ratio = row["latency_ms"], row["ratio_to_socket_1"]
        print(f"  {row['door']:6s} {row['workers']} x {row['slots_each']} slot(s) {row['jobs_per_s']:7.1f} "
              f"{ms['p50']:7.2f} {ms['p99']:7.2f}   x {ratio['jobs_per_s']:.2f} {ratio['p50']:.2f} {ratio['p99']:.2f}")
    return {"jobs": jobs, "rounds": rounds, "clients": CLIENTS, "total_slots": TOTAL_SLOTS, "cmd": STATIC,
            "rows": rows}
