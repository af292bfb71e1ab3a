"""Prometheus metrics of the worker (``sandbox serve --metrics HOST:PORT``, and ``GET
/metrics`` of the HTTP front door).

Served by the trio process itself - a few lines of HTTP on a trio listener, answering
``GET /metrics`` with prometheus_client's text format - so no thread and no second
event loop run beside the worker. The endpoint is read-only and shows counts only (no
job contents); bind it where the scraper, and only it, can reach it.

    sandbox_jobs_total{status}        jobs finished, by verdict
    sandbox_job_latency_seconds       submit to result (histogram)
    sandbox_queue_depth               jobs waiting for a slot
    sandbox_jobs_running              jobs in a slot now
    sandbox_warm_sandboxes_per_slot   each slot's share of the warm sandboxes (its launcher keeps its slots')
    sandbox_launchers                 launcher processes (each runs the jobs of several slots)
    sandbox_launcher_restarts         launchers replaced since start
    sandbox_file_cache_bytes          bytes of the files cached (worker/filecache.py)
    sandbox_file_cache_files          files cached
    sandbox_file_cache_evictions      files evicted to make room since start
    sandbox_callbacks_total{outcome}  job callbacks ended: delivered, refused, failed
    sandbox_callback_attempts_total   callback POSTs made, retries included
    sandbox_redis_outages_total       times the queue's Redis became unreachable (--redis)
    sandbox_queue_taken_total{stream} deliveries this worker took from each stream (its fair
                                      share; a judge's stages queue is STREAM:stages)
"""

from __future__ import annotations

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from worker.filecache import FileCache
from worker.pool import Pool

# From a warm static job (a few ms) to a long judge run.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_MAX_REQUEST = 8192
_REQUEST_TIMEOUT_S = 5.0


class Metrics:
    """The worker's metrics, fed by the pool (``observe``) and read at scrape time."""

    def __init__(self, pool: Pool, cache: FileCache) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter("sandbox_jobs", "Jobs finished, by verdict.", ["status"], registry=self.registry)
        self.latency = Histogram(
            "sandbox_job_latency_seconds", "Time from submit to result.", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        gauges = {
            "sandbox_queue_depth": ("Jobs waiting for a slot.", lambda: pool.queued),
            "sandbox_jobs_running": ("Jobs in a slot now.", lambda: pool.running),
            "sandbox_warm_sandboxes_per_slot": (
                "Each slot's share of the sandboxes its launcher keeps prepared.", lambda: pool.warm_per_slot
            ),
            "sandbox_launchers": ("Launcher processes, each running the jobs of several slots.",
                                  lambda: len(pool.launchers)),
            "sandbox_launcher_restarts": (
                "Launchers replaced since start.", pool.launcher_restarts
            ),
            "sandbox_file_cache_bytes": ("Bytes of the files cached.", lambda: cache.stored_bytes),
            "sandbox_file_cache_files": ("Files cached.", lambda: cache.entries),
            "sandbox_file_cache_evictions": ("Files evicted to make room since start.", lambda: cache.evictions),
        }
        for name, (text, read) in gauges.items():
            Gauge(name, text, registry=self.registry).set_function(read)
        self.callbacks = Counter("sandbox_callbacks", "Job callbacks ended, by outcome.", ["outcome"],
                                 registry=self.registry)
        self.callback_attempts = Counter("sandbox_callback_attempts", "Callback POSTs made, retries included.",
                                         registry=self.registry)

        self.redis_outages = Counter(
            "sandbox_redis_outages", "Times the queue's Redis became unreachable.", registry=self.registry,
        )

        self.queue_taken = Counter(
            "sandbox_queue_taken", "Deliveries taken from each stream (new or claimed).", ["stream"],
            registry=self.registry,
        )

    def redis_outage(self) -> None:
        self.redis_outages.inc()

    def queue_take(self, stream: str) -> None:
        self.queue_taken.labels(stream=stream).inc()

    def observe(self, status: str, latency_s: float) -> None:
        self.jobs.labels(status=status).inc()
        self.latency.observe(latency_s)

    def count_callback(self, outcome: str, attempts: int) -> None:
        self.callbacks.labels(outcome=outcome).inc()
        self.callback_attempts.inc(attempts)

    def text(self) -> bytes:
        """The scrape: prometheus_client's text format."""
        return bytes(generate_latest(self.registry))

    async def serve(self, host: str, port: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started()
        await trio.serve_listeners(self._answer, listeners)

    async def _answer(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(_REQUEST_TIMEOUT_S):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST:
                    chunk = await stream.receive_some(_MAX_REQUEST)
                    if not chunk:
                        return
                    request += chunk
                method, _, rest = request.partition(b" ")
                path = rest.partition(b" ")[0]
                if method == b"GET" and path.split(b"?")[0] == b"/metrics":
                    await _respond(stream, b"200 OK", CONTENT_TYPE_LATEST, self.text())
                else:
                    await _respond(stream, b"404 Not Found", "text/plain", b"only GET /metrics\n")


async def _respond(stream: trio.SocketStream, status: bytes, content_type: str, body: bytes) -> None:
    head = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type.encode()
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    )
    try:
        await stream.send_all(head + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the scraper went away
