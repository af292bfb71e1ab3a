"""Sessions: a sandbox that lives between commands (Docker's create / exec / rm).

A session is a sandbox whose init (the C init, B) does not end with its first program:
asked for a session instead of a job, it drops the program stage it made ahead of time
and then forks a fresh one per exec (``native/init.c``, "A session"). So each exec is
set up exactly as a job is - its own program stage, user namespace, seccomp filter,
rlimits - and the sandbox's root, writable layer and scratch (``/work``, ``/tmp``) stay
from one exec to the next.

cgroups: the sandbox's job cgroup is the session's, written with the session's limits
(memory, pids, cpus: every exec together); each exec gets a cgroup of its own below it
(``CgroupBackend.nested``) with the exec's limits, whose counters are the exec's usage.
A limit hit or a violation kills that exec's cgroup, not the init: the session goes on.
Nothing of an exec outlives it (the init kills and reaps what is left once its program
exits), so an idle session runs nothing and holds only its files.

One exec at a time per session; ``stop`` and ``delete`` may come from other threads.

``commit`` (an image session's): the writable layer's upper directory, whose fd the init
hands over between execs, becomes one more layer over the session's image, stored under
a name. It runs while no exec does (it takes the exec lock, and refuses while an exec
holds it): nothing of an exec outlives it, so then nothing in the session can change
the upper directory while the layer writer reads it - no freezer needed, and a paused
session (nothing running) commits too.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from sandbox.cgroups import JobCgroup
from sandbox.cgroups.base import Freezer
from sandbox.collect import COLLECT_TIMEOUT_S, Collected, not_collected, receive
from sandbox.errors import CgroupError, JobError, SandboxError, SetupError
from sandbox.job_message import job_spec, job_stdin, open_blob, rlimits, start_job
from sandbox.models import DEFAULT_STOP_GRACE_S, Job, Result, SessionSpec, Status
from sandbox.outcome import Outcome
from sandbox.runner import (
    Runner,
    close_quietly,
    command_of,
    lease_image_root,
    pipe_pair,
)
from sandbox.supervise import Watch, supervise
from sandbox.supply import Sandbox
from sandbox.verdict import result_of, usage_of

# The first message on a sandbox's job channel that makes it a session, and the one
# that comes with each exec's cgroup fds ahead of its job message (native/init.c).
SESSION_REQUEST = b"session\0"
EXEC_REQUEST = b"exec"
# Between execs: the writable layer's upper directory, answered with its fd (a commit).
UPPER_REQUEST = b"upper"
COMMITTED_BY = "sandbox commit"  # the history entry of a committed layer
# How long the init may take to answer: it only reaps and kills, so only a sandbox in
# trouble takes this long (it is then taken for dead).
ANSWER_TIMEOUT_S = 30.0


class SessionGone(SandboxError):
    """The session was deleted, or its sandbox ended."""


class CommitRefused(SandboxError):
    """A session that cannot be committed now, or at all; says why."""


@dataclass(frozen=True)
class Committed:
    """A session committed: the new image's reference and id (its config's digest)."""

    reference: str
    image_id: str


class Session:
    """A sandbox that runs one command after another (``exec``), until ``delete``."""

    def __init__(self, runner: Runner, spec: SessionSpec) -> None:
        """Take a sandbox for ``spec`` from the runner's supply and turn it into a
        session. Raises SetupError (the sandbox did not start), CgroupError (no
        delegated cgroup: an exec's limits and usage are its cgroup's) or JobError."""
        if runner.backend is None:
            raise CgroupError(f"a session needs a delegated cgroup: {runner.cgroup_problem}")
        self.spec = spec
        self._runner = runner
        profile = runner.profiles.get(spec.profile)
        self._profile_env = profile.env
        self._profile_limits = profile.limits
        self.limits = spec.limits.over(profile.limits)
        self._image = lease_image_root(spec.image) if spec.image != "host" else None
        self._lock = threading.Lock()  # held by the exec under way
        self._state = threading.Lock()  # guards _running against stop/delete
        self._running: JobCgroup | None = None
        self.closed = False
        self.paused = False
        self._freezer: Freezer | None = None
        self._no_freezer = ""
        self.last_active = time.monotonic()
        try:
            self._sandbox: Sandbox = runner.take_sandbox(
                None if self._image is None else self._image.root, spec.profile, self.limits, image_name=spec.image,
            )
            self._start()
        except BaseException:
            self.delete()
            raise

    def _start(self) -> None:
        prepared, cgroup = self._sandbox.prepared, self._sandbox.cgroup
        if prepared.init_pid <= 0:
            message = next((m["message"] for m in prepared.early if m["kind"] == "setup_error"), None)
            raise SetupError(message or "the session's sandbox did not start")
        if cgroup is None:
            raise CgroupError("the session's sandbox has no cgroup")
        cgroup.apply_limits(self.limits)
        prepared.job_channel.send(SESSION_REQUEST)
        self._expect("session")
        assert self._runner.backend is not None
        self._execs = self._runner.backend.nested(cgroup)
        self._cgroup = cgroup
        try:
            self._freezer = self._runner.backend.freezer(cgroup)
        except CgroupError as exc:
            self._freezer, self._no_freezer = None, str(exc)

    @property
    def init_pid(self) -> int:
        return self._sandbox.prepared.init_pid

    @property
    def cgroup_directories(self) -> list[str]:
        """The session's cgroup (one directory per v1 hierarchy; its execs' are below) and
        its freezer's: what is left on the host of a session whose init is gone."""
        freezer = [] if self._freezer is None else [self._freezer.directory]
        return list(dict.fromkeys([*self._cgroup.directories, *freezer]))

    @property
    def running(self) -> bool:
        return self._running is not None

    def exec(
        self, job: Job, *, cancel_fd: int | None = None, on_started: Callable[[], None] | None = None,
        on_output: Callable[[str, int, bytes], None] | None = None, collect_room: int | None = None,
    ) -> Result:
        """Run ``job`` in the session and return its Result, as ``Runner.run`` would
        (its image and profile are the session's; its ``disk`` is the session's, whose
        scratch it shares). Raises SessionGone if the session is gone, JobError for a
        job a session cannot run."""
        if job.mounts:
            raise JobError("a session's exec mounts no trees", field="mounts")
        if self.paused:  # (an exec under way holds the lock: say so now, not once it ends)
            raise JobError("the session is paused: resume it first", field="session")
        with self._lock:
            if self.closed:
                raise SessionGone("the session was deleted")
            if self.paused:
                raise JobError("the session is paused: resume it first", field="session")
            try:
                return self._exec(job, cancel_fd, on_started, on_output, collect_room)
            except (SessionGone, SetupError) as exc:
                self._end(str(exc))
                return Result(Status.INTERNAL_ERROR, error=f"the session ended: {exc}")
            except (CgroupError, OSError) as exc:
                return Result(Status.INTERNAL_ERROR, error=f"{type(exc).__name__}: {exc}")
            finally:
                self.last_active = time.monotonic()

    def _exec(
        self, job: Job, cancel_fd: int | None, on_started: Callable[[], None] | None,
        on_output: Callable[[str, int, bytes], None] | None, collect_room: int | None,
    ) -> Result:
        limits = job.limits.over(self._profile_limits)
        warnings: list[str] = []
        if self._runner.id_plan.problem is not None:
            warnings.append(f"the job ran as this user, as every job of it does ({self._runner.id_plan.problem})")
        prepared = self._sandbox.prepared
        with ExitStack() as cleanup:
            fds: list[int] = []
            cleanup.callback(close_quietly, fds)
            cgroup = self._execs.create_job(cpu_quota=self._cgroup.cpu_quota)
            cleanup.callback(self._forget_exec, cgroup)
            cgroup.apply_limits(limits)
            cgroup.start_accounting()
            argv, env, cwd = command_of(job, self._profile_env, None if self._image is None else self._image.lease)
            stdout_r, stdout_w = pipe_pair(fds)
            stderr_r, stderr_w = pipe_pair(fds)
            stdin = job_stdin(job.stdin, fds)
            files = [(f.dest, open_blob(f.content, fds), f.mode) for f in job.files]
            # The disk is the session's: its execs share one scratch.
            spec = job_spec(argv, env, cwd, self.limits, (stdin, stdout_w, stderr_w), rlimits(limits, True, warnings),
                            files, job.collect)
            with self._state:
                self._running = cgroup
            try:
                joined = [*cgroup.attach_fds, *(self._freezer.attach_fds if self._freezer is not None else [])]
                socket.send_fds(prepared.job_channel, [EXEC_REQUEST], [cgroup.cpu_counter_fd, *joined])
                start_job(prepared.job_channel, spec)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:  # the init has the exec's cgroup and waits for its job
                    self._end("an exec too long for one message")
                    raise JobError("the command, its environment and the file names are too long for one job "
                                   "message", field="cmd") from None
                raise SessionGone(self._why_gone()) from None
            for fd in (stdout_w, stderr_w):
                fds.remove(fd)
                os.close(fd)
            watch = Watch(
                limits=limits,
                cpus=self._runner.parallelism,
                cgroup=cgroup,
                collecting=True,  # the init kills and reaps the rest of every exec itself
                kill=lambda: self._kill(cgroup),
            )
            outcome = supervise(prepared, stdout_r, stderr_r, output_limit=limits.output_bytes, watch=watch,
                                cancel_fd=cancel_fd, on_started=on_started, on_output=on_output)
            if prepared.reaped:
                raise SessionGone("its sandbox init exited")
            collected = self._finish_exec(job, outcome, cgroup, collect_room)
            usage = usage_of(outcome, None if cgroup is None else cgroup.usage())
            return result_of(outcome, usage, limits, collected, warnings, [])
        raise AssertionError("unreachable")  # pragma: no cover - the with block returns

    def _finish_exec(self, job: Job, outcome: Outcome, cgroup: JobCgroup, room: int | None) -> Collected:
        """What the init sends after the exec's program exited, in its order: "started"
        (if supervise did not read it), the collected files, "over" (everything of the
        exec reaped)."""
        if outcome.started_ns is None:
            started = self._expect("started")
            outcome.started_ns = started["t"]
            cgroup.start_cpu_account_at(started["cpu_ns"])
        collected = Collected()
        if job.collect:
            if room is not None:
                room -= len(outcome.stdout.data) + len(outcome.stderr.data)
            collected = receive(self._sandbox.prepared.job_channel, job.collect, room=room,
                                timeout_s=COLLECT_TIMEOUT_S)
            if outcome.kill_reason is not None:
                collected = not_collected(job.collect, f"the job was killed ({outcome.kill_reason.value})")
            elif outcome.exited is None or outcome.setup_error:
                collected = not_collected(job.collect, "the program never ran to its end")
        self._expect("over")
        return collected

    def _expect(self, kind: str) -> dict[str, Any]:
        """The init's next message on the job channel, which must be ``kind``."""
        channel = self._sandbox.prepared.job_channel
        ready, _, _ = select.select([channel], [], [], ANSWER_TIMEOUT_S)
        data = channel.recv(1 << 16) if ready else b""
        if not data:
            raise SessionGone(self._why_gone() if ready else f"its sandbox init did not answer {kind!r}")
        message: dict[str, Any] = json.loads(data)
        if message.get("kind") != kind:
            raise SessionGone(f"its sandbox init answered {message.get('kind')!r}, not {kind!r}")
        return message

    def commit(self, reference: str) -> Committed:
        """Store the session's root as an image named ``reference`` (name:tag): its image
        with the writable layer as one more layer - what the execs changed outside the
        scratch (``/work``, ``/tmp`` and ``/dev/shm`` are not part of the root), files
        removed as whiteouts, directories replaced as opaque - and its image's config.
        Raises JobError for a bad reference, CommitRefused for a host-image session or
        one whose exec runs, SessionGone, and ImageError for a layer that cannot be
        written (a socket or device the job made, say)."""
        from sandbox.images import config as images_config
        from sandbox.images.compose import commit_upper
        from sandbox.images.errors import BadReference
        from sandbox.images.reference import parse
        from sandbox.images.store import Store

        if self._image is None:
            raise CommitRefused("a session on the host image has nothing to commit: its root is the host's own "
                                "directories, not an image's layers (create the session on an image)")
        try:
            target = parse(reference)
        except BadReference as exc:
            raise JobError(str(exc), field="reference") from None
        if target.digest is not None:
            raise JobError("commit to a tag, not a digest", field="reference")
        if not self._lock.acquire(blocking=False):
            raise CommitRefused("an exec is running in the session: commit once it has ended")
        try:
            if self.closed:
                raise SessionGone("the session was deleted")
            images = images_config.load()
            store = Store(images.store)
            try:
                upper = self._upper_directory()
            except SessionGone as exc:  # (its channel may hold a late answer: no exec could follow it)
                self._end(str(exc))
                raise
            try:
                with store.shared():  # (gc waits: the image is unreferenced until it is named)
                    record = commit_upper(store, images, upper, self._image.lease.record, COMMITTED_BY)
                    store.set_ref(target, record.id)
            finally:
                os.close(upper)
            return Committed(str(target), record.id)
        finally:
            self.last_active = time.monotonic()
            self._lock.release()

    def _upper_directory(self) -> int:
        """The init's fd of the writable layer's upper directory (``O_PATH``)."""
        channel = self._sandbox.prepared.job_channel
        try:
            channel.send(UPPER_REQUEST)
            ready, _, _ = select.select([channel], [], [], ANSWER_TIMEOUT_S)
            data, fds, _, _ = socket.recv_fds(channel, 1 << 16, 1) if ready else (b"", [], 0, None)
        except OSError:
            raise SessionGone(self._why_gone()) from None
        if not data:
            raise SessionGone(self._why_gone())
        if json.loads(data).get("kind") != "upper" or len(fds) != 1:
            close_quietly(fds)
            raise SessionGone("its sandbox init did not hand over its writable layer")
        return fds[0]

    def _why_gone(self) -> str:
        """Why the init closed its job channel: the setup_error it reported on its way
        out (a failed step of the session's set-up or of an exec's), else how it ended.
        Read without reaping it: that stays the supply's (``retire``)."""
        prepared = self._sandbox.prepared
        messages = list(prepared.early)
        try:
            while data := os.read(prepared.report_fd, 1 << 16):
                messages += prepared.reader.feed(data)
        except BlockingIOError:
            pass
        error = next((m.get("message") for m in messages if m.get("kind") == "setup_error"), None)
        if error:
            return f"its sandbox init failed: {error}"
        status = _exit_status(prepared.init_pid)
        return f"its sandbox init {status}" if status else "its sandbox init closed its job channel"

    def _kill(self, cgroup: JobCgroup) -> None:
        """Kill the exec (a limit, a cancel, ``stop``), thawed first if paused: a task
        frozen by v1's freezer cannot even die."""
        with self._state:
            if self.paused and self._freezer is not None:
                self._freezer.set(False)
                self.paused = False
            cgroup.kill_all()

    def pause(self) -> None:
        """Freeze every process of the session (the exec under way): they use no CPU
        until ``resume``. An exec is refused while paused; its wall clock runs on."""
        self._freeze(True)

    def resume(self) -> None:
        self._freeze(False)

    def _freeze(self, frozen: bool) -> None:
        with self._state:
            if self.closed:
                raise SessionGone("the session was deleted")
            if self._freezer is None:
                raise CgroupError(self._no_freezer)
            self._freezer.set(frozen)
            self.paused = frozen

    def cpu_ns(self) -> int:
        """The CPU time every exec of the session used so far, in ns."""
        return self._cgroup.cpu_usage_ns()

    def _forget_exec(self, cgroup: JobCgroup) -> None:
        with self._state:
            self._running = None
            cgroup.destroy()

    def stop(self, grace_s: float = DEFAULT_STOP_GRACE_S) -> bool:
        """SIGTERM to every process of the exec under way, SIGKILL ``grace_s`` later if
        it has not ended; the session and its files stay. False: nothing ran."""
        with self._state:
            cgroup = self._running
            if cgroup is None:
                return False
            _signal_all(cgroup, signal.SIGTERM)
        if self._lock.acquire(timeout=grace_s):
            self._lock.release()
            return True
        if self._running is cgroup:
            self._kill(cgroup)
        return True

    def delete(self) -> None:
        """Kill whatever runs and end the session: its sandbox, files and cgroups are
        gone once the runner's supply has cleaned it up. Idempotent."""
        running = self._running
        if running is not None:
            self._kill(running)
        with self._lock:
            self._end("deleted")

    def _end(self, why: str) -> None:
        """Retire the sandbox (the caller holds ``_lock``)."""
        if self.closed:
            return
        self.closed = True
        if self._freezer is not None:
            self._freezer.destroy()
        sandbox = getattr(self, "_sandbox", None)
        if sandbox is not None:
            self._runner.retire(sandbox)
        if self._image is not None:
            self._runner.release_lease(self._image.lease)


def _exit_status(pid: int) -> str | None:
    """How the process ``pid`` (a child, exiting or exited) ended, left unreaped; None if
    it does not end within ANSWER_TIMEOUT_S (its job channel closed: it is on its way)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        exited, _, _ = select.select([pidfd], [], [], ANSWER_TIMEOUT_S)
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) if exited else None
    except ChildProcessError:
        return None
    finally:
        os.close(pidfd)
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return f"exited with status {info.si_status}"
    return f"was killed by signal {info.si_status} ({signal.strsignal(info.si_status)})"


def _signal_all(cgroup: JobCgroup, number: int) -> None:
    for pid in cgroup.pids():
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass

