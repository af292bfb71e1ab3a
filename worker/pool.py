"""Job records, the bounded queue and the slots that drain it.

Backpressure instead of unbounded memory: the queue holds at most ``max_queue`` jobs and
``submit`` raises ``busy`` beyond that; the records kept once their jobs are over hold
``max_records`` and ``max_kept_bytes`` at most. Ids are idempotent: a record lives on for
``retention_s`` after it finished, and submitting the same id again subscribes to that
record (its result if finished) instead of running the job twice - if it is the same job:
an id that names another job is an ``id_conflict``, never someone else's result.
"""

from __future__ import annotations

import enum
import os
import pickle
import resource
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from sandbox.models import Collect, Group, Job, Result, WarmSpec
from worker.filecache import FileCache
from worker.launcher_channel import JobOutput
from worker.launcher_process import LauncherProcess
from worker.protocol import ProtocolError, SessionExec, event_message, result_to_wire
from worker.slots import Slot

Subscriber = Callable[[dict[str, Any]], None]
# A running job's or warm sandbox's open files in its launcher (its cancel pipe, output
# pipes, report pipe, job channel, the counters of its cgroup: 14 on cgroup v1), rounded
# up; and what a launcher holds besides (its channel, zygote, spawner, id leases, ...).
FDS_PER_SANDBOX = 16
LAUNCHER_OWN_FDS = 256


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class JobRecord:
    """A job's record, from its submit until it is forgotten (``retention_s`` after its
    end, or sooner when the pool keeps too many: ``Pool._expire``). While it runs, its job
    and result are model objects; once it is over (``settle``), pickled. A worker keeps up
    to ``max_records`` records, and as objects - a dozen per record - every full pass of the cyclic
    collector walked them all while it held the event loop, and with it every job's
    supervision and reply; bytes it does not walk. They are unpickled only when asked for
    again (a resubmitted id, a late poll): the worker's own bytes, never a client's."""

    __slots__ = ("_job", "_pickled_job", "_pickled_result", "_result", "finished_at", "id", "leased", "owner", "slot",
                 "state", "stream", "submitted_at", "subscribers")

    def __init__(self, job_id: str, job: Job | Group | SessionExec, owner: object,
                 subscribers: dict[object, Subscriber], stream: bool = False) -> None:
        self.id = job_id
        self._job: Job | Group | SessionExec | None = job  # a group takes one slot and has a Result per member
        self._result: Result | list[Result] | None = None
        self._pickled_job = self._pickled_result = b""
        self.owner = owner  # None once it went away (``Pool.drop_owner``)
        self.state = JobState.QUEUED
        self.subscribers = subscribers
        self.submitted_at = time.monotonic()
        self.finished_at: float | None = None
        self.slot: Slot | None = None
        self.stream = stream  # its submitter asked for its output as it comes
        self.leased: Sequence[str] = ()  # the cached files it holds until it ends

    @property
    def job(self) -> Job | Group | SessionExec:
        if self._job is not None:
            return self._job
        job: Job | Group | SessionExec = pickle.loads(self._pickled_job)
        return job

    @property
    def result(self) -> Result | list[Result] | None:
        if self._result is not None or not self._pickled_result:
            return self._result
        result: Result | list[Result] = pickle.loads(self._pickled_result)
        return result

    def end(self, state: JobState, result: Result | list[Result] | None) -> float:
        """The job is over (its final event not sent yet: ``settle`` follows); when."""
        self.state, self._result, self.slot = state, result, None
        self.finished_at = time.monotonic()
        return self.finished_at

    def settle(self) -> None:
        """Keep the job and its result as bytes from now on (the class says why)."""
        if self._job is not None:
            self._pickled_job = pickle.dumps(self._job, pickle.HIGHEST_PROTOCOL)
            self._job = None
        if self._result is not None:
            self._pickled_result = pickle.dumps(self._result, pickle.HIGHEST_PROTOCOL)
            self._result = None

    @property
    def kept_bytes(self) -> int:
        """What it keeps once settled: its pickled job and result (0 before)."""
        return len(self._pickled_job) + len(self._pickled_result)

    def publish(self, event: str, **extra: Any) -> None:
        message = event_message(self.id, event, **extra)
        for deliver in list(self.subscribers.values()):
            deliver(message)

    @property
    def done(self) -> bool:
        """Over, its final event sent (a running job being cancelled is not yet: a
        resubmit of its id waits for that event, as for any running job)."""
        return self.finished_at is not None


@dataclass
class PoolStats:
    submitted: int = 0
    busy_rejections: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


