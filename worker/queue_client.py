"""Producers' clients of a Redis Streams queue of jobs: ``QueueClient`` (blocking) and
``AsyncQueueClient`` (trio, or anything anyio runs on).

A job goes in through the ``sandbox_submit`` Redis Function (worker/queue_schema.py):
in one atomic step it refuses an id it knows (the job is not queued twice) and a full
stream (``QueueFull``), else adds the job. Its outcome is read from the job's result
key, waiting on the results stream in between, so a result written at any moment is
seen without polling::

    client = QueueClient("redis://127.0.0.1:6379/0", "judge")
    result = client.run(Job(cmd=["python3", "-c", "print(1)"]))
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import coredis
import msgpack
import trio
from coredis.exceptions import ResponseError

from sandbox.models import Job, Result
from worker.client import with_file_contents
from worker.protocol import job_to_wire
from worker.queue_schema import LIBRARY, QUEUE_FULL, QueueError, QueueFull, QueueKeys, decode_outcome

T = TypeVar("T")
MAX_BLOCK_MS = 1000  # a wait on the results stream looks again this often (a result key may expire)


class AsyncQueueClient:
    """A producer of one stream; use as ``async with AsyncQueueClient(url, stream) as c``."""

    def __init__(self, url: str, stream: str) -> None:
        self.keys = QueueKeys(stream)
        self._redis: coredis.Redis[bytes] = coredis.Redis.from_url(url, stream_timeout=MAX_BLOCK_MS / 1000 + 10)

    async def __aenter__(self) -> AsyncQueueClient:
        await self._redis.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Closed as if nothing happened, so that an exception of the caller's body
        # reaches it as itself, not wrapped in the connection pool's task group.
        await self._redis.__aexit__(None, None, None)

    async def submit(self, job: Job, job_id: str | None = None) -> str:
        """Queue ``job`` under ``job_id`` (a new one if not given) and return the id. An
        id the queue knows (queued, running, or with a result kept) is not queued again:
        its outcome answers this submit too. Raises QueueFull."""
        job_id = job_id or uuid.uuid4().hex
        payload = msgpack.packb(job_to_wire(with_file_contents(job)), use_bin_type=True)
        keys = [self.keys.stream, self.keys.id(job_id), self.keys.config]
        try:
            await self._redis.fcall("sandbox_submit", keys, [job_id, payload])
        except ResponseError as exc:
            if str(exc).startswith(QUEUE_FULL):
                raise QueueFull(QUEUE_FULL, str(exc).removeprefix(QUEUE_FULL).strip()) from None
            if "Function not found" not in str(exc):
                raise
            # No worker has come yet to load the functions: load them (the same text).
            await self._redis.function_load(LIBRARY, replace=True)
            return await self.submit(job, job_id)
        return job_id

    async def result(self, job_id: str, timeout: float | None = None) -> Result:
        """The job's Result, waiting up to ``timeout`` seconds (None: for as long as it
        takes). Raises QueueError for an outcome that is no result (``invalid_job``,
        ``dead_letter``) and TimeoutError when time runs out."""
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                last = await self._redis.xrevrange(self.keys.results, count=1)
                since = last[0].identifier if last else b"0-0"
                outcome = await self._redis.get(self.keys.result(job_id))
                if outcome is not None:
                    return decode_outcome(outcome)
                # Every result written after ``since`` is on the stream: wait for ours.
                news = await self._redis.xread({self.keys.results: since}, count=100, block=MAX_BLOCK_MS)
                for entries in (news or {}).values():
                    for entry in entries:
                        if entry.field_values.get(b"id") == job_id.encode():
                            return decode_outcome(entry.field_values[b"outcome"])
        raise TimeoutError(f"no result for job {job_id!r} within {timeout} s")

    async def run(self, job: Job, timeout: float | None = None, job_id: str | None = None) -> Result:
        return await self.result(await self.submit(job, job_id), timeout)


class QueueClient:
    """The blocking form of AsyncQueueClient: each call connects, does its work and
    closes (a producer that submits many jobs at once wants AsyncQueueClient)."""

    def __init__(self, url: str, stream: str) -> None:
        self.url, self.stream = url, stream

    def submit(self, job: Job, job_id: str | None = None) -> str:
        return self._call(lambda client: client.submit(job, job_id))

    def result(self, job_id: str, timeout: float | None = None) -> Result:
        return self._call(lambda client: client.result(job_id, timeout))

    def run(self, job: Job, timeout: float | None = None, job_id: str | None = None) -> Result:
        return self._call(lambda client: client.run(job, timeout, job_id))

    def _call(self, operation: Callable[[AsyncQueueClient], Awaitable[T]]) -> T:
        async def main() -> T:
            async with AsyncQueueClient(self.url, self.stream) as client:
                return await operation(client)

        return trio.run(main)


__all__ = ["AsyncQueueClient", "QueueClient", "QueueError", "QueueFull"]
