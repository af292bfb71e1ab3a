"""The launcher: a single-threaded process that creates and supervises sandboxes for
one execution slot of the worker.

The trio worker never forks (forking a threaded process is unsafe, and interpreter
start-up must stay off the per-job path). Each slot owns one launcher,
started once with every module imported and the seccomp filter compiled; the worker
sends it one job at a time over a socketpair (``RunJob``; the messages and their
encoding are worker/launcher_channel.py) and gets back ``JobStarted`` and ``JobResult``
(or ``JobRejected``: the job's content was found wrong only here). Between jobs it
offers the worker a ready warm sandbox (``OfferSandbox``, worker/handover.py): a job that
the worker hands to it itself comes as a ``RunJob`` naming it, to be supervised only
(no ``JobStarted`` then: the worker said it); ``DropOffer`` gives back an offer the
worker could not use. Supervision (the
adaptive CPU poll) runs here, in a process that does nothing else, so a busy event
loop in the worker can never delay a kill. A launcher that dies takes only its own job
down (as internal_error) and its sandboxes with it (an init ends when its job channel
closes: the worker keeps no copy of an offered one's once it handed a job over); the
worker starts a new one, which reaps the dead one's cgroups.

A job's input file given by id names a file of the worker's file cache
(worker/filecache.py), whose directory the launcher is told at start: the launcher opens
the cached file itself, as it opens a host file for ``sandbox run``, and the worker
holds a lease on it until the job's result. A tree a job mounts by id is the cache's
directory of it, which the runner has cloned for the sandbox to mount (``Runner``), leased
the same way.

Run as: python -m worker.launcher FD PARENT_PID WARM_JSON CACHE_DIR (WARM_JSON a list of
WarmSpec wire forms; CACHE_DIR empty for a worker with no file cache)
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import socket
import sys

from sandbox.errors import JobError
from sandbox.linux import syscalls as sc
from sandbox.models import Blob, Group, Job, Mount, Result, Status, WarmSpec
from sandbox.runner import HandedOver, Runner
from worker.filecache import cached_path, tree_path
from worker.launcher_channel import (
    RESULT_ROOM,
    CancelJob,
    ChannelDecoder,
    DropOffer,
    GroupResult,
    JobOutput,
    JobRejected,
    JobResult,
    JobStarted,
    LauncherReady,
    OfferSandbox,
    RunGroup,
    RunJob,
    ToWorker,
    check_output_limit,
    encode,
)
from worker.protocol import ProtocolError, group_from_wire, job_from_wire

# Streamed output waiting for room in the channel; more is dropped (the offsets of the
# next chunks show the gap, the result has it all).
MAX_PENDING_OUTPUT = 1 << 20


class Outbox:
    """Frames to the worker, in order. ``JobStarted`` and ``JobResult`` always go out, waiting for
    room if need be; streamed output only as far as the channel takes it without waiting,
    so a worker slow to read can never stall the supervision of a job (its limits, its
    kill)."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self._pending = bytearray()

    def send(self, message: ToWorker) -> None:
        self._pending += encode(message)
        self._flush(wait=True)

    def send_fds(self, message: ToWorker, fds: list[int]) -> None:
        """``send``, the fds attached to the message's first byte."""
        self._flush(wait=True)
        frame = encode(message)
        sent = socket.send_fds(self.channel, [frame], fds)
        self._pending += frame[sent:]
        self._flush(wait=True)

    def offer(self, message: JobOutput) -> None:
        self._flush(wait=False)
        if len(self._pending) < MAX_PENDING_OUTPUT:
            self._pending += encode(message)
            self._flush(wait=False)

    def _flush(self, wait: bool) -> None:
        while self._pending:
            try:
                sent = self.channel.send(self._pending, 0 if wait else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            del self._pending[:sent]


def serve(channel: socket.socket, warm: list[WarmSpec], cache_dir: str) -> None:
    sc.set_process_name("sandbox-launch")
    runner = Runner(warm_for=warm)
    outbox = Outbox(channel)
    outbox.send(LauncherReady(os.getpid(), cgroups=runner.backend is not None))
    decoder = ChannelDecoder()
    offered: int | None = None  # the sandbox the worker may hand a job to itself
    try:
        while True:
            # Idle time is for the next jobs: clean up after the last ones and prepare
            # warm sandboxes, one small step at a time, looking for a waiting job between
            # steps; with nothing left to do, sleep until a job or a step is due.
            while not _readable(channel):
                if offered is None and (offered := _offer(runner, outbox)) is not None:
                    continue
                if not runner.sandboxes.step():
                    waiting: list[socket.socket | int] = [channel, *runner.sandboxes.waitables()]
                    select.select(waiting, [], [])
            try:
                data = channel.recv(1 << 20)
            except ConnectionResetError:
                data = b""  # closed with an offer of ours unread
            if not data:
                return  # the worker closed the channel: it is gone or wants us gone
            messages = decoder.feed(data)
            for index, message in enumerate(messages):
                match message:
                    case DropOffer(sandbox=sandbox):
                        if sandbox == offered:
                            offered = None  # given back
                        _drop(runner, sandbox)
                    case RunJob() | RunGroup():
                        if isinstance(message, RunJob) and message.sandbox == offered:
                            offered = None  # used
                        # Its cancel may have come in the same read: the channel will not
                        # turn readable for it, so it is looked for here.
                        cancelled = any(
                            isinstance(later, CancelJob) and later.id == message.id for later in messages[index + 1:]
                        )
                        _run(runner, channel, outbox, message, cancelled, cache_dir)
                    # (a CancelJob here is for a job that is over, or never ran)
    finally:
        runner.close()


def _readable(channel: socket.socket) -> bool:
    return bool(select.select([channel], [], [], 0)[0])


def _offer(runner: Runner, outbox: Outbox) -> int | None:
    """Offer the worker a ready warm sandbox to hand a job to itself (worker/handover.py);
    the number it goes by, or None if there is none to offer now."""
    offer = runner.sandboxes.offer()
    if offer is None:
        return None
    sandbox, kind, stdout_w, stderr_w = offer
    profile = runner.profiles.get(kind.profile)
    number = sandbox.prepared.init_pid
    try:
        outbox.send_fds(
            OfferSandbox(number, kind, profile.limits, profile.env, cgroups=runner.backend is not None),
            [sandbox.prepared.job_channel.fileno(), stdout_w, stderr_w],
        )
    finally:
        os.close(stdout_w)
        os.close(stderr_w)
    return number


def _drop(runner: Runner, init_pid: int) -> None:
    """The worker could not hand a job to the sandbox it was offered (it died waiting)."""
    sandbox = runner.sandboxes.take_offered(init_pid)
    if sandbox is not None:
        runner.sandboxes.retire(sandbox)


def _run(
    runner: Runner, channel: socket.socket, outbox: Outbox, message: RunJob | RunGroup, cancelled: bool,
    cache_dir: str,
) -> None:
    """Run a job and send its outcome. A job found wrong only here - its image removed
    since the worker looked, a command too long for one message to its sandbox - is
    ``JobRejected`` (the worker answers invalid_job): nothing a job holds may end the
    launcher, which would take its slot's warm sandboxes with it."""
    try:
        reply: JobResult | GroupResult
        if isinstance(message, RunGroup):
            reply = GroupResult(message.id, _group_results(runner, channel, outbox, message, cancelled, cache_dir))
        else:
            reply = JobResult(message.id, _result(runner, channel, outbox, message, cancelled, cache_dir))
    except JobError as exc:
        outbox.send(JobRejected(message.id, exc.message, exc.field))
        return
    outbox.send(reply)
    # The worker, woken by the result, is often queued on this CPU: let it pass the result
    # on before this launcher's idle work (cleaning up, ordering the next sandbox).
    os.sched_yield()


def _result(
    runner: Runner, channel: socket.socket, outbox: Outbox, message: RunJob, cancelled: bool, cache_dir: str,
) -> Result:
    job_id = message.id
    handed = None
    if message.sandbox is not None:  # the worker gave it to the sandbox offered, and said so
        sandbox = runner.sandboxes.take_offered(message.sandbox)
        if sandbox is None:
            return Result(Status.INTERNAL_ERROR, error="the job went to a sandbox this launcher did not offer")
        handed = HandedOver(sandbox, message.handed_ns)
    outcome = Result(Status.CANCELLED, error="cancelled before it " + ("finished" if handed else "started"))
    job = None
    if not cancelled:
        try:
            job = _with_cached_paths(job_from_wire(message.job), cache_dir)
        except ProtocolError as exc:
            outcome = Result(Status.INTERNAL_ERROR, error=f"launcher rejected the job: {exc.message}")
    if job is None:
        if handed is not None:
            runner.sandboxes.retire(handed.sandbox)  # kills what the worker started there
        return outcome

    if handed is None:  # (a handed job's limits were checked by the worker: ``Offer.limits_for``)
        check_output_limit(job.limits.over(runner.profiles.get(job.profile).limits))

    def stream_output(stream: str, offset: int, data: bytes) -> None:
        outbox.offer(JobOutput(job_id, stream, offset, data))

    return runner.run(
        job,
        cancel_fd=channel.fileno(),
        on_started=None if handed else lambda: outbox.send(JobStarted(job_id)),
        on_output=stream_output if message.stream else None,
        handed=handed,
        collect_room=RESULT_ROOM,
    )


def _group_results(
    runner: Runner, channel: socket.socket, outbox: Outbox, message: RunGroup, cancelled: bool, cache_dir: str,
) -> list[Result]:
    """A group's Results, in member order (``JobStarted`` once every member is handed over)."""
    job_id, wire = message.id, message.group
    try:
        group: Group = group_from_wire(wire.get("jobs"), wire.get("pipes"))
    except ProtocolError as exc:  # the worker checked it: not reached, but never a crash of ours
        raise JobError(exc.message, field=exc.field) from None
    if cancelled:
        return [Result(Status.CANCELLED, error="cancelled before it started") for _ in group.jobs]
    jobs = [_with_cached_paths(job, cache_dir) for job in group.jobs]
    for job in jobs:
        check_output_limit(job.limits.over(runner.profiles.get(job.profile).limits))
    return runner.run_group(jobs, group.pipes, cancel_fd=channel.fileno(),
                            on_started=lambda: outbox.send(JobStarted(job_id)))


def _with_cached_paths(job: Job, cache_dir: str) -> Job:
    """The job with its files and trees given by id turned into the cached files' paths
    and trees' directories (the worker holds a lease on each while the job is queued or
    running: they are there)."""

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

    files = [dataclasses.replace(f, content=content(f.content, index)) for index, f in enumerate(job.files)]
    mounts = [directory(entry, index) for index, entry in enumerate(job.mounts)]
    return dataclasses.replace(job, files=files, mounts=mounts)


def main(argv: list[str]) -> int:
    # No PR_SET_PDEATHSIG here: the "parent" it watches is the *thread* that forked us,
    # and trio forks from a cached worker thread that exits after 10 s idle - the signal
    # then killed healthy launchers every 10 s. The worker's death closes its end of the
    # channel instead: EOF while idle ends serve(), and during a job the channel turns
    # readable, which the runner treats as a cancel (it kills the sandbox) before we exit.
    fd, parent_pid = int(argv[1]), int(argv[2])
    warm = [WarmSpec(**spec) for spec in json.loads(argv[3])]
    if os.getppid() != parent_pid:
        return 1  # the worker died while starting us
    with socket.socket(fileno=fd) as channel:
        serve(channel, warm, argv[4])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