class Pool:
    def __init__(
        self, slots: int, max_queue: int, warm: Sequence[WarmSpec] = (), retention_s: float = 300.0,
        max_records: int = 100_000, max_kept_bytes: int = 1 << 30, cache: FileCache | None = None,
        launchers: int | None = None,
        allow_bind: Sequence[str] = (), sessions_dir: str | None = None,
    ) -> None:
        # ``slots`` jobs run at once, on a few launcher processes (each supervises many
        # jobs, a thread each; ``default_launchers`` unless told), never more launchers
        # than slots. Slot i runs on launcher i mod n; a launcher keeps the warm sandboxes
        # of its slots' shares (rounded up once per launcher, not per slot).
        count = max(1, min(slots, launchers or default_launchers(slots + sum(spec.count for spec in warm))))
        self.cache = cache
        cache_dir = None if cache is None else cache.directory

        def warm_for(lanes: int) -> list[WarmSpec]:
            return [WarmSpec(-(-spec.count * lanes // slots), spec.profile, spec.image) for spec in warm]

        self.launchers = [LauncherProcess(index, warm_for(len(range(index, slots, count))), cache_dir,
                                          list(allow_bind), sessions_dir) for index in range(count)]
        self.slots = [Slot(index, self.launchers[index % count]) for index in range(slots)]
        self.warm_per_slot = sum(spec.count for spec in warm_for(1))
        self.max_queue = max_queue
        self.retention_s = retention_s
        self.max_records = max_records
        # The finished records' pickled jobs and results, at most ``max_kept_bytes`` in all:
        # a result holds up to twice the output cap, and the files the job collected.
        self.max_kept_bytes = max_kept_bytes
        self.kept_bytes = 0
        self.records: dict[str, JobRecord] = {}
        # The ids of the records each owner subscribed to (and of those it owns), so that
        # a client that goes away costs what it subscribed to, not a walk over every
        # record kept for resubmits (up to ``max_records``): a judge that submits each
        # test on a connection of its own closes one per job.
        self._subscribed: dict[object, set[str]] = {}
        self._finished: deque[str] = deque()  # ids of finished records, oldest first
        self.stats = PoolStats()
        self._send, self._receive = trio.open_memory_channel[JobRecord](max_queue)
        self.queued = 0
        self.running = 0
        self._idle = trio.Event()
        self._idle.set()
        # Told of every job that ends with a result: (status, seconds from submit).
        self.on_finished: Callable[[str, float], None] | None = None
        # The launcher that holds a session, by its id (None: no such session now), for
        # its execs (worker/sessions.py).
        self.session_launcher: Callable[[str], LauncherProcess | None] = lambda session: None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every launcher (in parallel), then drain the queue with one task per slot."""
        async with trio.open_nursery() as nursery:
            for launcher in self.launchers:
                nursery.start_soon(launcher.keep_alive)
            for launcher in self.launchers:
                await launcher.ready.wait()
            for slot in self.slots:
                nursery.start_soon(self._drain, slot)
            task_status.started()

    def submit(
        self, job_id: str, job: Job | Group | SessionExec, owner: object, subscriber: Subscriber, stream: bool = False,
    ) -> JobRecord:
        """Queue a job, or attach to the existing record of the same id (whose output
        is streamed if its first submitter asked)."""
        record = self.existing(job_id, job)
        if record is not None:
            record.subscribers[owner] = subscriber
            self._subscribed.setdefault(owner, set()).add(job_id)
            subscriber(event_message(job_id, "accepted", state=record.state.value))
            if record.done:
                subscriber(self._final_event(record))
            return record
        record = JobRecord(job_id, job, owner, {owner: subscriber}, stream=stream)
        if self.cache is not None:
            record.leased = self.cache.lease(job.job if isinstance(job, SessionExec) else job)
        try:
            self._send.send_nowait(record)
        except trio.WouldBlock:
            self._release(record)
            self.stats.busy_rejections += 1
            raise ProtocolError("busy", f"queue full ({self.max_queue} jobs waiting); retry later") from None
        self.records[job_id] = record
        self._subscribed.setdefault(owner, set()).add(job_id)
        self.queued += 1
        self.stats.submitted += 1
        record.publish("accepted", state=record.state.value)
        return record

    def existing(self, job_id: str, job: Job | Group | SessionExec) -> JobRecord | None:
        """The record a submit of this job under this id would attach to (None: it would
        make one); id_conflict if the id names another job."""
        self._expire()
        record = self.records.get(job_id)
        if record is not None and not _same_job(record.job, job):
            raise ProtocolError("id_conflict", f"id {job_id!r} belongs to another job; a new job needs a new id",
                                field="id")
        return record

    def room(self) -> int:
        """How many new jobs the queue takes now."""
        return self.max_queue - self.queued

    def knows(self, job_id: str) -> bool:
        """A submit of this id now would attach to a record, not make one."""
        self._expire()
        return job_id in self.records

    async def cancel(self, job_id: str) -> None:
        record = self.records.get(job_id)
        if record is None:
            raise ProtocolError("unknown_id", f"no job with id {job_id!r}", field="id")
        if record.state is JobState.QUEUED:
            self._finish(record, JobState.CANCELLED, None)
        elif record.state is JobState.RUNNING and record.slot is not None:
            record.state = JobState.CANCELLED
            await record.slot.cancel(job_id)

    async def drop_owner(self, owner: object) -> None:
        """A client went away: cancel its unfinished jobs, forget its subscriptions, and
        let go of it. Its records are kept for resubmits (``retention_s``), and one that
        still named it as owner kept the whole connection - its stream, tasks and
        buffers - as long: for a judge that submits each test on a connection of its
        own, a connection per job."""
        for job_id in self._subscribed.pop(owner, ()):
            record = self.records.get(job_id)
            if record is None:
                continue
            record.subscribers.pop(owner, None)
            if record.owner is owner:
                if not record.done:
                    await self.cancel(record.id)
                record.owner = None

    async def wait_idle(self) -> None:
        """Return once no job is running."""
        while self.running:
            await self._idle.wait()

    def state(self, job_id: str) -> JobRecord:
        record = self.records.get(job_id)
        if record is None:
            raise ProtocolError("unknown_id", f"no job with id {job_id!r}", field="id")
        return record

    def snapshot(self) -> dict[str, Any]:
        latencies = sorted(self.stats.latencies_ms)

        def percentile(p: float) -> float | None:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None

        return {
            "slots": len(self.slots),
            "queued": self.queued,
            "running": self.running,
            "max_queue": self.max_queue,
            "submitted": self.stats.submitted,
            "busy_rejections": self.stats.busy_rejections,
            "by_status": dict(self.stats.by_status),
            "latency_ms": {"p50": percentile(0.5), "p99": percentile(0.99), "count": len(latencies)},
            "records": len(self.records),
            "warm_per_slot": self.warm_per_slot,
            "launchers": len(self.launchers),
            "launcher_restarts": self.launcher_restarts(),
            "direct_handovers": sum(slot.handovers for slot in self.slots),
            "offers_ready": sum(launcher.offers_ready() for launcher in self.launchers),
            "cgroups": all(launcher.cgroups for launcher in self.launchers),
        }

    def launcher_restarts(self) -> int:
        return sum(launcher.restarts for launcher in self.launchers)

    async def _drain(self, slot: Slot) -> None:
        async for record in self._receive:
            self.queued -= 1
            if record.done:
                continue  # cancelled while queued
            record.state, record.slot = JobState.RUNNING, slot
            if self.running == 0:
                self._idle = trio.Event()
            self.running += 1

            async def started(record: JobRecord = record) -> None:
                record.publish("started")

            def output(piece: JobOutput, record: JobRecord = record) -> None:
                record.publish("output", stream=piece.stream, offset=piece.offset, data=piece.data)

            try:
                on_output = output if record.stream else None
                result: Result | list[Result] | ProtocolError | None
                if isinstance(record.job, SessionExec):
                    launcher = self.session_launcher(record.job.session)
                    result = await slot.run_exec(record.id, record.job, launcher, started, on_output)
                else:
                    result = await slot.run(record.id, record.job, started, on_output)
                if isinstance(result, Result) and isinstance(record.job, Job | SessionExec):
                    await self._keep_collected(record.job if isinstance(record.job, Job) else record.job.job, result)
                elif isinstance(result, list) and isinstance(record.job, Group):
                    for member, member_result in zip(record.job.jobs, result, strict=True):
                        await self._keep_collected(member, member_result)
            finally:
                self.running -= 1
                if self.running == 0:
                    self._idle.set()
            if isinstance(result, ProtocolError):
                self._reject(record, result)
            else:
                self._finish(record, JobState.CANCELLED if record.state is JobState.CANCELLED else JobState.FINISHED,
                             result)
            await slot.give_back()  # (its sandbox's cleanup comes after the result went out)

    async def _keep_collected(self, job: Job, result: Result) -> None:
        """The collected files whose entry asks for it go into the file cache: the result
        names them by id (``file_ids``) instead of carrying their bytes, for later jobs to
        use (go-judge's copyOutCached). One that does not fit keeps its bytes and says so
        in ``file_errors``; a worker without a cache keeps them all."""
        wanted = [entry for entry in job.collect if entry.cache]
        if not wanted or self.cache is None:
            return
        for path in [p for p in result.files if any(_collected_by(entry, p) for entry in wanted)]:
            try:
                result.file_ids[path] = await trio.to_thread.run_sync(self.cache.store, result.files[path])
            except (ProtocolError, OSError) as exc:
                result.file_errors[path] = f"not_cached: {getattr(exc, 'message', exc)}"
                continue
            del result.files[path]

    def _release(self, record: JobRecord) -> None:
        """The job reads its cached files no more: they may be evicted or removed."""
        if self.cache is not None:
            self.cache.release(record.leased)
        record.leased = ()

    def _finish(self, record: JobRecord, state: JobState, result: Result | list[Result] | None) -> None:
        self._release(record)
        finished_at = record.end(state, result)
        self._finished.append(record.id)
        if result is not None:
            latency_s = finished_at - record.submitted_at
            for member in result if isinstance(result, list) else [result]:  # a group: each member's
                self.stats.by_status[member.status.value] += 1
                if self.on_finished is not None:
                    self.on_finished(member.status.value, latency_s)
            self.stats.latencies_ms.append(latency_s * 1000)
        final = self._final_event(record)
        for deliver in list(record.subscribers.values()):
            deliver(final)
        record.settle()
        self.kept_bytes += record.kept_bytes
        self._expire()  # (a result may have taken the kept bytes over their budget)

    def _reject(self, record: JobRecord, error: ProtocolError) -> None:
        """The launcher found the job wrong, as the worker finds others at submit: its
        submitters get the error, and the id is forgotten, as if it never came (the job
        never ran; sent again, it is judged again)."""
        self._release(record)
        self._forget(record)
        message = error.to_message(record.id)
        for deliver in list(record.subscribers.values()):
            deliver(message)

    @staticmethod
    def _final_event(record: JobRecord) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if isinstance(record.result, list):
            extra["results"] = [result_to_wire(result) for result in record.result]
        elif record.result is not None:
            extra["result"] = result_to_wire(record.result)
        return event_message(record.id, record.state.value, **extra)

    def _expire(self) -> None:
        """Forget finished records past the retention window, and the oldest finished
        ones beyond ``max_records`` or ``max_kept_bytes`` - in time proportional to what
        is forgotten (this runs for every submit and every end)."""
        now = time.monotonic()
        while self._finished:
            record = self.records.get(self._finished[0])
            if record is not None and not record.done:  # its id forgotten, then taken by a job not over yet
                record = None
            expired = record is None or now - (record.finished_at or now) > self.retention_s
            if not expired and len(self.records) <= self.max_records and self.kept_bytes <= self.max_kept_bytes:
                break
            self._finished.popleft()
            if record is not None:
                self._forget(record)

    def _forget(self, record: JobRecord) -> None:
        """Drop the record, and its id from its subscribers' lists: a client that stays
        connected for millions of jobs keeps only the ids still kept."""
        if self.records.pop(record.id, None) is record:
            self.kept_bytes -= record.kept_bytes
        for owner in record.subscribers:
            subscribed = self._subscribed.get(owner)
            if subscribed is not None:
                subscribed.discard(record.id)
                if not subscribed:
                    del self._subscribed[owner]


def default_launchers(sandboxes: int) -> int:
    """One launcher per CPU, or more if that many sandboxes (running jobs and warm ones)
    would need more open files than one launcher may hold: each holds its pipes, its
    channels and its cgroup's counters open in its launcher (``FDS_PER_SANDBOX``), under
    the hard limit the worker raised its own to (``server.serve_forever``), which the
    launchers inherit. A job past that limit would fail (internal_error) to start."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cpus = os.cpu_count() or 1
    if hard == resource.RLIM_INFINITY:
        return cpus
    per_launcher = max(1, (hard - LAUNCHER_OWN_FDS) // FDS_PER_SANDBOX)
    return max(cpus, -(-sandboxes // per_launcher))


def _same_job(first: Job | Group | SessionExec, second: Job | Group | SessionExec) -> bool:
    """The same job (or group: the same pipes, the same members; or exec: the same
    session): equal content, the same limits given (a limit left to the profile is not
    the same as one given with the profile's default value)."""
    if isinstance(first, SessionExec) or isinstance(second, SessionExec):
        return (isinstance(first, SessionExec) and isinstance(second, SessionExec)
                and first.session == second.session and _same_job(first.job, second.job))
    if isinstance(first, Group) or isinstance(second, Group):
        return (isinstance(first, Group) and isinstance(second, Group) and first.pipes == second.pipes
                and len(first.jobs) == len(second.jobs)
                and all(_same_job(a, b) for a, b in zip(first.jobs, second.jobs, strict=True)))
    return first == second and first.limits.given == second.limits.given


def _collected_by(entry: Collect, path: str) -> bool:
    """Whether ``path`` of a result's files came from collect entry ``entry``."""
    return path == entry.path or (entry.directory and path.startswith(entry.path))
