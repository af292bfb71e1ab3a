"""The worker's side of a Redis Streams queue (``sandbox serve --redis URL --stream S``).

Many workers on many hosts join one consumer group of the stream; each takes no more
jobs than it has free slots (so a job waits in Redis, where any worker can take it,
rather than behind a busy one), runs them in the same pool as its socket's jobs, and
acknowledges a job only with its result written (``sandbox_finish`` in
worker/queue_schema.py: result key, results stream, XACK and XDEL in one atomic call,
fenced on still owning the delivery). A job whose worker died stays pending; after
``claim_idle_s`` without a heartbeat another worker claims it (XAUTOCLAIM) and runs it
again, until ``max_deliveries`` deliveries have failed, when it goes to the dead-letter
stream with a final outcome saying so.

An entry may carry a judge request instead of a job (field ``judge``, the socket's
``judge`` map): the worker that takes it judges it with its own pool, as it judges a
socket's (worker/judging.py), publishes each ``test_finished`` event to the judge's
progress stream, and writes the report as the outcome under the same rules.

Redis being unreachable is an outage, not an end: every call is retried with backoff,
the jobs held keep running and their results wait in memory to be written, and each
outage is logged and counted (worker/metrics.py).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import coredis
import msgpack
import trio
from coredis.exceptions import RedisError, StreamConsumerGroupError, StreamDuplicateConsumerGroupError
from coredis.response.types import StreamPendingExt

from worker.admission import admit
from worker.judging import JudgeRequest, PoolStages, judge_from_wire, run_judge
from worker.logs import log
from worker.pool import Pool
from worker.protocol import ProtocolError, job_from_wire
from worker.queue_schema import (
    GROUP,
    LIBRARY,
    PROGRESS_MAXLEN,
    RESULTS_MAXLEN,
    QueueConfig,
    QueueKeys,
    outcome_of_error,
    outcome_of_report,
    outcome_of_result,
)
from worker.redis_connect import OUTAGES, QueueRedis, connect

T = TypeVar("T")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.05, 2.0
CONNECT_TIMEOUT_S = 5.0
MAX_BLOCK_MS = 1000  # a read waits this long at most, so claims and stopping are looked at
ROOM_POLL_S = 0.2  # with no free slot: how often to look again (socket jobs free slots too)


@dataclass
class Delivery:
    entry: str  # the stream entry's id
    fields: dict[str, bytes]
    deliveries: int
    job_id: str | None = None  # the producer's id (None: the entry has no usable one)
    duplicate: bool = False  # another entry holds its id: acknowledged, never run
    lost: bool = False  # a heartbeat found it claimed by another worker
    final: dict[str, Any] = field(default_factory=dict)  # the pool's (or the judge's) final message for it
    judge: JudgeRequest | None = None  # a judge request to judge here, instead of a job


class QueueConsumer:
    def __init__(
        self, config: QueueConfig, pool: Pool, max_job_bytes: int, on_outage: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.max_job_bytes = max_job_bytes
        self.keys = QueueKeys(config.stream)
        self.pool = pool
        self.on_outage = on_outage
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.held: dict[str, Delivery] = {}
        self.judges: dict[str, PoolStages] = {}  # the judges held, by entry
        self._outage_since: float | None = None
        self._stopping = False
        self._read_scope = trio.CancelScope()
        self._room = trio.Event()
        self._drained = trio.Event()
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self._redis: QueueRedis | None = None

    def stop(self) -> None:
        """Stop taking jobs; the ones held are finished and acknowledged (``drained``)."""
        self._stopping = True
        self._read_scope.cancel()
        if not self.held:
            self._drained.set()

    def stopping(self) -> bool:
        """Whether stop() was called: a method, read afresh after each await (where
        stop() may have come)."""
        return self._stopping

    async def drained(self) -> None:
        """Return once stopped with nothing held."""
        await self._drained.wait()

    async def run(self) -> None:
        block_ms = int(min(MAX_BLOCK_MS, self.config.claim_idle_s * 500))
        async with connect(
            self.config.url, self.config.stream, connect_timeout=CONNECT_TIMEOUT_S, stream_timeout=block_ms / 1000 + 10,
        ) as redis:
            self._redis = redis
            await self._retrying("setup", self._setup)
            log("queue_consuming", stream=self.config.stream, consumer=self.consumer)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat)
                while not self._stopping:
                    free = len(self.pool.slots) - self.pool.running - self.pool.queued - self._judges_between_jobs()
                    if free <= 0:
                        self._room = trio.Event()
                        with trio.move_on_after(ROOM_POLL_S):
                            await self._room.wait()
                        continue
                    for delivery in await self._retrying("take", self._take, free, block_ms):
                        self._start(nursery, delivery)

    def _judges_between_jobs(self) -> int:
        """Judges held that have no job in the pool just now (writing their package,
        between a compile and the tests): each counts as a slot, so a worker takes no
        more judges than it has slots, and their tests find the slots free."""
        return sum(1 for stages in self.judges.values() if not stages.running)

    async def _setup(self) -> None:
        """The functions, the group (reading the stream from its start: jobs added before
        any worker came are served) and the bound producers are refused beyond."""
        redis = self._client()
        await redis.function_load(LIBRARY, replace=True)
        try:
            await redis.xgroup_create(self.keys.stream, GROUP, "0", mkstream=True)
        except StreamDuplicateConsumerGroupError:
            pass  # another worker made it
        await redis.hset(self.keys.config, {"max_queue": self.config.max_queue})

    async def _take(self, count: int, block_ms: int) -> list[Delivery]:
        """Deliveries for up to ``count`` free slots: first the jobs whose workers went
        silent (claimed), then new ones."""
        redis = self._client()
        taken: list[Delivery] = []
        if self.stopping():
            return taken  # (a take retried through an outage that outlasted the worker's run)
        if trio.current_time() >= self._next_claim:
            idle_ms = int(self.config.claim_idle_s * 1000)
            cursor, entries, *_ = await redis.xautoclaim(
                self.keys.stream, GROUP, self.consumer, idle_ms, self._claim_cursor, count=count,
            )
            self._claim_cursor = _text(cursor)
            if self._claim_cursor == "0-0":  # a whole pass made: rest until the next period
                self._next_claim = trio.current_time() + self.config.claim_idle_s / 2
            for entry in entries:
                identifier = _text(entry.identifier)
                if identifier in self.held:
                    continue  # ours already (a heartbeat missed during an outage)
                pending = await redis.xpending(self.keys.stream, GROUP, identifier, identifier, 1)
                record = pending[0] if isinstance(pending, tuple) and pending else None
                deliveries = record.delivered if isinstance(record, StreamPendingExt) else 1
                taken.append(Delivery(identifier, _fields(entry.field_values), deliveries))
        if not taken:
            # Only the wait for new entries is cut short by stop(): what a read or a claim
            # returned is held and finished. (An answer that was on its way as the read was
            # cancelled leaves its entries pending with this consumer, for a worker to claim.)
            read = None
            self._read_scope = trio.CancelScope()
            if self.stopping():  # (stop() came during the claim above)
                self._read_scope.cancel()
            with self._read_scope:
                read = await redis.xreadgroup(GROUP, self.consumer, {self.keys.stream: ">"}, count=count,
                                              block=block_ms)
            for entries in (read or {}).values():
                for entry in entries:
                    taken.append(Delivery(_text(entry.identifier), _fields(entry.field_values), 1))
        for delivery in taken:
            await self._claim_id(delivery)
        return taken

    async def _claim_id(self, delivery: Delivery) -> None:
        """An id names one job: its key holds the entry that carries it (set at submit by
        sandbox_submit, or here for an entry a producer added with a plain XADD). An entry
        whose id another entry holds is a resubmission, never run twice."""
        delivery.job_id = _job_id(delivery.fields)
        if delivery.job_id is None:
            return
        holder = await self._client().set(self.keys.id(delivery.job_id), delivery.entry,
                                          condition=coredis.PureToken.NX, get=True)
        delivery.duplicate = holder is not None and _text(holder) != delivery.entry

    def _start(self, nursery: trio.Nursery, delivery: Delivery) -> None:
        """Put a delivery in the pool at once (so the next count of free slots sees it),
        then see it through in a task of its own."""
        self.held[delivery.entry] = delivery
        submitted = self._submit(delivery)
        if delivery.judge is not None:  # counted among the slots taken from now on
            self.judges[delivery.entry] = PoolStages(self.pool, self, trio.lowlevel.current_trio_token())
        nursery.start_soon(self._serve, delivery, submitted)

    def _submit(self, delivery: Delivery) -> trio.Event | None:
        """Hand the job to the pool: the event its final message sets (in
        ``delivery.final``), or None when it does not go to the pool (a judge request
        is checked and left in ``delivery.judge``, for ``_serve`` to judge)."""
        if delivery.job_id is None or delivery.duplicate or delivery.deliveries > self.config.max_deliveries:
            return None
        kind = "judge" if "judge" in delivery.fields else "job"
        payload = delivery.fields.get(kind, b"")
        try:
            if len(payload) > self.max_job_bytes:
                raise ProtocolError("invalid_job", f"the {kind} is {len(payload)} bytes, more than this worker "
                                    f"takes ({self.max_job_bytes}, its --max-frame)", field=kind)
            wire = msgpack.unpackb(payload, raw=False)
            if kind == "judge":
                delivery.judge = _queued_judge(wire, delivery.job_id)
                return None
            job = job_from_wire(wire)
            admit(job)
        except ProtocolError as exc:
            delivery.final = exc.to_message()
            return None
        except Exception as exc:  # msgpack raises many unrelated types for bad input
            delivery.final = ProtocolError("invalid_job", f"undecodable {kind}: {type(exc).__name__}",
                                           field=kind).to_message()
            return None
        done = trio.Event()

        def deliver(message: dict[str, Any]) -> None:
            if message.get("type") == "error" or message.get("event") in ("finished", "cancelled"):
                delivery.final = message
                done.set()

        try:
            self.pool.submit(f"queue:{delivery.entry}:{delivery.deliveries}", job, self, deliver)
        except ProtocolError as exc:  # the pool's queue is full of socket jobs
            delivery.final = {"event": "give_back", "reason": exc.message}
            return None
        return done

    async def _serve(self, delivery: Delivery, submitted: trio.Event | None) -> None:
        """Wait for the job's outcome, then write it and acknowledge the delivery."""
        try:
            if delivery.judge is not None:
                await self._judge(delivery, delivery.judge)
            elif submitted is not None:
                await submitted.wait()
            outcome, reason = self._outcome(delivery)
            if outcome is None:
                log("queue_left_pending", entry=delivery.entry, id=delivery.job_id,
                    state=delivery.final.get("event"), reason=delivery.final.get("reason"))
                return
            written = await self._retrying("finish", self._finish, delivery, outcome, reason)
            if reason is not None:
                log("queue_dead_letter", entry=delivery.entry, id=delivery.job_id, reason=reason,
                    deliveries=delivery.deliveries)
            if not written:
                log("queue_result_fenced", entry=delivery.entry, id=delivery.job_id)
        finally:
            del self.held[delivery.entry]
            self._room.set()
            if self._stopping and not self.held:
                self._drained.set()

    def _outcome(self, delivery: Delivery) -> tuple[bytes | None, str | None]:
        """What to write for a delivery, and the reason to dead-letter it: (None, None)
        leaves it pending, for another worker to claim."""
        job_id, final = delivery.job_id, delivery.final
        if job_id is None:
            return b"", "the entry has no id (1..128 characters)"
        if delivery.duplicate:
            return b"", None
        if delivery.deliveries > self.config.max_deliveries:
            message = (f"delivered {delivery.deliveries} times without a result (its workers died or lost it); "
                       f"moved to {self.keys.dead}")
            return outcome_of_error(job_id, "dead_letter", message), "max_deliveries"
        if final.get("type") == "error" and final.get("code") == "busy":
            return None, None  # a judge's test refused by a pool full of socket jobs: given back
        if final.get("type") == "error":
            return outcome_of_error(job_id, final["code"], final["message"], final.get("field")), None
        if final.get("event") == "finished":
            return outcome_of_result(job_id, final["result"]), None
        if final.get("event") == "judged":
            return outcome_of_report(job_id, final["report"]), None
        # Cancelled (the worker gave up at the end of its grace period) or given back.
        return None, None

    async def _judge(self, delivery: Delivery, request: JudgeRequest) -> None:
        """Judge with this worker's pool (its tests queue as its jobs do), publishing each
        test's event as it comes; the final message lands in ``delivery.final``. Every
        event is written before this returns, so a producer that sees the outcome has
        seen (or can read) every test. Cancelled (the worker's grace ran out), the judge
        is stopped - its running test cancelled - and ends ``cancelled``: left pending."""
        stages = self.judges[delivery.entry]
        events_in, events_out = trio.open_memory_channel[dict[str, Any]](math.inf)
        judged = trio.Event()

        def deliver(message: dict[str, Any]) -> None:
            if message.get("event") == "test_finished":
                events_in.send_nowait(message)
            else:
                delivery.final = message
                judged.set()

        async def judging() -> None:
            try:
                await run_judge(request, stages, deliver)
            finally:
                events_in.close()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(judging)
                nursery.start_soon(self._publish, delivery, events_out)
                try:
                    await judged.wait()
                finally:
                    if not judged.is_set():
                        with trio.CancelScope(shield=True):
                            await stages.cancel()
        finally:
            del self.judges[delivery.entry]

    async def _publish(self, delivery: Delivery, events: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        """Each ``test_finished`` event to the judge's progress stream, in order, kept as
        long as its outcome; ``delivery`` tells a follower which run (a judge claimed
        after its worker died is judged again, from its first test) published it."""
        job_id = delivery.job_id
        assert job_id is not None
        key = self.keys.progress(job_id)
        async for message in events:
            test = msgpack.packb(message["test"], use_bin_type=True)

            async def publish(test: bytes = test) -> None:
                redis = self._client()
                await redis.xadd(key, {"id": job_id, "delivery": delivery.deliveries, "test": test},
                                 trim_strategy=coredis.PureToken.MAXLEN, threshold=PROGRESS_MAXLEN,
                                 trim_operator=coredis.PureToken.APPROXIMATELY)
                await redis.expire(key, self.config.result_ttl_s)

            await self._retrying("progress", publish)

    async def _finish(self, delivery: Delivery, outcome: bytes, reason: str | None) -> bool:
        """Write the outcome (none for an empty one) and acknowledge, if still ours."""
        keys = self.keys
        job_id = (delivery.job_id or "") if outcome else ""
        args: list[str | bytes | int] = [
            GROUP, self.consumer, delivery.entry, job_id, outcome, self.config.result_ttl_s, RESULTS_MAXLEN,
        ]
        if reason is not None:
            args += [reason, delivery.deliveries]
        written = await self._client().fcall(
            "sandbox_finish", [keys.stream, keys.result(job_id), keys.results, keys.id(job_id), keys.dead], args,
        )
        return bool(written == 1)

    async def _heartbeat(self) -> None:
        """Keep the deliveries held from looking abandoned: a job may run for longer
        than the claim timeout."""
        while not (self._stopping and not self.held):
            with trio.move_on_after(self.config.claim_idle_s / 3):
                await self._drained.wait()
            held = [entry for entry, delivery in self.held.items() if not delivery.lost]
            if not held:
                continue
            lost = await self._retrying("heartbeat", self._client().fcall, "sandbox_heartbeat",
                                        [self.keys.stream], [GROUP, self.consumer, *held])
            for entry in lost if isinstance(lost, list | tuple) else ():
                delivery = self.held.get(_text(entry))
                if delivery is not None:
                    delivery.lost = True
                    log("queue_delivery_lost", entry=delivery.entry, id=delivery.job_id)

    async def _retrying(self, what: str, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a Redis operation until it succeeds: an outage is waited out with backoff
        (logged once, counted), a function library or group that vanished with a Redis
        that lost its data is made again."""
        delay = BACKOFF_FIRST_S
        while True:
            try:
                value = await operation(*args)
            except OUTAGES as exc:
                if self._outage_since is None:
                    self._outage_since = trio.current_time()
                    if self.on_outage is not None:
                        self.on_outage()
                    log("redis_unreachable", stream=self.config.stream, during=what, error=str(exc))
            except RedisError as exc:
                if isinstance(exc, StreamConsumerGroupError) or "Function not found" in str(exc):
                    # Redis lost its data (restarted without persistence, flushed).
                    log("redis_setup_again", stream=self.config.stream, error=str(exc))
                    try:
                        await self._setup()
                        continue
                    except RedisError:
                        pass
                else:
                    log("redis_error", stream=self.config.stream, during=what, error=str(exc))
            else:
                if self._outage_since is not None:
                    log("redis_reachable", stream=self.config.stream,
                        outage_s=round(trio.current_time() - self._outage_since, 3))
                    self._outage_since = None
                return value
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _client(self) -> QueueRedis:
        assert self._redis is not None
        return self._redis


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(values: Any) -> dict[str, bytes]:
    return {_text(key): value for key, value in (values or {}).items()}


def _queued_judge(wire: Any, judge_id: str) -> JudgeRequest:
    """A judge request from the queue: the socket's, except that every package file
    travels as bytes - a ``file_id`` names a file in one worker's cache, and the worker
    that takes the judge may be any."""
    if not isinstance(wire, dict):
        raise ProtocolError("invalid_job", "a judge request is a map (the socket's judge message)", field="judge")
    request = judge_from_wire(wire, judge_id)
    for name, data in request.package.items():
        if isinstance(data, str):
            raise ProtocolError("invalid_job", f"{name}: a queued judge carries its files as bytes (a file_id "
                                "names a file in one worker's cache)", field=f"problem.{name}.file_id")
    return request


def _job_id(fields: dict[str, bytes]) -> str | None:
    """The producer's id of the job, if the entry has a usable one."""
    raw = fields.get("id")
    try:
        text = raw.decode() if isinstance(raw, bytes) else None
    except UnicodeDecodeError:
        return None
    return text if text and len(text) <= 128 else None

