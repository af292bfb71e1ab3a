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

A worker may serve several streams (a stream per tenant or contest), each with a
weight: among the streams that have jobs waiting it takes from each in proportion to its
weight (``sandbox_take``), so one producer's flood does not starve another.

An entry may carry a judge request instead of a job (field ``judge``, the socket's
``judge`` map): the worker that takes it judges it (worker/judging.py), its jobs queued
on the stream's stages queue for any worker to run (worker/queue_stages.py), publishes
each ``test_finished`` event to the judge's progress stream, and writes the report as
the outcome under the same rules. A job (or a judge package) may name files a producer
put once for every worker (worker/queue_blobs.py).

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
from functools import partial
from typing import Any, TypeVar

import coredis
import msgpack
import trio
from coredis.exceptions import RedisError, StreamConsumerGroupError, StreamDuplicateConsumerGroupError
from coredis.response.types import StreamPendingExt

from sandbox.models import Job
from worker.admission import admit
from worker.judging import JudgeRequest, judge_from_wire, run_judge
from worker.logs import log
from worker.pool import Pool
from worker.protocol import ProtocolError, job_from_wire
from worker.queue_blobs import fetch_blobs, named_files, put_blob, read_cached
from worker.queue_schema import (
    CANCELLED_MESSAGE,
    GROUP,
    LIBRARY,
    PROGRESS_MAXLEN,
    RESULTS_MAXLEN,
    QueueConfig,
    QueueError,
    QueueKeys,
    outcome_of_error,
    outcome_of_report,
    outcome_of_result,
)
from worker.queue_stages import QueueStages, StageWaits, stage_prefix
from worker.redis_connect import OUTAGES, QueueRedis, connect

T = TypeVar("T")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.05, 2.0
CONNECT_TIMEOUT_S = 5.0
MAX_BLOCK_MS = 1000  # a read waits this long at most, so claims and stopping are looked at
ROOM_POLL_S = 0.2  # with no free slot: how often to look again (socket jobs free slots too)
CANCEL_MEMORY_S = 60.0  # a cancel heard for a job not held is remembered this long


@dataclass
class Lane:
    """One stream the worker takes from, and its place in the fair share."""

    keys: QueueKeys
    weight: int  # 0: served before every weighted lane (a stages queue)
    claim_cursor: str = "0-0"
    next_claim: float = 0.0
    time: float = 0.0  # virtual time: how far its weighted share has been served


@dataclass
class Delivery:
    lane: Lane
    entry: str  # the stream entry's id
    fields: dict[str, bytes]
    deliveries: int
    job_id: str | None = None  # the producer's id (None: the entry has no usable one)
    duplicate: bool = False  # another entry holds its id: acknowledged, never run
    lost: bool = False  # a heartbeat found it claimed by another worker
    final: dict[str, Any] = field(default_factory=dict)  # the pool's (or the judge's) final message for it
    job: Job | None = None  # the job to run, once checked
    pool_id: str | None = None  # its id in the pool, once there
    cancelled: bool = False  # its producer cancelled it: its outcome says so
    judge: JudgeRequest | None = None  # a judge request to judge here, instead of a job

    @property
    def key(self) -> tuple[str, str]:
        return self.lane.keys.stream, self.entry


