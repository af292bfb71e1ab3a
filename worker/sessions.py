"""The worker's sessions (docs/protocol.md "Sessions"): sandboxes that live between
commands, each held by one launcher (sandbox/session.py runs there).

A session is not a slot: it holds only its files while idle. Its execs are queued and
run like submitted jobs (``Pool.submit`` of a ``SessionExec``: the same queue, events,
ids and cancel), each taking a slot while it runs, on the launcher that holds the
session. This table keeps what the worker must know about each - its launcher, its idle
time, its recent execs for ``session_logs`` - and deletes a session idle (no exec queued
or running) longer than its TTL.

Sessions live no longer than their launcher: a launcher that dies takes its sessions
with it (each init ends as its job channel closes), and the table forgets them at the
next look (``get``); a worker that dies takes its launchers, which delete their sessions
as they see their channel close; the cgroups of a launcher killed outright are removed
by the next launcher's runner, by their creator's pid (``CgroupBackend.reap_stale``).
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio

from sandbox.models import Job, SessionSpec
from worker.admission import admit
from worker.launcher_channel import CreateSession, SessionAnswer, SessionControl, encode
from worker.launcher_process import LauncherDied, LauncherProcess
from worker.pool import Pool, Subscriber
from worker.protocol import SESSION_ID_PREFIX, ProtocolError, SessionExec, session_spec_to_wire

LOG_LENGTH = 20  # execs kept per session for session_logs
LOG_OUTPUT = 4096  # bytes kept of each stream of each (its end)
_FINAL_EVENTS = ("finished", "cancelled")


@dataclass
class SessionRecord:
    id: str
    spec: SessionSpec
    launcher: LauncherProcess
    incarnation: int  # the launcher's restarts when it made the session: another count, another process
    created_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    pending: set[str] = field(default_factory=set)  # execs queued or running
    paused: bool = False
    execs: int = 0
    logs: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_LENGTH))

    def to_wire(self) -> dict[str, Any]:
        state = "paused" if self.paused else "running" if self.pending else "idle"
        return {
            "session": self.id, "image": self.spec.image, "profile": self.spec.profile, "state": state,
            "ttl": self.spec.ttl_s, "idle_s": 0.0 if self.pending else round(time.monotonic() - self.last_active, 3),
            "created_at": self.created_at, "execs": self.execs, "launcher": self.launcher.index,
        }


class Sessions:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.records: dict[str, SessionRecord] = {}
        self._requests = itertools.count(1)
        self._changed = trio.Event()  # a session was made or went idle: the TTL task looks again
        pool.session_launcher = self._launcher_of

    async def create(self, spec: SessionSpec) -> SessionRecord:
        """Make a session on the launcher that holds the fewest; raises ProtocolError
        for what the worker or the launcher refused (invalid_job: a profile that is not
        one of the worker's own, an image not in its store; session_error)."""
        admit(Job(cmd=["true"], image=spec.image, profile=spec.profile))  # as a job on them is
        launcher = min(self.pool.launchers, key=lambda each: sum(r.launcher is each for r in self.records.values()))
        await launcher.ready.wait()
        session_id = SESSION_ID_PREFIX + os.urandom(8).hex()
        incarnation = launcher.restarts
        await self._ask(launcher, CreateSession(session_id, session_spec_to_wire(spec)))
        if launcher.restarts != incarnation:
            raise ProtocolError("session_error", "the launcher died while it made the session")
        record = SessionRecord(session_id, spec, launcher, incarnation)
        self.records[session_id] = record
        self._wake()
        return record

    def get(self, session_id: str) -> SessionRecord:
        """The live session of that id; unknown_session for one deleted, expired or taken
        down with its launcher."""
        record = self.records.get(session_id)
        if record is not None and record.launcher.restarts != record.incarnation:
            del self.records[session_id]
            record = None
        if record is None:
            raise ProtocolError("unknown_session", f"no session {session_id}", field="session")
        return record

    def submit_exec(self, exec_id: str, session_id: str, job: Job, owner: object, deliver: Subscriber,
                    stream: bool) -> None:
        """Queue an exec as a job (its events go to ``deliver``, and are watched here for
        the session's idle time and logs)."""
        record = self.get(session_id)
        if record.paused:
            raise ProtocolError("session_paused", f"session {session_id} is paused: resume it first",
                                field="session")
        work = SessionExec(session_id, job)
        fresh = not self.pool.knows(exec_id)
        submitted = self.pool.submit(exec_id, work, owner, deliver, stream)
        if fresh:
            record.pending.add(exec_id)
            record.execs += 1
            # Watched here apart from its client's subscription, which ends with the
            # client: a client gone mid-exec must not leave the session busy for good.
            submitted.subscribers[self] = lambda message: self._observe(record, exec_id, job, message)

    def _observe(self, record: SessionRecord, exec_id: str, job: Job, message: dict[str, Any]) -> None:
        final = message.get("type") == "error" or message.get("event") in _FINAL_EVENTS
        if not final or exec_id not in record.pending:
            return
        record.pending.discard(exec_id)
        record.last_active = time.monotonic()
        entry: dict[str, Any] = {"id": exec_id, "cmd": job.cmd, "state": message.get("event", "error")}
        result = message.get("result")
        if result is not None:
            entry.update(status=result["status"], exit_code=result["exit_code"],
                         stdout=result["stdout"][-LOG_OUTPUT:], stderr=result["stderr"][-LOG_OUTPUT:])
        elif message.get("type") == "error":
            entry.update(status=None, error=message.get("message"))
        record.logs.append(entry)
        self._wake()

    async def control(self, session_id: str, action: str, grace_s: float = 0.0, reference: str = "") -> dict[str, Any]:
        """pause, resume, stop, delete or commit (to ``reference``); the session's listing
        after it (delete: before), with what the launcher said (commit: the new image's
        ``reference`` and ``image_id``)."""
        record = self.get(session_id)
        answer = await self._ask(record.launcher, SessionControl(
            f"session-request-{next(self._requests)}", session_id, action, grace_s, reference))
        if action == "delete":
            self.records.pop(session_id, None)
        elif action in ("pause", "resume"):
            record.paused = action == "pause"
        elif action in ("stop", "commit"):
            record.last_active = time.monotonic()
        return {**record.to_wire(), **(answer.info or {})}

    def listing(self) -> list[dict[str, Any]]:
        for session_id in list(self.records):
            try:
                self.get(session_id)
            except ProtocolError:
                pass  # (forgotten: its launcher died)
        return [record.to_wire() for record in self.records.values()]

    def logs(self, session_id: str) -> list[dict[str, Any]]:
        return list(self.get(session_id).logs)

    async def expire(self) -> None:
        """Delete each session idle (nothing queued or running, not paused) longer than
        its TTL; sleep until the next one is due, or a session is made or goes idle."""
        while True:
            self._changed = trio.Event()
            now = time.monotonic()
            due: float | None = None
            for record in list(self.records.values()):
                if record.pending or record.paused:
                    continue
                left = record.last_active + record.spec.ttl_s - now
                if left <= 0:
                    try:
                        await self.control(record.id, "delete")
                    except ProtocolError:
                        self.records.pop(record.id, None)  # gone already
                    continue
                due = left if due is None else min(due, left)
            with trio.move_on_after(due if due is not None else float("inf")):
                await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()

    def _launcher_of(self, session_id: str) -> LauncherProcess | None:
        try:
            return self.get(session_id).launcher
        except ProtocolError:
            return None

    async def _ask(self, launcher: LauncherProcess, request: CreateSession | SessionControl) -> SessionAnswer:
        """Send a session request and wait for its answer; ProtocolError for an answered
        error or a launcher that died meanwhile."""
        key = request.id
        inbox = launcher.expect(key)
        try:
            try:
                async with launcher.sending:
                    await launcher.send(encode(request))
                async for message in inbox:
                    if isinstance(message, SessionAnswer):
                        if message.code is not None:
                            raise ProtocolError(message.code, message.message, field=message.field)
                        return message
            except (LauncherDied, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            raise ProtocolError("session_error", f"launcher {launcher.index} died")
        finally:
            launcher.forget(key)
