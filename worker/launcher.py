"""The launcher: a process that creates and supervises sandboxes for many jobs of the
worker at once.

The trio worker never forks (forking a threaded process is unsafe, and interpreter
start-up must stay off the per-job path). It starts a few launchers (about one per CPU:
``Pool``), once, with every module imported and the seccomp filters compiled, and sends
each its jobs over a socketpair (``RunJob``; the messages and their encoding are
worker/launcher_channel.py), getting back ``JobStarted`` and ``JobResult`` (or
``JobRejected``: the job's content was found wrong only here), each with its job's id.

A launcher costs an interpreter (most of its memory); a job costs it a thread. The main
thread reads the channel and starts each job on a thread of its own (``Jobs``), whose
cancel pipe is its ``cancel_fd``: ``CancelJob`` writes to it, and the channel's end (the
worker gone) writes to all of them. The engine takes its supply lock only to take, start
and retire a sandbox (``Runner``), so the jobs' supervision - the adaptive CPU poll, the
kill - runs on their threads at once, in a process that does nothing else: a busy event
loop in the worker can never delay their kills (the jobs the worker hands to offered
sandboxes it supervises itself: worker/supervision.py). Their frames share one ``Outbox``, whose
streamed output never waits for room. The main thread does the idle work between
messages: it offers the worker a ready warm sandbox of each kind it keeps (``OfferSandbox``,
worker/handover.py: the worker hands a job to it and supervises it itself,
worker/supervision.py, and says so with ``OfferTaken``; ``DropOffer`` gives the sandbox
back once its job is over, or unused), and steps the supply (cleanup, warm sandboxes),
taking the supply lock for each step.

A launcher that dies takes only its own jobs down (as internal_error) and its sandboxes
with it (an init ends when its job channel closes; the worker kills those it
supervises, whose channels it holds); the worker starts a new one, which reaps the
dead one's cgroups.

A job's input file given by id names a file of the worker's file cache
(worker/filecache.py), whose directory the launcher is told at start: the launcher opens
the cached file itself, as it opens a host file for ``sandbox run``, and the worker
holds a lease on it until the job's result. A tree a job mounts by id is the cache's
directory of it, which the runner has cloned for the sandbox to mount (``Runner``), leased
the same way.

Run as: python -m worker.launcher FD PARENT_PID WARM_JSON CACHE_DIR SESSIONS_DIR (WARM_JSON a
list of WarmSpec wire forms; CACHE_DIR empty for a worker with no file cache; SESSIONS_DIR
where the records of its sessions go, worker/session_records.py, empty for none)
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import queue
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.errors import BindNotAllowed, JobError, SandboxError
from sandbox.linux import syscalls as sc
from sandbox.linux.readiness import readable, wait_readable
from sandbox.models import Blob, Group, Job, Mount, Result, Status, WarmSpec, is_profile_file
from sandbox.runner import Runner
from sandbox.session import Session, SessionGone
from worker.filecache import cached_path, tree_path
from worker.launcher_channel import (
    RESULT_ROOM,
    CancelJob,
    ChannelDecoder,
    CreateSession,
    DropOffer,
    GroupResult,
    JobOutput,
    JobRejected,
    JobResult,
    JobStarted,
    LauncherReady,
    OfferSandbox,
    OfferTaken,
    RunExec,
    RunGroup,
    RunJob,
    SessionAnswer,
    SessionControl,
    check_output_limit,
)
from worker.launcher_outbox import Outbox
from worker.protocol import ProtocolError, group_from_wire, job_from_wire, session_spec_from_wire
from worker.session_records import SessionRecords

IDLE_THREADS = 8  # job threads kept waiting for the next job (per launcher)
YOUNG_JOB_S = 0.003  # how long a job just started holds back the launcher's idle work


class Jobs:
    """The jobs this launcher runs now, a thread each, by id: their cancel pipes, and a
    self-pipe that wakes the main thread's wait when one ends (its sandbox retired:
    there is cleanup to do, and its waitables to sleep on).

    A thread that finished its job waits for the next one, up to ``IDLE_THREADS`` of
    them, rather than ending: starting a thread costs a warm job more CPU than handing
    it over does, and a burst of jobs leaves no more than that many threads behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the table is changed by the ending threads too
        self._cancels: dict[str, int] = {}  # the write end of each job's cancel pipe
        self._threads: set[threading.Thread] = set()
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = 0  # threads waiting on ``_work`` that no job has been given to yet
        self._started: dict[str, float] = {}  # each running job's start (CLOCK_MONOTONIC s)
        self._closing = False
        self.wake_fd, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def start(self, job_id: str, work: Callable[[int], None], *, cancelled: bool) -> None:
        """Run ``work(cancel_fd)`` on a thread of its own: ``cancel_fd`` turns readable
        when the job is cancelled - readable from the start if it already is."""
        cancel_r, cancel_w = os.pipe2(os.O_CLOEXEC)
        if cancelled:
            os.write(cancel_w, b"x")

        def run() -> None:
            try:
                work(cancel_r)
            finally:
                with self._lock:
                    if self._cancels.get(job_id) == cancel_w:
                        del self._cancels[job_id]
                        del self._started[job_id]
                for fd in (cancel_r, cancel_w):
                    os.close(fd)
                try:
                    os.write(self._wake_w, b"x")
                except BlockingIOError:
                    pass  # the main thread has wake-ups enough to read

        with self._lock:
            self._cancels[job_id] = cancel_w
            self._started[job_id] = time.monotonic()
            waiting = self._idle > 0
            self._idle -= waiting
        self._work.put(run)
        if not waiting:
            thread = threading.Thread(target=self._serve, name="job", daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self) -> None:
        """A job thread: the jobs it is given, one after another, until enough others wait."""
        while (run := self._work.get()) is not None:
            run()
            with self._lock:
                if self._closing or self._idle >= IDLE_THREADS:
                    break
                self._idle += 1
        with self._lock:
            self._threads.discard(threading.current_thread())

    def young_for(self, age_s: float) -> float:
        """Seconds until the one running job is ``age_s`` old (0: it is older, or none or
        several run: with several, the CPUs are busy with jobs whatever waits)."""
        with self._lock:  # (asked at every turn of the main loop: no copy of a table of thousands)
            if len(self._started) != 1:
                return 0.0
            (started,) = self._started.values()
        return max(0.0, started + age_s - time.monotonic())

    def running_elsewhere(self, sandbox: int, running: bool) -> None:
        """A job the worker supervises itself, in a sandbox of ours, began (``running``)
        or ended: while young it holds back the idle work as one of ours does."""
        with self._lock:
            if running:
                self._started[f"sandbox {sandbox}"] = time.monotonic()
            else:
                self._started.pop(f"sandbox {sandbox}", None)

    def cancel(self, job_id: str) -> None:
        """Kill the job of that id, if it still runs (else: it is over, or never ran)."""
        with self._lock:
            cancel_w = self._cancels.get(job_id)
            if cancel_w is not None:
                os.write(cancel_w, b"x")

    def woken(self) -> None:
        """Take the wake-ups of the jobs that ended since the last call."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def end_all(self) -> None:
        """Cancel every job and wait for their threads (each sends its result, if the
        channel still takes it); then close the wake-up pipe."""
        with self._lock:
            self._closing = True
            for cancel_w in self._cancels.values():
                os.write(cancel_w, b"x")
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)  # for the waiting ones; a busy one ends after its job
        for thread in threads:
            thread.join()
        for fd in (self.wake_fd, self._wake_w):
            os.close(fd)


def serve(channel: socket.socket, warm: list[WarmSpec], paths: HostPaths) -> None:
    """Read the worker's messages and start each job on a thread of its own; between
    messages, do the idle work (offers, the supply's steps)."""
    sc.set_process_name("sandbox-launch")
    runner = Runner(warm_for=warm)
    records = SessionRecords(paths.sessions_dir) if paths.sessions_dir else None
    if records is not None:
        records.reap()  # what the sessions of a crashed worker's launchers left
    outbox = Outbox(channel)
    outbox.send(LauncherReady(os.getpid(), cgroups=runner.backend is not None))
    gc.freeze()  # start-up's objects stay for good: out of the collector's full passes (as the worker's)
    decoder = ChannelDecoder()
    jobs = Jobs()
    sessions = LauncherSessions(records)
    offered: set[int] = set()  # the sandboxes the worker may hand a job to itself (a kind each)
    held_since: float | None = None  # since when young jobs have held back the idle work
    free_until = 0.0  # after a hold, when the next may begin
    try:
        while True:
            # The time no message waits is for the next jobs: clean up after the last
            # ones and prepare warm sandboxes, one small step at a time, looking for a
            # message between steps; with nothing left to do, sleep until a message, a
            # step or the end of a job (whose retired sandbox is a step then) is due.
            #   A job just started alone (most are handed over by the worker: its program
            # runs already) holds that work back for a moment while a warm sandbox is on
            # offer for the next job: a short job's end, its result's way back and the
            # client's next job need the CPUs then, and the next warm sandbox is not needed
            # before. A hold lasts at most YOUNG_JOB_S and is followed by as long a time
            # free of holds, so that jobs starting one after another never starve the work.
            while not readable(channel):
                jobs.woken()
                if (number := _offer(runner, outbox)) is not None:
                    offered.add(number)
                    continue
                now = time.monotonic()
                if offered and now >= free_until:
                    hold = min(jobs.young_for(YOUNG_JOB_S), (held_since or now) + YOUNG_JOB_S - now)
                    if hold > 0:
                        held_since = held_since or now
                        wait_readable([channel, jobs.wake_fd], hold)
                        continue
                if held_since is not None:  # a hold ended: none for as long again
                    held_since, free_until = None, now + YOUNG_JOB_S
                if not runner.prepare_step():
                    wait_readable([channel, jobs.wake_fd, *runner.waitables()])
            try:
                data = channel.recv(1 << 20)
            except ConnectionResetError:
                data = b""  # closed with an offer of ours unread
            if not data:
                return  # the worker closed the channel: it is gone or wants us gone
            messages = decoder.feed(data)
            for index, message in enumerate(messages):
                match message:
                    case OfferTaken(sandbox=sandbox):
                        offered.discard(sandbox)  # the worker runs a job there: its kind may have the next
                        runner.lend(sandbox)
                        jobs.running_elsewhere(sandbox, True)
                    case DropOffer(sandbox=sandbox):
                        offered.discard(sandbox)  # given back
                        jobs.running_elsewhere(sandbox, False)
                        _drop(runner, sandbox)
                    case RunJob() | RunGroup():
                        # Its cancel may have come in the same read: then it never starts.
                        cancelled = any(isinstance(later, CancelJob) and later.id == message.id
                                        for later in messages[index + 1:])
                        jobs.start(message.id, functools.partial(_run, runner, outbox, message, paths),
                                   cancelled=cancelled)
                    case CancelJob(id=job_id):
                        jobs.cancel(job_id)
                    case CreateSession() | RunExec() | SessionControl():
                        cancelled = any(isinstance(later, CancelJob) and later.id == message.id
                                        for later in messages[index + 1:])
                        work = functools.partial(sessions.serve, runner, outbox, message, paths)
                        jobs.start(message.id, work, cancelled=cancelled)
    finally:
        jobs.end_all()
        sessions.delete_all()
        runner.close()


def _offer(runner: Runner, outbox: Outbox) -> int | None:
    """Offer the worker a ready warm sandbox to hand a job to itself (worker/handover.py);
    the number it goes by, or None if there is none to offer now."""
    offer = runner.offer()
    if offer is None:
        return None
    sandbox, kind = offer
    profile = runner.profiles.get(kind.profile)
    prepared = sandbox.prepared
    number = prepared.init_pid
    image = None
    if sandbox.lease is not None and sandbox.image is not None:
        image = (sandbox.lease.record.id, sandbox.image.workdir)
    cgroup = counters = baseline = None
    counter_fds: list[int] = []
    if sandbox.cgroup is not None:  # (written by ``SandboxSupply._order``; its account started by ``Sandbox.arm``)
        cgroup = (sandbox.cgroup.limit_files(), profile.kind_limits.cgroup_values)
        names = list(sandbox.cgroup.counters.fds)
        counters = (sandbox.cgroup.counters.version, names)
        counter_fds = [sandbox.cgroup.counters.cpu_fd, *(sandbox.cgroup.counters.fds[name] for name in names)]
        base = sandbox.cgroup.baseline
        baseline = (base.cpu_ns, base.cpu_user_ns, base.cpu_sys_ns, base.oom_kills)
    warnings, not_enforced = runner.standing_warnings()
    stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
    stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
    pidfd = os.pidfd_open(number)  # (our unreaped child: the pid is still its)
    try:
        outbox.send_fds(
            OfferSandbox(number, kind, profile.limits, profile.env, cgroups=runner.backend is not None,
                         cgroup=cgroup, image=image, counters=counters, baseline=baseline, warnings=warnings,
                         not_enforced=not_enforced, parallelism=runner.parallelism),
            [prepared.job_channel.fileno(), stdout_w, stderr_w, stdout_r, stderr_r, prepared.report_fd, pidfd,
             *counter_fds],
        )
    finally:
        for fd in (stdout_r, stdout_w, stderr_r, stderr_w, pidfd):
            os.close(fd)
    return number


def _drop(runner: Runner, init_pid: int) -> None:
    """The worker is done with a sandbox it was offered: its job is over, or it could
    not hand it one (it died waiting, or no job will take it)."""
    sandbox = runner.take_offered(init_pid)
    if sandbox is not None:
        runner.retire(sandbox)


def _run(runner: Runner, outbox: Outbox, message: RunJob | RunGroup, paths: HostPaths, cancel_fd: int) -> None:
    """Run a job (on its own thread) and send its outcome. A job found wrong only here -
    its image removed since the worker looked, a command too long for one message to its
    sandbox - is ``JobRejected`` (the worker answers invalid_job): nothing a job holds may
    end the launcher, which would take the other jobs and the warm sandboxes with it. A
    fault of ours is that job's internal_error, for the same reason. A cancel already
    there (it came in the same read as the job) means the job never starts."""
    cancelled = readable(cancel_fd)
    reply: JobResult | GroupResult | JobRejected
    try:
        if isinstance(message, RunGroup):
            reply = GroupResult(message.id, _group_results(runner, outbox, message, cancelled, paths, cancel_fd))
        else:
            reply = JobResult(message.id, _result(runner, outbox, message, cancelled, paths, cancel_fd))
    except JobError as exc:
        reply = JobRejected(message.id, exc.message, exc.field, exc.code)
    except Exception as exc:  # a bug of ours: this job's failure, not the launcher's
        traceback.print_exc()
        failed = Result(Status.INTERNAL_ERROR, error=f"launcher: {type(exc).__name__}: {exc}")
        if isinstance(message, RunGroup):
            reply = GroupResult(message.id, [failed] * len(message.group.get("jobs") or []))
        else:
            reply = JobResult(message.id, failed)
    outbox.send(reply)
    # The worker, woken by the result, is often queued on this CPU: let it pass the result
    # on before this launcher's idle work (cleaning up, ordering the next sandbox).
    os.sched_yield()


def _result(
    runner: Runner, outbox: Outbox, message: RunJob, cancelled: bool, paths: HostPaths, cancel_fd: int,
) -> Result:
    job_id = message.id
    if cancelled:
        return Result(Status.CANCELLED, error="cancelled before it started")
    try:
        job = _on_this_host(job_from_wire(message.job), paths)
    except ProtocolError as exc:
        return Result(Status.INTERNAL_ERROR, error=f"launcher rejected the job: {exc.message}")
    check_output_limit(job.limits.over(runner.profiles.get(job.profile).limits))

    def stream_output(stream: str, offset: int, data: bytes) -> None:
        outbox.offer(JobOutput(job_id, stream, offset, data))

    return runner.run(
        job,
        cancel_fd=cancel_fd,
        on_started=lambda: outbox.send(JobStarted(job_id)),
        on_output=stream_output if message.stream else None,
        collect_room=RESULT_ROOM,
    )


def _group_results(
    runner: Runner, outbox: Outbox, message: RunGroup, cancelled: bool, paths: HostPaths, cancel_fd: int,
) -> list[Result]:
    """A group's Results, in member order (``JobStarted`` once every member is handed over)."""
    job_id, wire = message.id, message.group
    try:
        group: Group = group_from_wire(wire.get("jobs"), wire.get("pipes"))
    except ProtocolError as exc:  # the worker checked it: not reached, but never a crash of ours
        raise JobError(exc.message, field=exc.field) from None
    if cancelled:
        return [Result(Status.CANCELLED, error="cancelled before it started") for _ in group.jobs]
    jobs = [_on_this_host(job, paths) for job in group.jobs]
    for job in jobs:
        check_output_limit(job.limits.over(runner.profiles.get(job.profile).limits))
    return runner.run_group(jobs, group.pipes, cancel_fd=cancel_fd,
                            on_started=lambda: outbox.send(JobStarted(job_id)))


class LauncherSessions:
    """The sessions this launcher holds (sandbox/session.py), by the ids the worker gave
    them: each request on a thread of its own (``Jobs``), as a job is. A session lives
    until the worker deletes it or this launcher ends (``delete_all``; and if it dies,
    each session's init sees its job channel close and ends)."""

    def __init__(self, records: SessionRecords | None = None) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._records = records  # one on disk per session, while it lives (worker/session_records.py)

    def serve(self, runner: Runner, outbox: Outbox, message: CreateSession | RunExec | SessionControl,
              paths: HostPaths, cancel_fd: int) -> None:
        """Answer one request: an exec as a job is answered, the others with a
        ``SessionAnswer``. Nothing a request holds ends the launcher."""
        reply: JobResult | JobRejected | SessionAnswer
        try:
            if isinstance(message, RunExec):
                reply = self._exec(runner, outbox, message, paths, cancel_fd)
            elif isinstance(message, CreateSession):
                reply = self._create(runner, message)
            else:
                reply = self._control(message)
        except Exception as exc:  # a bug of ours: this request's failure, not the launcher's
            traceback.print_exc()
            error = f"launcher: {type(exc).__name__}: {exc}"
            reply = (JobResult(message.id, Result(Status.INTERNAL_ERROR, error=error)) if isinstance(message, RunExec)
                     else SessionAnswer(message.id, "session_error", error))
        outbox.send(reply)

    def _create(self, runner: Runner, message: CreateSession) -> SessionAnswer:
        try:
            spec = session_spec_from_wire(message.spec)
            if is_profile_file(spec.profile):  # (the worker refused it already: a worker runs its own profiles)
                raise JobError(f"{spec.profile}: a worker runs only its own profiles", field="profile")
            session = Session(runner, spec)
        except ProtocolError as exc:
            return SessionAnswer(message.id, exc.code, exc.message, exc.field)
        except JobError as exc:
            return SessionAnswer(message.id, "invalid_job", exc.message, exc.field)
        except (SandboxError, OSError) as exc:
            return SessionAnswer(message.id, "session_error", f"the session did not start: {exc}")
        if self._records is not None:
            self._records.write(message.id, session.init_pid, session.cgroup_directories)
        with self._lock:
            self._sessions[message.id] = session
        return SessionAnswer(message.id, info={"init_pid": session.init_pid})

    def _exec(self, runner: Runner, outbox: Outbox, message: RunExec, paths: HostPaths,
              cancel_fd: int) -> JobResult | JobRejected:
        session = self._sessions.get(message.session)
        if session is None:
            return JobRejected(message.id, f"no session {message.session}", "session")
        if readable(cancel_fd):
            return JobResult(message.id, Result(Status.CANCELLED, error="cancelled before it started"))
        try:
            job = _on_this_host(job_from_wire(message.job), paths)
            check_output_limit(job.limits.over(runner.profiles.get(session.spec.profile).limits))

            def stream_output(stream: str, offset: int, data: bytes) -> None:
                outbox.offer(JobOutput(message.id, stream, offset, data))

            result = session.exec(
                job, cancel_fd=cancel_fd, on_started=lambda: outbox.send(JobStarted(message.id)),
                on_output=stream_output if message.stream else None, collect_room=RESULT_ROOM,
            )
        except ProtocolError as exc:
            return JobRejected(message.id, exc.message, exc.field)
        except SessionGone as exc:
            return JobRejected(message.id, f"session {message.session}: {exc}", "session")
        except JobError as exc:
            return JobRejected(message.id, exc.message, exc.field)
        return JobResult(message.id, result)

    def _control(self, message: SessionControl) -> SessionAnswer:
        with self._lock:
            session = self._sessions.get(message.session)
        if session is None:
            return SessionAnswer(message.id, "unknown_session", f"no session {message.session}", "session")
        info: dict[str, object] = {}
        try:
            if message.action == "pause":
                session.pause()
            elif message.action == "resume":
                session.resume()
            elif message.action == "stop":
                info["stopped"] = session.stop(message.grace_s)
            elif message.action == "delete":
                with self._lock:
                    self._sessions.pop(message.session, None)
                self._end(message.session, session)
            elif message.action == "commit":
                committed = session.commit(message.reference)
                info.update(reference=committed.reference, image_id=committed.image_id)
            else:
                return SessionAnswer(message.id, "bad_message", f"no session action {message.action!r}", "type")
        except JobError as exc:
            return SessionAnswer(message.id, "invalid_job", exc.message, exc.field)
        except (SandboxError, OSError) as exc:
            return SessionAnswer(message.id, "session_error", str(exc))
        return SessionAnswer(message.id, info=info)

    def delete_all(self) -> None:
        """The launcher ends: so do its sessions (their processes, cgroups and files)."""
        with self._lock:
            sessions, self._sessions = self._sessions, {}
        for session_id, session in sessions.items():
            self._end(session_id, session)

    def _end(self, session_id: str, session: Session) -> None:
        session.delete()
        if self._records is not None:
            self._records.remove(session_id)


@dataclass(frozen=True)
class HostPaths:
    """What of the host a launcher's jobs may name: the worker's file cache (by id), and
    the directories below which they may bind (``sandbox serve --allow-bind``); and
    where it keeps a record of each session it holds ("" for none)."""

    cache_dir: str
    allow_bind: list[str]
    sessions_dir: str = ""

    def allows(self, path: str) -> bool:
        """``path`` (normal: ``Mount.check_source``) is an allowed directory or below one.
        Comparing the names is enough because the bind is then opened as spelt, with no
        symlink followed (``Zygote.clone_bind``)."""
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in self.allow_bind)


