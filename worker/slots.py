"""A slot: one job of the worker at a time, run by the launcher the slot shares with
others (worker/launcher_process.py; a launcher supervises many jobs at once).

A slot sends ``RunJob``, relays ``JobStarted``, returns the ``JobResult``
(worker/launcher_channel.py), all by its job's id. A job that fits the warm sandbox its
launcher offered goes to that sandbox from here (worker/handover.py) and is supervised
here too (worker/supervision.py): the launcher is told ``OfferTaken``, and gets the
sandbox back (``DropOffer``) once the job's result is out. If the launcher dies
mid-job, the job's result is ``internal_error`` (a job supervised here is killed: the
launcher's replacement removes the dead one's cgroups); one that dies before the job
was handed over gets it again once it has been replaced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from sandbox.errors import SandboxError
from sandbox.models import Collect, Group, Job, Limits, Result, Status
from sandbox.outcome import KillReason
from worker.handover import Offer
from worker.launcher_channel import (
    CancelJob,
    DropOffer,
    GroupResult,
    JobOutput,
    JobRejected,
    JobResult,
    JobStarted,
    Message,
    OfferTaken,
    RunExec,
    RunGroup,
    RunJob,
    encode,
)
from worker.launcher_process import LauncherDied, LauncherProcess
from worker.logs import log
from worker.protocol import ProtocolError, SessionExec, group_to_wire, job_to_wire
from worker.supervision import HandedJob


class Slot:
    def __init__(self, index: int, launcher: LauncherProcess) -> None:
        self.index = index
        self.launcher = launcher
        self.running_id: str | None = None
        self.running_on: LauncherProcess | None = None  # the launcher of the running job (a session's may be another)
        self.handovers = 0  # jobs this slot handed to an offered sandbox itself
        self._cancel_requested = False  # for the running job
        self._handed: HandedJob | None = None  # the job this slot supervises itself, while it runs
        self._to_give_back: int | None = None  # the sandbox of the job it supervised, for ``give_back``

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
        one per member), and has a Result per member. Once the result is out, the caller
        calls ``give_back``."""
        launcher = self.launcher
        self.running_id, self._cancel_requested = job_id, False
        started = False

        async def relay_started() -> None:
            nonlocal started
            started = True
            await on_started()

        try:
            for _attempt in range(2):
                await launcher.ready.wait()
                dead = launcher.dead
                inbox = launcher.expect(job_id)
                try:
                    async with launcher.sending:
                        if self._cancel_requested:
                            return None
                        handed = None
                        if isinstance(job, Group):
                            frames = encode(RunGroup(job_id, group_to_wire(job)))
                        else:
                            frames, handed = self._hand_over(job_id, job, stream=on_output is not None)
                        try:
                            await launcher.send(frames)
                        except (LauncherDied, trio.BrokenResourceError, trio.ClosedResourceError):
                            if handed is None:
                                raise
                            # (the job runs already: ``_supervise`` finds the launcher dead and ends it)
                    if handed is not None:
                        started = True
                        await on_started()
                        return await self._supervise(job_id, launcher, dead, *handed, on_output)
                    return await _until_result(inbox, relay_started, on_output)
                except (LauncherDied, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    if started:
                        return _failed(job, f"launcher {launcher.index} (of slot {self.index}) died: {exc}")
                    await dead.wait()  # then the loop waits for the replacement to be ready
                finally:
                    launcher.forget(job_id)
            return _failed(job, f"launcher {launcher.index} (of slot {self.index}) keeps dying")
        finally:
            self.running_id = None

    async def cancel(self, job_id: str) -> None:
        """Cancel the running job: before it was handed over, ``run`` just does not hand
        it over (the launcher ignores a cancel for a job it does not run); after, the
        launcher kills the sandbox - or this slot, for a job it supervises itself."""
        if self.running_id != job_id:
            return
        self._cancel_requested = True
        if self._handed is not None:
            self._handed.kill(KillReason.CANCEL)
            return
        launcher = self.running_on or self.launcher
        async with launcher.sending:
            try:
                await launcher.send(encode(CancelJob(job_id)))
            except (LauncherDied, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the launcher died; ``run`` reports the job as failed

    async def run_exec(
        self, job_id: str, work: SessionExec, launcher: LauncherProcess | None,
        on_started: Callable[[], Awaitable[None]], on_output: Callable[[JobOutput], None] | None = None,
    ) -> Result | ProtocolError | None:
        """Run a session's exec on ``launcher``, the one that holds the session (None: the
        session is gone), taking this slot while it runs; answered as ``run`` answers.
        Never sent twice: a launcher that dies takes its sessions with it."""
        if launcher is None:
            return ProtocolError("unknown_session", f"no session {work.session}", field="session")
        self.running_id, self.running_on, self._cancel_requested = job_id, launcher, False
        inbox = launcher.expect(job_id)
        try:
            async with launcher.sending:
                if self._cancel_requested:
                    return None
                await launcher.send(encode(RunExec(job_id, work.session, job_to_wire(work.job), on_output is not None)))
            result = await _until_result(inbox, on_started, on_output)
            assert not isinstance(result, list), "an exec has one result"
            return result
        except (LauncherDied, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            return Result(Status.INTERNAL_ERROR, error=f"the session's launcher {launcher.index} died: {exc}")
        finally:
            launcher.forget(job_id)
            self.running_id, self.running_on = None, None

    def _hand_over(
        self, job_id: str, job: Job, *, stream: bool,
    ) -> tuple[bytes, tuple[Offer, Limits, int, list[Collect]] | None]:
        """Give the job to a sandbox the launcher offered, if one fits (worker/handover.py):
        the frames that tell the launcher - ``OfferTaken`` if the job went there, else
        its ``RunJob`` - and, if it did, the offer, the job's limits, the hand-over's
        time and the files it collects, for ``_supervise``. A sandbox that died waiting,
        or a job it could not be told, is given back (``DropOffer`` first), and the
        launcher gets the job as usual (and says what is wrong with it, if anything); so
        are offers on an image that the job's reference no longer names."""
        claimed, outdated = self.launcher.claim_offer(job)
        given_back = b"".join(encode(DropOffer(init_pid)) for init_pid in outdated)
        if claimed is None:
            return given_back + encode(RunJob(job_id, job_to_wire(job), stream)), None
        offer, limits, image_now = claimed
        try:
            handed_ns = offer.hand_over(job, limits, image_now)
        except (OSError, SandboxError, ValueError):
            offer.close()
            given_back += encode(DropOffer(offer.init_pid))
            return given_back + encode(RunJob(job_id, job_to_wire(job), stream)), None
        self.handovers += 1
        return given_back + encode(OfferTaken(offer.init_pid)), (offer, limits, handed_ns, job.collect)

    async def _supervise(
        self, job_id: str, launcher: LauncherProcess, dead: trio.Event, offer: Offer, limits: Limits,
        handed_ns: int, collect: list[Collect], on_output: Callable[[JobOutput], None] | None,
    ) -> Result:
        """Watch a job this slot handed over until it ends (worker/supervision.py); its
        sandbox goes back to the launcher with ``give_back``. A launcher that dies
        meanwhile (``dead``: the event of the one the job was handed on) fails the job:
        it is killed, as the launcher's own jobs die with it. A fault of ours while
        watching is the job's internal_error, as on a launcher's job thread."""

        def relay_output(stream: str, offset: int, data: bytes) -> None:
            assert on_output is not None
            on_output(JobOutput(job_id, stream, offset, data))

        watched = self._handed = HandedJob(offer, limits, handed_ns, collect,
                                           None if on_output is None else relay_output)
        if self._cancel_requested:
            watched.kill(KillReason.CANCEL)
        launcher.on_death.add(watched.abandon)
        if dead.is_set():  # (before it could call ``on_death``)
            watched.abandon()
        try:
            result = await watched.watch()
        except Exception as exc:  # a fault of ours: this job's internal_error, never the worker's end
            watched.abandon()
            log("supervision_failed", id=job_id, error=f"{type(exc).__name__}: {exc}")
            result = Result(Status.INTERNAL_ERROR, error=f"worker: {type(exc).__name__}: {exc}")
        finally:
            launcher.on_death.discard(watched.abandon)
            self._handed = None
            offer.close()
        if dead.is_set():
            return Result(Status.INTERNAL_ERROR, error=f"launcher {launcher.index} (of slot {self.index}) died")
        self._to_give_back = offer.init_pid
        return result

    async def give_back(self) -> None:
        """Return the sandbox of the job this slot supervised to its launcher, to be
        cleaned up - after the job's result went out, which its cleanup would only
        hold up."""
        init_pid, self._to_give_back = self._to_give_back, None
        if init_pid is None:
            return
        async with self.launcher.sending:
            try:
                await self.launcher.send(encode(DropOffer(init_pid)))
            except (LauncherDied, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # its sandboxes went with it


async def _until_result(
    inbox: trio.MemoryReceiveChannel[Message], on_started: Callable[[], Awaitable[None]],
    on_output: Callable[[JobOutput], None] | None,
) -> Result | list[Result] | ProtocolError:
    """The job's outcome, from its messages as the launcher's reader passes them on."""
    async for message in inbox:
        match message:
            case JobStarted():
                await on_started()
            case JobOutput() as output if on_output is not None:
                on_output(output)
            case JobResult(result=result):
                return result
            case GroupResult(results=results):
                return results
            case JobRejected(message=text, field=field, code=code):
                return ProtocolError(code, text, field=field)
    raise LauncherDied("channel closed")


def _failed(job: Job | Group, error: str) -> Result | list[Result]:
    """internal_error for the job, or for each member of a group."""
    if isinstance(job, Group):
        return [Result(Status.INTERNAL_ERROR, error=error) for _ in job.jobs]
    return Result(Status.INTERNAL_ERROR, error=error)
