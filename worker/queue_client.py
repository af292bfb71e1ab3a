"""Producers' clients of a Redis Streams queue of jobs: ``QueueClient`` (blocking) and
``AsyncQueueClient`` (trio, or anything anyio runs on).

A job goes in through the ``sandbox_submit`` Redis Function (worker/queue_schema.py):
in one atomic step it refuses an id it knows (the job is not queued twice) and a full
stream (``QueueFull``), else adds the job. Its outcome is read from the job's result
key, waiting on the results stream in between, so a result written at any moment is
seen without polling::

    client = QueueClient("redis://127.0.0.1:6379/0", "judge")
    result = client.run(Job(cmd=["python3", "-c", "print(1)"]))
    report = client.judge(read_package(path), "cpp", source, on_test=print)

A judge request travels the same way (field ``judge``); its tests' events are read from
its progress stream while its outcome is awaited.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import msgpack
import trio
from coredis.exceptions import ResponseError

from sandbox.models import Job, Result
from worker.client import Package, judge_message, with_file_contents
from worker.protocol import job_to_wire
from worker.queue_blobs import put_blob
from worker.queue_schema import (
    GROUP,
    ID_CONFLICT,
    INVALID_JOB,
    LIBRARY,
    QUEUE_FULL,
    QueueError,
    QueueFull,
    QueueKeys,
    cancel_call,
    decode_outcome,
    decode_report,
)
from worker.redis_connect import QueueRedis, connect

T = TypeVar("T")
BLOB_TTL_S = 86_400  # how long a file put is kept when no worker has said (its --result-ttl)
CANCEL_TTL_S = 86_400  # how long a cancelled job's outcome (and its mark) is kept
MAX_BLOCK_MS = 1000  # a wait on the results stream looks again this often (a result key may expire)


class AsyncQueueClient:
    """A producer of one stream; use as ``async with AsyncQueueClient(url, stream) as c``."""

    def __init__(self, url: str, stream: str) -> None:
        self.keys = QueueKeys(stream)
        self._connection = connect(url, stream, stream_timeout=MAX_BLOCK_MS / 1000 + 10)
        self._redis: QueueRedis

    async def __aenter__(self) -> AsyncQueueClient:
        self._redis = await self._connection.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Closed as if nothing happened, so that an exception of the caller's body
        # reaches it as itself, not wrapped in the connection pool's task group.
        await self._connection.__aexit__(None, None, None)

    async def submit(self, job: Job, job_id: str | None = None) -> str:
        """Queue ``job`` under ``job_id`` (a new one if not given) and return the id. An
        id the queue knows (queued, running, or with a result kept) is not queued again:
        its outcome answers this submit too. Raises QueueFull."""
        payload = msgpack.packb(job_to_wire(with_file_contents(job)), use_bin_type=True)
        return await self._queue(job_id or uuid.uuid4().hex, "job", payload)

    async def put_file(self, data: bytes) -> str:
        """Keep ``data`` in Redis for the jobs of every worker of the stream, as long as
        its results are kept (``--result-ttl``; putting it again renews it), and return
        its id: name it in a job's files (``Blob(file_id=...)``) or a judge package
        (``{"file_id": ...}``) instead of sending the bytes with each. The worker that
        takes such a job fetches the file once into its own cache. Raises QueueError
        ``blob_too_big`` beyond the workers' ``--max-blob``."""
        return await self._loaded(put_blob, partial(self._redis.fcall, "sandbox_put_blob"), self.keys, data,
                                  BLOB_TTL_S)

    async def submit_judge(self, problem: Package, lang: str, source: bytes, *,
                           compile_options: Sequence[str] = (), args: Sequence[str] = (),
                           stop_on_failure: bool = False, parallel: int = 1, judge_id: str | None = None,
                           image: str | None = None, interpreter: Sequence[str] | None = None) -> str:
        """Queue a judge of ``source`` against a problem package (every file as bytes:
        ``sandbox.judge.problem.read_package``) and return its id; as ``submit`` for jobs."""
        judge_id = judge_id or uuid.uuid4().hex
        message = judge_message(judge_id, problem, lang, source, compile_options, args, stop_on_failure, parallel,
                                image, interpreter)
        del message["type"], message["id"]  # the entry's id field is the id
        return await self._queue(judge_id, "judge", msgpack.packb(message, use_bin_type=True))

    async def _queue(self, job_id: str, kind: str, payload: bytes) -> str:
        keys = [self.keys.stream, self.keys.id(job_id), self.keys.config]
        try:
            await self._loaded(self._redis.fcall, "sandbox_submit", keys, [job_id, payload, kind])
        except ResponseError as exc:
            if str(exc).startswith(QUEUE_FULL):
                raise QueueFull(QUEUE_FULL, str(exc).removeprefix(QUEUE_FULL).strip()) from None
            for code in (ID_CONFLICT, INVALID_JOB):
                if str(exc).startswith(code):
                    raise QueueError(code, str(exc).removeprefix(code).strip(), "id") from None
            raise
        return job_id

    async def cancel(self, job_id: str) -> str:
        """Cancel a queued job (or judge): ``cancelled`` if no worker had taken it (it
        never runs), ``cancelling`` if one holds it (it is stopped), ``finished`` if its
        outcome is in already, ``unknown`` for an id the queue does not know. A cancelled
        job's outcome is the error ``cancelled`` (``result`` raises QueueError)."""
        keys, args = cancel_call(self.keys, job_id, CANCEL_TTL_S)
        answer = await self._loaded(self._redis.fcall, "sandbox_cancel", keys, args)
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    async def _loaded(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Call a function of the library, loading it first if no worker has come yet
        to do so (the same text)."""
        try:
            return await operation(*args)
        except ResponseError as exc:
            if "Function not found" not in str(exc):
                raise
        await self._redis.function_load(LIBRARY, replace=True)
        return await operation(*args)

    async def result(self, job_id: str, timeout: float | None = None) -> Result:
        """The job's Result, waiting up to ``timeout`` seconds (None: for as long as it
        takes). Raises QueueError for an outcome that is no result (``invalid_job``,
        ``dead_letter``, ``cancelled``) and TimeoutError when time runs out."""
        return decode_outcome(await self.outcome(job_id, timeout))

    async def outcome(self, job_id: str, timeout: float | None = None,
                      on_test: Callable[[dict[str, Any]], None] | None = None) -> bytes:
        """The job's (or judge's) outcome as stored (msgpack: docs/queue.md), waiting as
        ``result`` does; ``on_test`` hears each entry of a judge's progress stream first
        (``report``)."""
        progress, heard = self.keys.progress(job_id), "0-0"
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                last = await self._redis.xrevrange(self.keys.results, count=1)
                since = last[0].identifier if last else b"0-0"
                outcome = await self._redis.get(self.keys.result(job_id))
                if on_test is not None:
                    for entry in await self._redis.xrange(progress, f"({heard}", "+"):
                        heard = entry.identifier.decode() if isinstance(entry.identifier, bytes) else entry.identifier
                        on_test(msgpack.unpackb(entry.field_values[b"test"], raw=False))
                if outcome is not None:
                    return outcome
                # Every outcome (and test) written after ``since`` (``heard``) is on its
                # stream: wait for one, then look again.
                streams = {self.keys.results: since, **({progress: heard} if on_test is not None else {})}
                await self._redis.xread(streams, count=100, block=MAX_BLOCK_MS)
        raise TimeoutError(f"no outcome for {job_id!r} within {timeout} s")

    async def state(self, job_id: str) -> tuple[str, bytes | None]:
        """Where a job (or judge) is: ``finished`` with its outcome, ``running`` (a
        worker holds it), ``queued``, or ``unknown`` (never submitted, or expired)."""
        outcome = await self._redis.get(self.keys.result(job_id))
        if outcome is not None:
            return "finished", outcome
        holder = await self._redis.get(self.keys.id(job_id))
        if holder is None:
            return "unknown", None
        entry = holder.decode().split(" ")[0]
        try:
            pending = await self._redis.xpending(self.keys.stream, GROUP, entry, entry, 1)
        except ResponseError:  # (no group yet: no worker has come)
            pending = ()
        return ("running" if pending else "queued"), None

    async def tests(self, judge_id: str) -> list[dict[str, Any]]:
        """The tests a judge has decided so far (of its latest run, if it was judged again
        after its worker died)."""
        runs: dict[int, list[dict[str, Any]]] = {}
        for entry in await self._redis.xrange(self.keys.progress(judge_id)):
            values = entry.field_values
            runs.setdefault(int(values[b"delivery"]), []).append(msgpack.unpackb(values[b"test"], raw=False))
        return runs[max(runs)] if runs else []

    async def file_size(self, file_id: str) -> int | None:
        """The size of a file put (``put_file``), or None if the queue has none by that id."""
        if not await self._redis.exists([self.keys.blob(file_id)]):
            return None
        return int(await self._redis.strlen(self.keys.blob(file_id)))

    async def delete_file(self, file_id: str) -> bool:
        """Remove a file put: a job queued that names it fails (invalid_job); a worker that
        fetched it already keeps its copy until its cache evicts it."""
        return bool(await self._redis.delete([self.keys.blob(file_id)]))

    async def run(self, job: Job, timeout: float | None = None, job_id: str | None = None) -> Result:
        return await self.result(await self.submit(job, job_id), timeout)

    async def report(self, judge_id: str, timeout: float | None = None,
                     on_test: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """A judge's report (the shape of ``sandbox judge --json``), waiting as ``result``
        does; ``on_test`` hears each entry of the judge's progress stream (a test's
        report) first - every one, for a worker writes them all before the outcome. A
        judge run again (its worker died) publishes its tests again."""
        return decode_report(await self.outcome(judge_id, timeout, on_test))

    async def judge(self, problem: Package, lang: str, source: bytes, *,
                    compile_options: Sequence[str] = (), args: Sequence[str] = (), stop_on_failure: bool = False,
                    parallel: int = 1, judge_id: str | None = None, timeout: float | None = None,
                    on_test: Callable[[dict[str, Any]], None] | None = None,
                    image: str | None = None, interpreter: Sequence[str] | None = None) -> dict[str, Any]:
        """Queue a judge and return its report; raises QueueError for an outcome that is
        no report (``invalid_job`` naming the field, ``dead_letter``)."""
        judge_id = await self.submit_judge(problem, lang, source, compile_options=compile_options, args=args,
                                           stop_on_failure=stop_on_failure, parallel=parallel, judge_id=judge_id,
                                           image=image, interpreter=interpreter)
        return await self.report(judge_id, timeout, on_test)


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

    def put_file(self, data: bytes) -> str:
        return self._call(lambda client: client.put_file(data))

    def cancel(self, job_id: str) -> str:
        return self._call(lambda client: client.cancel(job_id))

    def submit_judge(self, problem: Package, lang: str, source: bytes, *,
                     compile_options: Sequence[str] = (), args: Sequence[str] = (), stop_on_failure: bool = False,
                     parallel: int = 1, judge_id: str | None = None, image: str | None = None,
                     interpreter: Sequence[str] | None = None) -> str:
        return self._call(lambda client: client.submit_judge(
            problem, lang, source, compile_options=compile_options, args=args, stop_on_failure=stop_on_failure,
            parallel=parallel, judge_id=judge_id, image=image, interpreter=interpreter))

    def report(self, judge_id: str, timeout: float | None = None,
               on_test: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        return self._call(lambda client: client.report(judge_id, timeout, on_test))

    def judge(self, problem: Package, lang: str, source: bytes, *,
              compile_options: Sequence[str] = (), args: Sequence[str] = (), stop_on_failure: bool = False,
              parallel: int = 1, judge_id: str | None = None, timeout: float | None = None,
              on_test: Callable[[dict[str, Any]], None] | None = None, image: str | None = None,
              interpreter: Sequence[str] | None = None) -> dict[str, Any]:
        return self._call(lambda client: client.judge(
            problem, lang, source, compile_options=compile_options, args=args, stop_on_failure=stop_on_failure,
            parallel=parallel, judge_id=judge_id, timeout=timeout, on_test=on_test, image=image,
            interpreter=interpreter))

    def _call(self, operation: Callable[[AsyncQueueClient], Awaitable[T]]) -> T:
        async def main() -> T:
            async with AsyncQueueClient(self.url, self.stream) as client:
                return await operation(client)

        return trio.run(main)


__all__ = ["AsyncQueueClient", "QueueClient", "QueueError", "QueueFull"]
