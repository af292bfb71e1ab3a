"""Drive a worker with a stream of mixed jobs at full concurrency and measure it."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import trio
from workerutil import WorkerProcess

from soak.mix import MixEntry
from worker.async_client import AsyncClient


@dataclass
class SoakReport:
    jobs: int = 0
    seconds: float = 0.0
    by_status: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    rss_at: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def rss_growth(self, start: int) -> float:
        """Relative RSS growth of the worker from job ``start`` to the last job."""
        return self.rss_at[self.jobs] / self.rss_at[start] - 1


def worker_fds(worker: WorkerProcess) -> tuple[int, ...]:
    """Open fds of the worker and each launcher: what a leak would grow."""
    return tuple(len(os.listdir(f"/proc/{pid}/fd")) for pid in (worker.process.pid, *sorted(worker.launchers())))


def soak(worker: WorkerProcess, mix: list[MixEntry], jobs: int, concurrency: int, rss_marks: set[int]) -> SoakReport:
    """Run ``jobs`` jobs, cycling through ``mix``, ``concurrency`` at a time on one
    connection; record the worker's RSS when the count of finished jobs hits a mark."""
    report = SoakReport()
    counter = iter(range(jobs))

    async def submitter(client: AsyncClient) -> None:
        for index in counter:
            entry = mix[index % len(mix)]
            result = await client.run(entry.job)
            report.by_status[result.status.value] += 1
            if result.status is not entry.status:
                report.wrong.append(f"#{index} {entry.name}: {result.status.value} ({result.error})")
            report.jobs += 1
            if report.jobs in rss_marks:
                report.rss_at[report.jobs] = worker.rss_bytes()

    async def main() -> None:
        async with await AsyncClient.connect(worker.socket_path) as client, trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(submitter, client)

    started = time.monotonic()
    trio.run(main)
    report.seconds = time.monotonic() - started
    report.rss_at[report.jobs] = worker.rss_bytes()
    return report
