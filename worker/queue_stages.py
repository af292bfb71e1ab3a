"""A queued judge's jobs on the queue itself, so its tests run on whichever workers have
free slots: a judge of 50 tests taken by one worker is done by all of them.

The worker that takes a judge request judges it as it judges one from its socket
(worker/judging.py), except that each job of the judge - the compile, every test, a
checker - is queued on the stream's stages queue (``QueueKeys.stages``) instead of its
own pool, under an id of the judge's (``JUDGE/DELIVERY/N``), and its outcome is awaited.
Every worker serves a stages queue before its stream, so a judge under way finishes
before new work starts. A judge holds no slot while it waits: its jobs take the slots,
wherever they run, so judges waiting on each other's tests can never fill every slot of
every worker and stall. An interactive problem's pair of sandboxes runs on the judging
worker's own pool: two jobs wired to each other must share a host.

A file bigger than ``INLINE_MAX`` (the compiled program, a big input) goes as a blob
(worker/queue_blobs.py) once per judge, so that each worker fetches it once, not once
per test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import msgpack
import trio

from sandbox.errors import JobError
from sandbox.models import Blob, Job, Result
from worker.admission import admit
from worker.judging import JudgeCancelled, PoolStages
from worker.protocol import job_to_wire
from worker.queue_blobs import blob_id, put_blob
from worker.queue_schema import QueueConfig, QueueError, QueueKeys, cancel_call, decode_outcome
from worker.redis_connect import QueueRedis

MAX_READABLE_ID = 100  # a judge id this long leaves room for /DELIVERY/N within 128 characters
INLINE_MAX = 64 << 10  # a stage job's file above this size travels as a blob
CANCEL_WAIT_S = 5.0


def stage_prefix(judge_id: str, delivery: int) -> str:
    """What a judge's stage jobs' ids start with: ``JUDGE/DELIVERY/`` (a judge run again
    names new jobs), the judge's id replaced by its digest when the stage ids would pass
    the 128 characters an id may have."""
    if len(judge_id) > MAX_READABLE_ID:
        judge_id = "sha256-" + hashlib.sha256(judge_id.encode()).hexdigest()
    return f"{judge_id}/{delivery}"


class StageQueue(Protocol):
    """What a judge's stages need of the worker's consumer."""

    waits: StageWaits
    config: QueueConfig

    async def call(self, what: str, operation: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run a Redis operation, retrying it through an outage."""

    def redis(self) -> QueueRedis: ...


class StageWaits:
    """The stage jobs this worker's judges wait for, by id: one follower of the stages'
    results streams (the worker's, ``hear_entry``) hands each outcome to its waiter,
    instead of a blocking read per test."""

    def __init__(self) -> None:
        self._waiting: dict[str, trio.MemorySendChannel[bytes]] = {}

    def expect(self, job_id: str) -> trio.MemoryReceiveChannel[bytes]:
        """Register before submitting: an outcome written at any moment after is heard."""
        send, receive = trio.open_memory_channel[bytes](1)
        self._waiting[job_id] = send
        return receive

    def forget(self, job_id: str) -> None:
        self._waiting.pop(job_id, None)

    def hear(self, job_id: str, outcome: bytes) -> None:
        send = self._waiting.pop(job_id, None)
        if send is not None:
            send.send_nowait(outcome)

    async def hear_entry(self, stream: str, fields: dict[str, bytes]) -> None:
        """An entry of a stages' results stream (the worker follows them all from its
        start: no waiter is older)."""
        self.hear(fields.get("id", b"").decode(errors="replace"), fields.get("outcome", b""))


@dataclass
class QueueStages(PoolStages):
    """``languages.Stages`` whose jobs go to the stages queue (groups stay on the pool)."""

    queue: StageQueue = field(kw_only=True)
    keys: QueueKeys = field(kw_only=True)  # the stages queue's
    name: str = field(kw_only=True)  # the judge's id and delivery: a judge run again names new jobs
    blobs: set[str] = field(default_factory=set)  # put already by this judge
    _stage_numbers: itertools.count[int] = field(default_factory=itertools.count)
    _waiting: dict[trio.CancelScope, str] = field(default_factory=dict)  # the waits, and their jobs' ids

    async def _run_job(self, job: Job) -> Result:
        if self.cancelled:
            raise JudgeCancelled
        admit(job)  # refused here, as the pool would: not after a trip through the queue
        job = await self._with_blobs(job)
        job_id = f"{self.name}/{next(self._stage_numbers)}"
        payload = msgpack.packb(job_to_wire(job), use_bin_type=True)
        outcome: bytes | None = None
        heard = self.queue.waits.expect(job_id)
        scope = trio.CancelScope()
        self._waiting[scope] = job_id
        try:
            with scope:
                redis = self.queue.redis()
                answer = await self.queue.call("stage", redis.fcall, "sandbox_submit",
                                               [self.keys.stream, self.keys.id(job_id), self.keys.config],
                                               [job_id, payload, "job"])
                if answer and _text(answer[0]) == "known":  # (queued by this judge before: its outcome may be in)
                    outcome = await self.queue.call("stage", redis.get, self.keys.result(job_id))
                if outcome is None:
                    outcome = await heard.receive()
        finally:
            del self._waiting[scope]
            self.queue.waits.forget(job_id)
        if outcome is None or self.cancelled:
            raise JudgeCancelled
        try:
            return decode_outcome(outcome)
        except QueueError as exc:
            raise JobError(f"{exc.code}: {exc.message}", field=exc.field) from None

    async def _with_blobs(self, job: Job) -> Job:
        """The job with its big files put as blobs, each once per judge."""

        async def small(content: Blob) -> Blob:
            if content.data is None or len(content.data) <= INLINE_MAX:
                return content
            file_id = blob_id(content.data)
            if file_id not in self.blobs:
                put = partial(self.queue.redis().fcall, "sandbox_put_blob")
                try:
                    await self.queue.call("blob", put_blob, put, self.keys, content.data,
                                          self.queue.config.result_ttl_s)
                except QueueError as exc:  # (blob_too_big: a test's file past the workers' --max-blob)
                    raise JobError(f"{exc.code}: {exc.message}", field="files") from None
                self.blobs.add(file_id)
            return Blob(file_id=file_id)

        files = [dataclasses.replace(item, content=await small(item.content)) for item in job.files]
        stdin = None if job.stdin is None else await small(job.stdin)
        return dataclasses.replace(job, files=files, stdin=stdin)

    async def cancel(self) -> None:
        """Stop: no more jobs, the jobs queued are cancelled (for as long as Redis
        answers within ``CANCEL_WAIT_S``: an outage must not hold up the worker's
        shutdown; a job not cancelled runs, and its outcome expires unread), the waits
        end, and a group running on the pool is cancelled."""
        waiting = dict(self._waiting)
        for scope in waiting:
            scope.cancel()
        await super().cancel()
        with trio.move_on_after(CANCEL_WAIT_S):
            for job_id in waiting.values():
                keys, args = cancel_call(self.keys, job_id, self.queue.config.result_ttl_s)
                await self.queue.call("cancel", self.queue.redis().fcall, "sandbox_cancel", keys, args)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
