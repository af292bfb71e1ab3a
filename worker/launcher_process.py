"""The worker's handle on one launcher process (see worker/launcher.py), shared by the
slots it runs jobs for (worker/slots.py).

It starts the launcher, reads everything it sends - one reader task, since only one
task may wait on a socket - and passes each job's messages to the slot that waits for
that job's id; a slot sends under ``sending`` (trio lets one task at a time send on a
stream). The launcher's offer of a warm sandbox (worker/handover.py) is kept here, for
whichever of its slots gets a job that fits it first.

A launcher that dies fails the jobs of its slots that wait for a result (they see
``LauncherDied``; a slot that has not handed its job over yet sends it to the next
launcher), and a new one is started. Every frame the dead one sent before it died is read
first: a job whose result made it out gets that result.
"""

from __future__ import annotations

import array
import json
import math
import os
import socket
import sys
from collections.abc import Callable

import trio

from sandbox.images.store import ImageRecord
from sandbox.models import Job, Limits, WarmSpec
from worker.admission import current_image
from worker.handover import Offer
from worker.launcher_channel import (
    ChannelDecoder,
    GroupResult,
    JobOutput,
    JobRejected,
    JobResult,
    JobStarted,
    LauncherReady,
    Message,
    OfferSandbox,
    SessionAnswer,
)
from worker.logs import log
from worker.streams import send_now

# A launcher sends at most 15 at a time (an offer: ``Offer.fd_count``), and a read stops
# after a message with fds.
MAX_RECEIVED_FDS = 32
FD_SIZE = array.array("i").itemsize
# A job's messages, by its id (and a session request's answer, by the request's).
ToSlot = (JobStarted, JobOutput, JobResult, GroupResult, JobRejected, SessionAnswer)


class LauncherDied(Exception):
    """The launcher closed its channel (crashed or was killed)."""


