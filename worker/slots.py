"""The worker's handle on one launcher process (see worker/launcher.py).

A slot runs one job at a time: it sends ``RunJob``, relays ``JobStarted``, returns the
``JobResult`` (worker/launcher_channel.py). A job that fits the warm sandbox the launcher
offered goes to that sandbox from here (worker/handover.py), and its ``RunJob`` tells the
launcher so. If the launcher dies mid-job, the job's result is ``internal_error`` and the
slot starts a fresh launcher before taking the next job.
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from sandbox.errors import SandboxError
from sandbox.models import Group, Job, Result, Status, WarmSpec
from worker.handover import OFFER_FDS, Offer
from worker.launcher_channel import (
    CancelJob,
    ChannelDecoder,
    DropOffer,
    GroupResult,
    JobOutput,
    JobRejected,
    JobResult,
    JobStarted,
    LauncherReady,
    Message,
    OfferSandbox,
    RunGroup,
    RunJob,
    encode,
)
from worker.logs import log
from worker.protocol import ProtocolError, group_to_wire, job_to_wire
from worker.streams import send_now

MAX_RECEIVED_FDS = 16  # a launcher sends 3 at a time (an offer), and one offer at a time
FD_SIZE = array.array("i").itemsize


class LauncherDied(Exception):
    """The launcher closed its channel (crashed or was killed)."""


class Slot:
    def __init__(self, index: int, warm: list[WarmSpec], cache_dir: str | None = None) -> None:
        self.index = index
        self.warm = warm
        self.cache_dir = cache_dir  # the worker's file cache, whose files its jobs name by id
        self.process: trio.Process | None = None
        self.ready = trio.Event()  # set while a launcher is up; replaced when it dies
        self._dead = trio.Event()  # set when the current launcher died
        self.cgroups = False
        self.running_id: str | None = None
        self.restarts = 0
        self._stream: trio.SocketStream | None = None
        self._raw: socket.socket | None = None
        self._decoder = ChannelDecoder()
        self._pending: list[Message] = []
        self._fds: deque[int] = deque()  # received with the launcher's offers, not yet claimed
        self.offer: Offer | None = None  # a sandbox the launcher offered for the next job
        self.handovers = 0  # jobs this slot handed to an offered sandbox itself
        # A job's "run" and a client's "cancel" come from different tasks; trio lets only
        # one task at a time send on a stream (a second one gets BusyResourceError).
        self._sending = trio.StrictFIFOLock()
        self._cancel_requested = False  # for the running job

    async def keep_alive(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the launcher, and start a new one whenever it exits (a dead one's running
        job fails as internal_error in ``run``). Cancel this task to stop the slot."""
        try:
            while True:
                started_at = trio.current_time()
                await self._start()
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                assert self.process is not None
                code = await self.process.wait()
                self.ready = trio.Event()
                self._dead.set()
                await self._close_stream()
                self.restarts += 1
                log("launcher_exited", slot=self.index, code=code)
                if trio.current_time() - started_at < 1:
                    await trio.sleep(1)  # a launcher that dies at once must not spin the CPU
        finally:
            self.ready = trio.Event()  # the slot is stopping: no job may take it now
            with trio.CancelScope(shield=True):
                await self._close_stream()
                if self.process is not None:
                    with trio.move_on_after(5):
                        await self.process.wait()  # it exits on EOF of its channel
                    if self.process.returncode is None:
                        self.process.kill()
                        await self.process.wait()

    def offer_ready(self) -> bool:
        """Whether a sandbox the launcher offered waits for the next job here. An offer
        made while the slot is idle is still in the channel: it is read now, which only
        an idle slot may do (nothing else reads the channel then)."""
        if self.running_id is None and self.ready.is_set():
            self._read_now()
        return self.offer is not None

    async def _start(self) -> None:
        """Start the launcher and wait for its ``LauncherReady`` (modules imported, filter
        built)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "worker.launcher", str(theirs.fileno()), str(os.getpid()),
                 json.dumps([spec.to_wire() for spec in self.warm]), self.cache_dir or ""],
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self._raw = ours  # the same socket: read with its fds (``_read_now``), written by trio
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        self._dead = trio.Event()
        self._decoder = ChannelDecoder()
        self._pending = []
        self._drop_offer()
        try:
            hello = await self._receive()
        except LauncherDied:
            return  # keep_alive sees the exit and tries again
        self.cgroups = isinstance(hello, LauncherReady) and hello.cgroups
        self.ready.set()

    async def run(
        self, job_id: str, job: Job | Group, on_started: Callable[[], Awaitable[None]],
        on_output: Callable[[JobOutput], None] | None = None,
    ) -> Result | list[Result] | ProtocolError | None:
        """Run a job; never raises for the job's sake. The job goes straight to the
        sandbox the launcher offered if it is one for it (``_hand_over``), else to the
        launcher. A launcher that dies before the job started (before the job was handed
        to a sandbox, by the launcher, which then says ``JobStarted``, or here) is replaced
        and the job sent once more; one that dies after makes the job an internal_error.
        With ``on_output`` the launcher streams the job's output, each piece a
        ``JobOutput`` to it. None: the job was cancelled before it was handed to a launcher
        (it never ran); an invalid_job error: the launcher found the job wrong (it never
        ran either). A group goes to the launcher, never to an offered sandbox (it takes
        one per member), and has a Result per member."""
        self.running_id, self._cancel_requested = job_id, False
        started = False

        async def relay_started() -> None:
            nonlocal started
            started = True
            await on_started()

        try:
            for _attempt in range(2):
                await self.ready.wait()
                dead = self._dead
                try:
                    async with self._sending:
                        if self._cancel_requested:
                            return None
                        if isinstance(job, Group):
                            frames, started = encode(RunGroup(job_id, group_to_wire(job))), False
                        else:
                            frames, started = self._hand_over(job_id, job, stream=on_output is not None)
                        # (started: a launcher that dies now takes the job with it)
                        await self._send(frames)
                        if started:
                            await on_started()
                    return await self._until_result(job_id, relay_started, on_output)
                except (LauncherDied, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    if started:
                        return _failed(job, f"launcher of slot {self.index} died: {exc}")
                    await dead.wait()  # then the loop waits for the replacement to be ready
            return _failed(job, f"launcher of slot {self.index} keeps dying")
        finally:
            self.running_id = None

    async def cancel(self, job_id: str) -> None:
        """Cancel the running job: before it was handed over, ``run`` just does not hand
        it over (the launcher, idle, ignores the cancel); after, the launcher kills the
        sandbox."""
        if self.running_id != job_id:
            return
        self._cancel_requested = True
        async with self._sending:
            try:
                await self._send(encode(CancelJob(job_id)))
            except (LauncherDied, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the launcher died; ``run`` reports the job as failed

    async def _until_result(
        self, job_id: str, on_started: Callable[[], Awaitable[None]],
        on_output: Callable[[JobOutput], None] | None,
    ) -> Result | list[Result] | ProtocolError:
        while True:
            match await self._receive():
                case JobStarted(id=message_id) if message_id == job_id:
                    await on_started()
                case JobOutput(id=message_id) as output if message_id == job_id and on_output is not None:
                    on_output(output)
                case JobResult(id=message_id, result=result) if message_id == job_id:
                    return result
                case GroupResult(id=message_id, results=results) if message_id == job_id:
                    return results
                case JobRejected(id=message_id, message=text, field=field) if message_id == job_id:
                    return ProtocolError("invalid_job", text, field=field)

    async def _send(self, data: bytes) -> None:
        """Send to the launcher (the caller holds ``_sending``): what the channel takes
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

    def _hand_over(self, job_id: str, job: Job, *, stream: bool) -> tuple[bytes, bool]:
        """Give the job to the sandbox the launcher offered, if it fits (worker/handover.py):
        the frames that tell the launcher - its ``RunJob``, naming the sandbox if the job
        went there - and whether it did. A sandbox that died waiting, or a job it could
        not be told, is given back (``DropOffer`` first), and the launcher gets the job
        as usual (and says what is wrong with it, if anything)."""
        wire = job_to_wire(job)
        self._read_now()  # an offer made since the last job is waiting in the channel
        offer = self.offer
        limits = None if offer is None else offer.limits_for(job)
        if offer is None or limits is None:
            return encode(RunJob(job_id, wire, stream)), False
        self.offer = None
        try:
            handed_ns = offer.hand_over(job, limits)
        except (OSError, SandboxError, ValueError):
            return encode(DropOffer(offer.init_pid)) + encode(RunJob(job_id, wire, stream)), False
        finally:
            offer.close()
        self.handovers += 1
        return encode(RunJob(job_id, wire, stream, offer.init_pid, handed_ns)), True

    def _drop_offer(self) -> None:
        """Forget the launcher's offer and close what came with it (the launcher is new,
        or gone)."""
        if self.offer is not None:
            self.offer.close()
            self.offer = None
        while self._fds:
            os.close(self._fds.popleft())

    async def _close_stream(self) -> None:
        self._drop_offer()
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
            self._raw = None

    def _read_now(self) -> bool:
        """Take what the launcher sent, without waiting: its frames, and the fds that come
        with its offers. False when the channel is closed or broken."""
        if self._raw is None:
            return False
        try:
            # (socket.recv_fds would drop the flags: fds must not leak into the launchers)
            data, ancillary, _, _ = self._raw.recvmsg(
                1 << 20, socket.CMSG_SPACE(MAX_RECEIVED_FDS * FD_SIZE), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC,
            )
        except BlockingIOError:
            return True
        except OSError:
            return False
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % FD_SIZE])
                self._fds.extend(fds)
        for message in self._decoder.feed(data):
            if isinstance(message, OfferSandbox):
                self._take_offer(message)
            else:
                self._pending.append(message)
        return bool(data)

    def _take_offer(self, message: OfferSandbox) -> None:
        fds = [self._fds.popleft() for _ in range(min(OFFER_FDS, len(self._fds)))]
        if self.offer is not None:
            self.offer.close()  # a launcher makes one offer at a time: not reached
        try:
            self.offer = Offer.from_message(message, fds)
        except (ValueError, OSError):  # fewer fds than an offer has, or not sockets
            for fd in fds:
                os.close(fd)
            self.offer = None

    async def _receive(self) -> Message:
        while not self._pending:
            if self._stream is None:
                raise LauncherDied("launcher stopped")
            await trio.lowlevel.wait_readable(self._stream.socket)
            if not self._read_now():
                raise LauncherDied("channel closed")
        return self._pending.pop(0)


def _failed(job: Job | Group, error: str) -> Result | list[Result]:
    """internal_error for the job, or for each member of a group."""
    if isinstance(job, Group):
        return [Result(Status.INTERNAL_ERROR, error=error) for _ in job.jobs]
    return Result(Status.INTERNAL_ERROR, error=error)
