"""The launcher: a single-threaded process that creates and supervises sandboxes for
one execution slot of the worker.

The trio worker never forks (forking a threaded process is unsafe, and interpreter
start-up must stay off the per-job path). Each slot owns one launcher,
started once with every module imported and the seccomp filter compiled; the worker
sends it one job at a time over a socketpair, in the same frames as the public
protocol, and gets back "started" and "result" (or "rejected": the job's content was
found wrong only here). Between jobs it offers the worker a
ready warm sandbox ("offer", worker/handover.py): a job that the worker hands to it
itself comes as a "run" naming it, to be supervised only (no "started" then: the
worker said it); "drop" gives back an offer the worker could not use. Supervision (the
adaptive CPU poll) runs here, in a process that does nothing else, so a busy event
loop in the worker can never delay a kill. A launcher that dies takes only its own job
down (as internal_error) and its sandboxes with it (an init ends when its job channel
closes: the worker keeps no copy of an offered one's once it handed a job over); the
worker starts a new one, which reaps the dead one's cgroups.

A job's input file given by id names a file of the worker's file cache
(worker/filecache.py), whose directory the launcher is told at start: the launcher opens
the cached file itself, as it opens a host file for ``sandbox run``, and the worker
holds a lease on it until the job's result.

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
from typing import Any

from sandbox.errors import JobError
from sandbox.linux import syscalls as sc
from sandbox.models import Blob, Job, Result, Status, WarmSpec
from sandbox.runner import HandedOver, Runner
from worker.filecache import cached_path
from worker.launcher_channel import LAUNCHER_MAX_FRAME, Kind, check_output_limit
from worker.protocol import FrameDecoder, ProtocolError, encode, job_from_wire, result_to_wire

# Streamed output waiting for room in the channel; more is dropped (the offsets of the
# next chunks show the gap, the result has it all).
MAX_PENDING_OUTPUT = 1 << 20


class Outbox:
    """Frames to the worker, in order. "started" and "result" always go out, waiting for
    room if need be; streamed output only as far as the channel takes it without waiting,
    so a worker slow to read can never stall the supervision of a job (its limits, its
    kill)."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self._pending = bytearray()

    def send(self, message: dict[str, Any]) -> None:
        self._pending += encode(message)
        self._flush(wait=True)

    def send_fds(self, message: dict[str, Any], fds: list[int]) -> None:
        """``send``, the fds attached to the message's first byte."""
        self._flush(wait=True)
        frame = encode(message)
        sent = socket.send_fds(self.channel, [frame], fds)
        self._pending += frame[sent:]
        self._flush(wait=True)

    def offer(self, message: dict[str, Any]) -> None:
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
    outbox.send({"type": Kind.READY, "pid": os.getpid(), "cgroups": runner.backend is not None})
    decoder = FrameDecoder(LAUNCHER_MAX_FRAME)
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
                if offered is not None and message.get("sandbox") == offered:
                    offered = None  # used, or given back
                if message.get("type") == Kind.DROP:
                    _drop(runner, message)
                if message.get("type") != Kind.RUN:
                    continue  # a "cancel" here is for a job that is over (or never ran)
                # Its cancel may have come in the same read: the channel will not turn
                # readable for it, so it is looked for here.
                cancelled = any(
                    later.get("type") == Kind.CANCEL and later.get("id") == message["id"]
                    for later in messages[index + 1:]
                )
                _run(runner, channel, outbox, message, cancelled, cache_dir)
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
    spec, sandbox, stdout_w, stderr_w = offer
    profile = runner.profiles.get(spec.profile)
    number = sandbox.prepared.init_pid
    try:
        outbox.send_fds(
            {"type": Kind.OFFER, "sandbox": number, "profile": spec.profile, "limits": profile.limits,
             "env": profile.env, "cgroups": runner.backend is not None},
            [sandbox.prepared.job_channel.fileno(), stdout_w, stderr_w],
        )
    finally:
        os.close(stdout_w)
        os.close(stderr_w)
    return number


def _drop(runner: Runner, message: dict[str, Any]) -> None:
    """The worker could not hand a job to the sandbox it was offered (it died waiting)."""
    sandbox = runner.sandboxes.take_offered(message.get("sandbox", 0))
    if sandbox is not None:
        runner.sandboxes.retire(sandbox)


def _run(
    runner: Runner, channel: socket.socket, outbox: Outbox, message: dict[str, Any], cancelled: bool, cache_dir: str,
) -> None:
    """Run a job and send its outcome. A job found wrong only here - its image removed
    since the worker looked, a command too long for one message to its sandbox - is
    "rejected" (the worker answers invalid_job): nothing a job holds may end the
    launcher, which would take its slot's warm sandboxes with it."""
    try:
        result = _result(runner, channel, outbox, message, cancelled, cache_dir)
    except JobError as exc:
        outbox.send({"type": Kind.REJECTED, "id": message["id"], "message": exc.message, "field": exc.field})
        return
    outbox.send({"type": Kind.RESULT, "id": message["id"], "result": result_to_wire(result)})
    # The worker, woken by the result, is often queued on this CPU: let it pass the result
    # on before this launcher's idle work (cleaning up, ordering the next sandbox).
    os.sched_yield()


def _result(
    runner: Runner, channel: socket.socket, outbox: Outbox, message: dict[str, Any], cancelled: bool, cache_dir: str,
) -> Result:
    job_id = message["id"]
    handed = None
    if "sandbox" in message:  # the worker gave it to the sandbox offered, and said so
        sandbox = runner.sandboxes.take_offered(message["sandbox"])
        if sandbox is None:
            return Result(Status.INTERNAL_ERROR, error="the job went to a sandbox this launcher did not offer")
        handed = HandedOver(sandbox, message["handed_ns"])
    outcome = Result(Status.CANCELLED, error="cancelled before it " + ("finished" if handed else "started"))
    job = None
    if not cancelled:
        try:
            job = _with_cached_paths(job_from_wire(message["job"]), cache_dir)
        except ProtocolError as exc:
            outcome = Result(Status.INTERNAL_ERROR, error=f"launcher rejected the job: {exc.message}")
    if job is None:
        if handed is not None:
            runner.sandboxes.retire(handed.sandbox)  # kills what the worker started there
        return outcome

    if handed is None:  # (a handed job's limits were checked by the worker: ``Offer.limits_for``)
        check_output_limit(job.limits.over(runner.profiles.get(job.profile).limits))

    def stream_output(stream: str, offset: int, data: bytes) -> None:
        outbox.offer({"type": Kind.OUTPUT, "id": job_id, "stream": stream, "offset": offset, "data": data})

    return runner.run(
        job,
        cancel_fd=channel.fileno(),
        on_started=None if handed else lambda: outbox.send({"type": Kind.STARTED, "id": job_id}),
        on_output=stream_output if message.get("stream") else None,
        handed=handed,
    )


def _with_cached_paths(job: Job, cache_dir: str) -> Job:
    """The job with its files given by id turned into the cached files' paths (the worker
    holds a lease on each while the job is queued or running: they are there)."""

    def content(blob: Blob, index: int) -> Blob:
        if blob.file_id is None:
            return blob
        if not cache_dir:
            raise JobError("this worker has no file cache", field=f"files[{index}].file_id")
        return Blob(path=cached_path(cache_dir, blob.file_id))

    files = [dataclasses.replace(f, content=content(f.content, index)) for index, f in enumerate(job.files)]
    return dataclasses.replace(job, files=files)


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