class LauncherProcess:
    def __init__(self, index: int, warm: list[WarmSpec], cache_dir: str | None = None,
                 allow_bind: list[str] | None = None, sessions_dir: str | None = None) -> None:
        self.index = index
        self.warm = warm  # the warm sandboxes it keeps: the sum of its slots' shares
        self.cache_dir = cache_dir  # the worker's file cache, whose files its jobs name by id
        self.allow_bind = allow_bind or []  # host directories below which its jobs may bind (--allow-bind)
        self.sessions_dir = sessions_dir  # where it keeps a record of each session it holds (worker/launcher.py)
        self.process: trio.Process | None = None
        self.ready = trio.Event()  # set while a launcher is up; replaced when it dies
        self.dead = trio.Event()  # set when the current launcher died; replaced by the next one's
        self.cgroups = False
        self.restarts = 0
        self.offers: list[Offer] = []  # sandboxes the launcher offered for the next jobs that fit (a kind each)
        self.sending = trio.StrictFIFOLock()  # held by a slot sending (``send``)
        self._stream: trio.SocketStream | None = None
        self._raw: socket.socket | None = None
        self._decoder = ChannelDecoder()
        self._hello: LauncherReady | None = None
        self._fds: list[int] = []  # received with the launcher's offers, not yet claimed
        self._inboxes: dict[str, trio.MemorySendChannel[Message]] = {}  # by job id
        # Called when it dies: each kills a job the worker supervises itself in one of
        # its sandboxes (the replacement removes the dead one's cgroups, and with them
        # anything left in them).
        self.on_death: set[Callable[[], None]] = set()

    async def keep_alive(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the launcher, and start a new one whenever it exits. Cancel this task to
        stop it."""
        try:
            while True:
                started_at = trio.current_time()
                await self._start()
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                assert self.process is not None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_messages)
                    code = await self.process.wait()
                    nursery.cancel_scope.cancel()
                self._died()
                self.restarts += 1
                log("launcher_exited", launcher=self.index, code=code)
                if trio.current_time() - started_at < 1:
                    await trio.sleep(1)  # a launcher that dies at once must not spin the CPU
        finally:
            self.ready = trio.Event()  # stopping: no job may take it now
            with trio.CancelScope(shield=True):
                self._died()
                if self.process is not None:
                    with trio.move_on_after(5):
                        await self.process.wait()  # it exits on EOF of its channel
                    if self.process.returncode is None:
                        self.process.kill()
                        await self.process.wait()

    def offers_ready(self) -> int:
        """How many sandboxes the launcher offered wait for a job (those still in the
        channel are read now - once it is up: until then ``_start`` waits for its hello)."""
        if self.ready.is_set():
            self._read_now()
        return len(self.offers)

    def claim_offer(self, job: Job) -> tuple[tuple[Offer, Limits, ImageRecord | None] | None, list[int]]:
        """The launcher's offer the job fits, the job's limits in it and the stored image
        its reference names now (``Offer.limits_for``), if there is one: the offer is the
        caller's then, to hand the job over and close; and the offers of the job's image
        that no job will take (``Offer.outdated``), closed here, for the caller to give
        back (``DropOffer``) by their numbers. The image is looked up once per job."""
        self._read_now()  # offers made since the last look are waiting in the channel
        image_now = None if job.image == "host" else current_image(job.image)
        outdated = [offer for offer in self.offers if offer.kind.image == job.image and offer.outdated(image_now)]
        for offer in outdated:
            self.offers.remove(offer)
            offer.close()
        dropped = [offer.init_pid for offer in outdated]
        for offer in self.offers:
            limits = offer.limits_for(job, image_now)
            if limits is not None:
                self.offers.remove(offer)
                return (offer, limits, image_now), dropped
        return None, dropped

    def expect(self, job_id: str) -> trio.MemoryReceiveChannel[Message]:
        """Where the launcher's messages for that job will come, until ``forget``; closed
        (after what came before) if the launcher dies."""
        send, receive = trio.open_memory_channel[Message](math.inf)
        self._inboxes[job_id] = send
        return receive

    def forget(self, job_id: str) -> None:
        inbox = self._inboxes.pop(job_id, None)
        if inbox is not None:
            inbox.close()

    async def send(self, data: bytes) -> None:
        """Send to the launcher (the caller holds ``sending``): what the channel takes
        at once goes out without a trip through trio's scheduler (the socket is
        non-blocking), the rest as trio sends it."""
        if self._stream is None:
            raise LauncherDied("launcher stopped")
        try:
            rest = send_now(self._stream, data)
        except OSError as exc:
            raise LauncherDied(f"channel broken: {exc}") from exc
        if rest:
            await self._stream.send_all(rest)

    async def _start(self) -> None:
        """Start the launcher and wait for its ``LauncherReady`` (modules imported, filters
        built)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "worker.launcher", str(theirs.fileno()), str(os.getpid()),
                 json.dumps([spec.to_wire() for spec in self.warm]), self.cache_dir or "",
                 json.dumps(self.allow_bind), self.sessions_dir or ""],
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self._raw = ours  # the same socket: read with its fds (``_read_now``), written by trio
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        self.dead = trio.Event()
        self._decoder = ChannelDecoder()
        while self._hello is None:  # (None again since the last one died: ``_died``)
            await trio.lowlevel.wait_readable(self._stream.socket)
            if self._read_now() == 0:
                return  # it died: keep_alive sees the exit and tries again
        self.cgroups = self._hello.cgroups
        self.ready.set()

    async def _read_messages(self) -> None:
        """Read until the channel closes."""
        assert self._stream is not None
        while True:
            await trio.lowlevel.wait_readable(self._stream.socket)
            if self._read_now() == 0:
                return

    def _died(self) -> None:
        """The launcher is gone: take what it sent before it died, fail the jobs still
        waiting for theirs, close the channel and what came with its offer. Runs without
        a checkpoint, so no slot sends to the dead launcher or waits on it afterwards."""
        self.ready = trio.Event()
        while self._read_now() > 0:
            pass
        self._hello = None
        for inbox in self._inboxes.values():
            inbox.close()
        self._inboxes.clear()
        while self.offers:
            self.offers.pop().close()
        for abandon in list(self.on_death):
            abandon()
        while self._fds:
            os.close(self._fds.pop())
        if self._stream is not None:
            self._stream.socket.close()  # (a slot sending on it gets ClosedResourceError)
            self._stream = None
            self._raw = None
        self.dead.set()

    def _read_now(self) -> int:
        """Take what the launcher sent, without waiting: its frames, each passed on to
        the job it is for, and the fds that come with its offers. The bytes read; 0 when
        the channel is closed or broken, -1 when nothing is waiting."""
        if self._raw is None:
            return 0
        try:
            # (socket.recv_fds would drop the flags: fds must not leak into the launchers)
            data, ancillary, _, _ = self._raw.recvmsg(
                1 << 20, socket.CMSG_SPACE(MAX_RECEIVED_FDS * FD_SIZE), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC,
            )
        except BlockingIOError:
            return -1
        except OSError:
            return 0
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % FD_SIZE])
                self._fds.extend(fds)
        for message in self._decoder.feed(data):
            if isinstance(message, OfferSandbox):
                self._take_offer(message)
            elif isinstance(message, LauncherReady):
                self._hello = message
            elif isinstance(message, ToSlot) and (inbox := self._inboxes.get(message.id)) is not None:
                inbox.send_nowait(message)
            # (else one for a job no slot waits for: its slot was stopped)
        return len(data)

    def _take_offer(self, message: OfferSandbox) -> None:
        count = Offer.fd_count(message)
        fds, self._fds = self._fds[:count], self._fds[count:]
        try:
            self.offers.append(Offer.from_message(message, fds, self.cache_dir))
        except (ValueError, OSError):  # fewer fds than an offer has, or not sockets
            for fd in fds:
                os.close(fd)