class QueueConsumer:
    def __init__(
        self, config: QueueConfig, pool: Pool, max_job_bytes: int, on_outage: Callable[[], None] | None = None,
        on_take: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.max_job_bytes = max_job_bytes
        self.pool = pool
        self.on_outage = on_outage
        self.on_take = on_take  # told the stream of each delivery taken
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        # Every stream's stages queue first (served before any stream), then the streams.
        self.urgent = [Lane(QueueKeys(share.stream).stages, 0) for share in config.shares]
        self.lanes = self.urgent + [Lane(QueueKeys(share.stream), share.weight) for share in config.shares]
        self.clock = 0.0  # the fair share's virtual clock (sandbox_take)
        self.held: dict[tuple[str, str], Delivery] = {}
        self.judges: dict[tuple[str, str], QueueStages] = {}  # the judges held
        self.waits = StageWaits()
        # Cancels heard for jobs not (yet) held here, by stream and id, with when: a take
        # answered before the cancel was heard but handled after it still sees it.
        self._cancels_heard: dict[tuple[str, str], float] = {}
        self._preparing = 0  # jobs held that are not in the pool yet (their files being fetched)
        self._outage_since: float | None = None
        self._stopping = False
        # A take's calls under way (``_take``): its entries may already be delivered to
        # this consumer in Redis (pending here) before they are held; stopping waits for
        # them too.
        self._take_under_way = False
        self._read_scope = trio.CancelScope()
        self._room = trio.Event()
        self._drained = trio.Event()
        self._redis: QueueRedis | None = None
        self._streams = ",".join(config.streams)

    def stop(self) -> None:
        """Stop taking jobs; the ones held are finished and acknowledged (``drained``)."""
        self._stopping = True
        self._read_scope.cancel()
        if self._finished_holding():
            self._drained.set()

    def stopping(self) -> bool:
        """Whether stop() was called: a method, read afresh after each await (where
        stop() may have come)."""
        return self._stopping

    def _finished_holding(self) -> bool:
        """Stopped, with no delivery held and none on its way to being held."""
        return self._stopping and not self.held and not self._take_under_way

    def _taking(self) -> bool:
        """Whether to take more: not once stopped, but for the jobs of judges held."""
        return not self._stopping or bool(self.judges)

    async def drained(self) -> None:
        """Return once stopped with nothing held."""
        await self._drained.wait()

    async def run(self) -> None:
        block_ms = int(min(MAX_BLOCK_MS, self.config.claim_idle_s * 500))
        async with connect(
            self.config.url, self.config.streams[0], connect_timeout=CONNECT_TIMEOUT_S,
            stream_timeout=block_ms / 1000 + 10,
        ) as redis:
            self._redis = redis
            await self._retrying("setup", self._setup)
            log("queue_consuming", stream=self._streams, consumer=self.consumer)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._follow)
                while self._taking():
                    free = len(self.pool.slots) - self.pool.running - self.pool.queued - self._preparing
                    if free <= 0:
                        self._room = trio.Event()
                        with trio.move_on_after(ROOM_POLL_S):
                            await self._room.wait()
                        continue
                    # A worker judges no more judges at once than it has slots (each is a
                    # thread and a package on disk); beyond, it serves their jobs only, as it
                    # does once stopped until the judges it holds are judged (their jobs may
                    # have no other worker).
                    judging_more = not self._stopping and len(self.judges) < len(self.pool.slots)
                    lanes = self.lanes if judging_more else self.urgent
                    # (No checkpoint between a take's end and its deliveries being held.)
                    for delivery in await self._retrying("take", self._take, lanes, free, block_ms):
                        self._start(nursery, delivery)
                    if self._finished_holding():  # (stopped during a take that brought nothing)
                        self._drained.set()

    async def _follow(self) -> None:
        """Hear the outcomes of the judges' stage jobs, and the cancels of jobs, until the
        last delivery held ends."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_streams, [lane.keys.results for lane in self.urgent], self.waits.hear_entry)
            nursery.start_soon(self._follow_streams, [lane.keys.cancels for lane in self.lanes], self._heard_cancel)
            await self._drained.wait()
            nursery.cancel_scope.cancel()

    async def _follow_streams(self, streams: list[str],
                              hear: Callable[[str, dict[str, bytes]], Awaitable[None]]) -> None:
        """Hand every entry added to ``streams`` from now on to ``hear`` (the stream's
        name, the entry's fields), in order: read from each stream's last entry as this
        starts, then from the last one heard."""
        redis = self.redis()
        cursors: dict[str, str | bytes] = {}
        for stream in streams:
            last = await self._retrying("follow", partial(redis.xrevrange, stream, count=1))
            cursors[stream] = last[0].identifier if last else "0-0"
        while True:
            news = await self._retrying("follow", partial(redis.xread, cursors, count=100, block=MAX_BLOCK_MS))
            for name, entries in (news or {}).items():
                for entry in entries:
                    cursors[_text(name)] = entry.identifier
                    await hear(_text(name), _fields(entry.field_values))

    async def _heard_cancel(self, cancels: str, fields: dict[str, bytes]) -> None:
        """A job cancelled while a worker held it (``sandbox_cancel``): stopped if it is
        held here. (A job claimed later is checked by its mark instead.)"""
        now = trio.current_time()
        for stale in [key for key, heard in self._cancels_heard.items() if now - heard > CANCEL_MEMORY_S]:
            del self._cancels_heard[stale]
        stream = next(lane.keys.stream for lane in self.lanes if lane.keys.cancels == cancels)
        await self._cancel(stream, _text(fields.get("id", b"")))

    async def _cancel(self, stream: str, job_id: str) -> None:
        """Stop a held job (or judge) its producer cancelled; remember one not held."""
        held = [delivery for delivery in self.held.values()
                if delivery.lane.keys.stream == stream and delivery.job_id == job_id and not delivery.duplicate]
        if not held:
            self._cancels_heard[stream, job_id] = trio.current_time()
        for delivery in held:
            delivery.cancelled = True
            stages = self.judges.get(delivery.key)
            if stages is not None:
                await stages.cancel()
            elif delivery.pool_id is not None and delivery.pool_id in self.pool.records:
                await self.pool.cancel(delivery.pool_id)

    async def call(self, what: str, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A Redis operation for a judge's stages, retried through an outage."""
        return await self._retrying(what, operation, *args)

    def redis(self) -> QueueRedis:
        assert self._redis is not None
        return self._redis

    async def _setup(self) -> None:
        """The functions, the groups (reading each stream from its start: jobs added
        before any worker came are served) and the bounds producers are refused beyond."""
        redis = self.redis()
        await redis.function_load(LIBRARY, replace=True)
        for lane in self.lanes:
            try:
                await redis.xgroup_create(lane.keys.stream, GROUP, "0", mkstream=True)
            except StreamDuplicateConsumerGroupError:
                pass  # another worker made it
            if lane.weight:
                bounds = {"max_queue": self.config.max_queue, "max_blob": self.config.max_blob,
                          "result_ttl": self.config.result_ttl_s}
                await redis.hset(lane.keys.config, bounds)

    async def _take(self, lanes: list[Lane], count: int, block_ms: int) -> list[Delivery]:
        """Deliveries for up to ``count`` free slots: first the jobs whose workers went
        silent (claimed), then new ones, the stages queues first, then the streams by
        their fair share."""
        if not self._taking():
            return []  # (a take retried through an outage that outlasted the worker's run)
        self._take_under_way = True
        try:
            return await self._take_calls(lanes, count, block_ms)
        finally:
            self._take_under_way = False

    async def _take_calls(self, lanes: list[Lane], count: int, block_ms: int) -> list[Delivery]:
        """``_take``'s calls to Redis. Not between them, in the backoff of an outage: a
        stop that comes then need not wait for Redis to come back."""
        redis = self.redis()
        taken: list[Delivery] = []
        if self.stopping():
            lanes = self.urgent
        for lane in lanes:
            if len(taken) < count and trio.current_time() >= lane.next_claim:
                taken += await self._claim(lane, count - len(taken))
        if not taken:
            weighted = [lane for lane in lanes if lane.weight]
            urgent = [lane for lane in lanes if not lane.weight]
            args: list[str | int] = [GROUP, self.consumer, count, len(urgent), repr(self.clock)]
            for lane in weighted:
                args += [lane.weight, repr(lane.time)]
            answer = await redis.fcall("sandbox_take", [lane.keys.stream for lane in urgent + weighted], args)
            entries, clock, times, last = answer
            self.clock = float(clock)
            for lane, time in zip(weighted, times, strict=True):
                lane.time = float(time)
            for index, entry, values in entries:
                taken.append(Delivery((urgent + weighted)[int(index) - 1], _text(entry), _pairs(values), 1))
            if not taken:
                # Nothing waits: sleep until an entry newer than the last comes to any of
                # them (it is not read here: the next take does). Cut short by stop().
                self._read_scope = trio.CancelScope()
                if not self._taking():  # (stop() came during the calls above)
                    self._read_scope.cancel()
                with self._read_scope:
                    newer = {lane.keys.stream: _text(after)
                             for lane, after in zip(urgent + weighted, last, strict=True)}
                    await redis.xread(newer, count=1, block=block_ms)
        for delivery in taken:
            await self._claim_id(delivery)
        return taken

    async def _claim(self, lane: Lane, count: int) -> list[Delivery]:
        """The lane's deliveries idle for longer than the claim timeout (their worker
        died or went silent), up to ``count``; a whole pass made, the lane rests until
        its next period."""
        redis = self.redis()
        idle_ms = int(self.config.claim_idle_s * 1000)
        cursor, entries, *_ = await redis.xautoclaim(
            lane.keys.stream, GROUP, self.consumer, idle_ms, lane.claim_cursor, count=count,
        )
        lane.claim_cursor = _text(cursor)
        if lane.claim_cursor == "0-0":
            lane.next_claim = trio.current_time() + self.config.claim_idle_s / 2
        claimed = []
        for entry in entries:
            identifier = _text(entry.identifier)
            if (lane.keys.stream, identifier) in self.held:
                continue  # ours already (a heartbeat missed during an outage)
            pending = await redis.xpending(lane.keys.stream, GROUP, identifier, identifier, 1)
            record = pending[0] if isinstance(pending, tuple) and pending else None
            deliveries = record.delivered if isinstance(record, StreamPendingExt) else 1
            delivery = Delivery(lane, identifier, _fields(entry.field_values), deliveries)
            job_id = _job_id(delivery.fields)
            if job_id is not None:  # (cancelled while its first worker held it, before this one heard)
                delivery.cancelled = bool(await redis.exists([lane.keys.cancel_mark(job_id)]))
            claimed.append(delivery)
        return claimed

    async def _claim_id(self, delivery: Delivery) -> None:
        """An id names one job: its key holds the entry that carries it (set at submit by
        sandbox_submit, or here for an entry a producer added with a plain XADD). An entry
        whose id another entry holds is a resubmission, never run twice."""
        delivery.job_id = _job_id(delivery.fields)
        if delivery.job_id is None:
            return
        holder = await self.redis().set(delivery.lane.keys.id(delivery.job_id), delivery.entry,
                                        condition=coredis.PureToken.NX, get=True)
        delivery.duplicate = holder is not None and _text(holder).split(" ")[0] != delivery.entry

    def _start(self, nursery: trio.Nursery, delivery: Delivery) -> None:
        """Check the delivery and count it at once (so the next count of free slots
        sees it), then see it through in a task of its own."""
        self.held[delivery.key] = delivery
        if self.on_take is not None:
            self.on_take(delivery.lane.keys.stream)
        if self._cancels_heard.pop((delivery.lane.keys.stream, delivery.job_id or ""), None) is not None:
            delivery.cancelled = True
        self._check(delivery)
        if delivery.judge is not None:
            self.judges[delivery.key] = QueueStages(
                self.pool, self, trio.lowlevel.current_trio_token(), queue=self, keys=delivery.lane.keys.stages,
                name=stage_prefix(delivery.job_id or "", delivery.deliveries))
        elif delivery.job is not None:
            self._preparing += 1
        nursery.start_soon(self._serve, delivery)

    def _check(self, delivery: Delivery) -> None:
        """Decode and check the entry's job (``delivery.job``) or judge request
        (``delivery.judge``); a refusal is its final message."""
        if (delivery.job_id is None or delivery.duplicate or delivery.cancelled
                or delivery.deliveries > self.config.max_deliveries):
            return
        kind = "judge" if "judge" in delivery.fields else "job"
        payload = delivery.fields.get(kind, b"")
        try:
            if len(payload) > self.max_job_bytes:
                raise ProtocolError("invalid_job", f"the {kind} is {len(payload)} bytes, more than this worker "
                                    f"takes ({self.max_job_bytes}, its --max-frame)", field=kind)
            wire = msgpack.unpackb(payload, raw=False)
            if kind == "judge":
                delivery.judge = _queued_judge(wire, delivery.job_id)
                return
            delivery.job = job_from_wire(wire)
            admit(delivery.job)
        except ProtocolError as exc:
            delivery.job = None
            delivery.final = exc.to_message()
        except Exception as exc:  # msgpack raises many unrelated types for bad input
            delivery.job = None
            delivery.final = ProtocolError("invalid_job", f"undecodable {kind}: {type(exc).__name__}",
                                           field=kind).to_message()

    async def _submit(self, delivery: Delivery, job: Job) -> trio.Event | None:
        """Hand the job to the pool, its queued files fetched first: the event its final
        message sets (in ``delivery.final``), or None when it does not go to the pool."""
        cache = self.pool.cache
        leased: list[str] = []
        try:
            named = named_files(job)
            if named and cache is None:
                raise ProtocolError("invalid_job", "this worker has no file cache", field=named[0][1])
            if cache is not None:
                fetch = partial(self._retrying, "blob", self.redis().get)
                leased = await fetch_blobs(fetch, delivery.lane.keys, cache, named)
            done = trio.Event()

            def deliver(message: dict[str, Any]) -> None:
                if message.get("type") == "error" or message.get("event") in ("finished", "cancelled"):
                    delivery.final = message
                    done.set()

            if delivery.cancelled:  # (while its files were fetched)
                return None
            pool_id = f"queue:{delivery.lane.keys.stream}:{delivery.entry}:{delivery.deliveries}"
            try:
                self.pool.submit(pool_id, job, self, deliver)
                delivery.pool_id = pool_id
            except ProtocolError as exc:
                if exc.code != "busy":
                    raise
                delivery.final = {"event": "give_back", "reason": exc.message}  # the pool's queue is full
                return None
            return done
        except ProtocolError as exc:
            delivery.final = exc.to_message()
            return None
        finally:
            self._preparing -= 1
            if cache is not None:
                cache.release(leased)

    async def _serve(self, delivery: Delivery) -> None:
        """Wait for the job's outcome, then write it and acknowledge the delivery."""
        try:
            if delivery.judge is not None:
                await self._judge(delivery, delivery.judge)
            elif delivery.job is not None:
                submitted = await self._submit(delivery, delivery.job)
                if submitted is not None:
                    await submitted.wait()
                    await self._share_collected(delivery)
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
            del self.held[delivery.key]
            self._room.set()
            if self._finished_holding():
                self._drained.set()

    async def _share_collected(self, delivery: Delivery) -> None:
        """The files a finished job collected into the cache (``"cache": true``) are
        put for every worker of the stream too: the ids its result names work in the
        next job, whichever worker takes it."""
        result = delivery.final.get("result") if delivery.final.get("event") == "finished" else None
        cache = self.pool.cache
        if not result or cache is None:
            return
        for file_id in dict(result.get("file_ids") or {}).values():
            if not cache.holds(file_id):
                continue  # (evicted already: the result names it, and a later job is told it is gone)
            leased = cache.lease_ids([(file_id, "file_ids")])
            try:
                data = await trio.to_thread.run_sync(read_cached, cache, file_id)
            finally:
                cache.release(leased)
            try:
                await self._retrying("blob", put_blob, partial(self.redis().fcall, "sandbox_put_blob"),
                                     delivery.lane.keys, data, self.config.result_ttl_s)
            except QueueError as exc:  # (blob_too_big) kept here only: elsewhere it is as if evicted
                log("blob_not_shared", stream=delivery.lane.keys.stream, file_id=file_id, error=exc.message)

    def _outcome(self, delivery: Delivery) -> tuple[bytes | None, str | None]:
        """What to write for a delivery, and the reason to dead-letter it: (None, None)
        leaves it pending, for another worker to claim."""
        job_id, final = delivery.job_id, delivery.final
        if job_id is None:
            return b"", "the entry has no id (1..128 characters)"
        if delivery.duplicate:
            return b"", None
        if delivery.cancelled:
            return outcome_of_error(job_id, "cancelled", CANCELLED_MESSAGE), None
        if delivery.deliveries > self.config.max_deliveries:
            message = (f"delivered {delivery.deliveries} times without a result (its workers died or lost it); "
                       f"moved to {delivery.lane.keys.dead}")
            return outcome_of_error(job_id, "dead_letter", message), "max_deliveries"
        if final.get("type") == "error" and final.get("code") == "busy":
            return None, None  # an interactive judge's pair refused by a pool full of socket jobs: given back
        if final.get("type") == "error":
            return outcome_of_error(job_id, final["code"], final["message"], final.get("field")), None
        if final.get("event") == "finished":
            return outcome_of_result(job_id, final["result"]), None
        if final.get("event") == "judged":
            return outcome_of_report(job_id, final["report"]), None
        # Cancelled (the worker gave up at the end of its grace period) or given back.
        return None, None

    async def _judge(self, delivery: Delivery, request: JudgeRequest) -> None:
        """Judge, its jobs on the stages queue, publishing each test's event as it
        comes; the final message lands in ``delivery.final``. Every event is written
        before this returns, so a producer that sees the outcome has seen (or can read)
        every test. Cancelled (the worker's grace ran out), the judge is stopped and
        ends ``cancelled``: left pending. Files the package names by id are fetched
        into this worker's cache first."""
        stages = self.judges[delivery.key]
        events_in, events_out = trio.open_memory_channel[dict[str, Any]](math.inf)
        judged = trio.Event()
        cache = self.pool.cache
        leased: list[str] = []

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
            named = [(file_id, f"problem.{name}.file_id") for name, file_id in request.package.items()
                     if isinstance(file_id, str)]
            if named and cache is not None:
                try:
                    fetch = partial(self._retrying, "blob", self.redis().get)
                    leased = await fetch_blobs(fetch, delivery.lane.keys, cache, named)
                except ProtocolError as exc:
                    delivery.final = exc.to_message(request.id)
                    return
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
            del self.judges[delivery.key]
            if cache is not None:
                cache.release(leased)
            if not self._taking():
                self._read_scope.cancel()

    async def _publish(self, delivery: Delivery, events: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        """Each ``test_finished`` event to the judge's progress stream, in order, kept as
        long as its outcome; ``delivery`` tells a follower which run (a judge claimed
        after its worker died is judged again, from its first test) published it."""
        job_id = delivery.job_id
        assert job_id is not None
        key = delivery.lane.keys.progress(job_id)
        async for message in events:
            test = msgpack.packb(message["test"], use_bin_type=True)

            async def publish(test: bytes = test) -> None:
                redis = self.redis()
                await redis.xadd(key, {"id": job_id, "delivery": delivery.deliveries, "test": test},
                                 trim_strategy=coredis.PureToken.MAXLEN, threshold=PROGRESS_MAXLEN,
                                 trim_operator=coredis.PureToken.APPROXIMATELY)
                await redis.expire(key, self.config.result_ttl_s)

            await self._retrying("progress", publish)

    async def _finish(self, delivery: Delivery, outcome: bytes, reason: str | None) -> bool:
        """Write the outcome (none for an empty one) and acknowledge, if still ours."""
        keys = delivery.lane.keys
        job_id = (delivery.job_id or "") if outcome else ""
        args: list[str | bytes | int] = [
            GROUP, self.consumer, delivery.entry, job_id, outcome, self.config.result_ttl_s, RESULTS_MAXLEN,
        ]
        if reason is not None:
            args += [reason, delivery.deliveries]
        written = await self.redis().fcall(
            "sandbox_finish", [keys.stream, keys.result(job_id), keys.results, keys.id(job_id), keys.dead], args,
        )
        return bool(written == 1)

    async def _heartbeat(self) -> None:
        """Keep the deliveries held from looking abandoned: a job may run for longer
        than the claim timeout."""
        while not self._finished_holding():
            with trio.move_on_after(self.config.claim_idle_s / 3):
                await self._drained.wait()
            for lane in self.lanes:
                held = [entry for (stream, entry), delivery in self.held.items()
                        if stream == lane.keys.stream and not delivery.lost]
                if not held:
                    continue
                lost = await self._retrying("heartbeat", self.redis().fcall, "sandbox_heartbeat",
                                            [lane.keys.stream], [GROUP, self.consumer, *held])
                for entry in lost if isinstance(lost, list | tuple) else ():
                    delivery = self.held.get((lane.keys.stream, _text(entry)))
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
                    log("redis_unreachable", stream=self._streams, during=what, error=str(exc))
            except RedisError as exc:
                if isinstance(exc, StreamConsumerGroupError) or "Function not found" in str(exc):
                    # Redis lost its data (restarted without persistence, flushed).
                    log("redis_setup_again", stream=self._streams, error=str(exc))
                    try:
                        await self._setup()
                        continue
                    except RedisError:
                        pass
                else:
                    log("redis_error", stream=self._streams, during=what, error=str(exc))
            else:
                if self._outage_since is not None:
                    log("redis_reachable", stream=self._streams,
                        outage_s=round(trio.current_time() - self._outage_since, 3))
                    self._outage_since = None
                return value
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


def _text(value: bytes | str) -> str:
    """A name or id from Redis as text; bytes that are not UTF-8 (a producer's) decoded
    with replacements, so they name nothing rather than end the worker."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _fields(values: Any) -> dict[str, bytes]:
    return {_text(key): value for key, value in (values or {}).items()}


def _pairs(values: list[bytes]) -> dict[str, bytes]:
    """An entry's fields as a script returns them: a flat list, name then value."""
    return {_text(values[index]): values[index + 1] for index in range(0, len(values) - 1, 2)}


def _queued_judge(wire: Any, judge_id: str) -> JudgeRequest:
    """A judge request from the queue: the socket's (a package file named by id is one a
    producer put in Redis, ``put_file``, fetched by whichever worker takes the judge)."""
    if not isinstance(wire, dict):
        raise ProtocolError("invalid_job", "a judge request is a map (the socket's judge message)", field="judge")
    return judge_from_wire(wire, judge_id)


def _job_id(fields: dict[str, bytes]) -> str | None:
    """The producer's id of the job, if the entry has a usable one."""
    raw = fields.get("id")
    try:
        text = raw.decode() if isinstance(raw, bytes) else None
    except UnicodeDecodeError:
        return None
    return text if text and len(text) <= 128 else None