def _on_this_host(job: Job, paths: HostPaths) -> Job:
    """The job with its files and trees given by id turned into the cached files' paths
    and trees' directories (the worker holds a lease on each while the job is queued or
    running: they are there); a bind outside what the operator allowed refused
    (``BindNotAllowed``). Here, where every door's jobs pass - socket, HTTP, queue,
    judges - on their way to the runner that would clone it."""
    cache_dir = paths.cache_dir
    for index, entry in enumerate(job.mounts):
        if entry.bind is not None and not paths.allows(entry.bind):
            raise BindNotAllowed(f"{entry.bind} is not below a directory this worker allows binds from "
                                 "(sandbox serve --allow-bind)", field=f"mounts.{index}.bind")

    def content(blob: Blob, index: int) -> Blob:
        if blob.file_id is None:
            return blob
        if not cache_dir:
            raise JobError("this worker has no file cache", field=f"files[{index}].file_id")
        return Blob(path=cached_path(cache_dir, blob.file_id))

    def directory(entry: Mount, index: int) -> Mount:
        if entry.tree_id is None:
            return entry
        if not cache_dir:
            raise JobError("this worker has no file cache", field=f"mounts.{index}.tree_id")
        return Mount(entry.path, host_dir=tree_path(cache_dir, entry.tree_id))

    if not any(f.content.file_id is not None for f in job.files) and not any(m.tree_id is not None for m in job.mounts):
        return job  # (as it is: a copy would check the whole job again)
    files = [dataclasses.replace(f, content=content(f.content, index)) for index, f in enumerate(job.files)]
    mounts = [directory(entry, index) for index, entry in enumerate(job.mounts)]
    return dataclasses.replace(job, files=files, mounts=mounts)


def main(argv: list[str]) -> int:
    # No PR_SET_PDEATHSIG here: the "parent" it watches is the *thread* that forked us,
    # and trio forks from a cached worker thread that exits after 10 s idle - the signal
    # then killed healthy launchers every 10 s. The worker's death closes its end of the
    # channel instead: EOF ends serve(), which cancels every running job (their sandboxes
    # are killed) before we exit.
    fd, parent_pid = int(argv[1]), int(argv[2])
    warm = [WarmSpec(**spec) for spec in json.loads(argv[3])]
    if os.getppid() != parent_pid:
        return 1  # the worker died while starting us
    with socket.socket(fileno=fd) as channel:
        serve(channel, warm, HostPaths(argv[4], json.loads(argv[5]), argv[6] if len(argv) > 6 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
