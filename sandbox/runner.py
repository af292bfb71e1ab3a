"""Job in, Result out: assemble cgroup, sandbox, supervision and verdict.

A ``Runner`` holds what is the same for every job of a process - the compiled seccomp
filter, the cgroup backend, the capability count - so a job pays only for its own
sandbox. It never raises for a job: every failure becomes a Result (``internal_error``
for faults of the sandbox, with the message).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox import prepare
from sandbox.cgroups import CgroupBackend, JobCgroup, open_backend
from sandbox.collect import Collected, collect_after
from sandbox.errors import CgroupError, JobError, SandboxError, SetupError
from sandbox.ids import plan_ids
from sandbox.job_message import (
    host_command,
    job_spec,
    job_stdin,
    open_blob,
    rlimits,
    start_job,
)
from sandbox.linux.readiness import wait_readable
from sandbox.models import (
    CGROUP_LIMITS,
    WORKDIR,
    Group,
    Job,
    Limits,
    Mount,
    Pipe,
    Result,
    Status,
    WarmSpec,
)
from sandbox.prepare import ImageRoot
from sandbox.profile import INET_MODES
from sandbox.profile_cache import ProfileCache
from sandbox.rootfs import SANDBOX_UID
from sandbox.supervise import Watch, supervise
from sandbox.supply import Sandbox, SandboxSupply
from sandbox.verdict import result_of, usage_of
from sandbox.warm_kind import WarmKind
from sandbox.zygote import StartedZygote

if TYPE_CHECKING:
    from sandbox.interpreter import Interpreters

# Warm sandboxes are built with the default writable-area size; a job asking for
# another size gets the tmpfs resized (cheap) when it arrives.
WARM_DISK_BYTES = Limits().disk_bytes
# How long the init may take to hand over a job's files: its work is bounded (the
# entries' walks), so only a sandbox in trouble takes this long.
# How many image names and working directories a runner remembers the last root of:
# names come from jobs, and a job names whatever it likes.
MAX_LAST_ROOTS = 64


class Runner:
    """Runs jobs; with ``warm`` > 0, keeps that many sandboxes for ``profile`` on the host
    image prepared ahead of time, and those ``warm_for`` names besides (call
    ``sandboxes.step`` when idle), so a job's critical path is hand-over, exec, collect."""

    def __init__(
        self, profile: str = "default", warm: int = 0, warm_for: Sequence[WarmSpec] = (), *, one_shot: bool = False,
        started: StartedZygote | None = None,
    ) -> None:
        """``one_shot``: this process runs a job (or a few) and exits - the command line:
        its sandboxes are started by a fork of it rather than by a fresh interpreter
        (``zygote.ForkedZygote``), whose start-up such a process would pay in full.
        ``started``: its first zygote, started by the caller (the Runner owns it now)."""
        self.profiles = ProfileCache()
        cap_last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        self.parallelism = len(os.sched_getaffinity(0))
        try:
            self.backend: CgroupBackend | None = open_backend()
            self.backend.reap_stale()
            self.cgroup_problem: str | None = None
        except (CgroupError, OSError) as exc:
            self.backend = None
            self.cgroup_problem = str(exc)
        prepare.become_subreaper()
        self.id_plan = plan_ids() if started is None else started.id_plan
        specs = WarmSpec.merged([WarmSpec(warm, profile), *warm_for])
        self.sandboxes = SandboxSupply(self.profiles, self.backend, cap_last, specs, WARM_DISK_BYTES, self.id_plan,
                                       one_shot=one_shot, started=started)
        try:
            self.sandboxes.start()
            # A broken default profile fails here, not at the first job (loaded while
            # the zygote builds its template).
            self.profiles.get(profile)
            self.sandboxes.wait_started()
        except BaseException:
            self.sandboxes.close()
            raise
        # The supply and the image leases are not thread-safe: taking, starting and
        # retiring sandboxes is serialized; supervising them (most of a job's life) is not,
        # so several threads may run jobs on one Runner (``sandbox judge --parallel``).
        self._supply_lock = threading.Lock()
        self._interpreter_templates: Interpreters | None = None
        # The root each (image name, cwd) of a job last leased (``_take_built``).
        self._last_roots: dict[tuple[str, str | None], ImageRoot] = {}

    def run(
        self, job: Job, *, cancel_fd: int | None = None, on_started: Callable[[], None] | None = None,
        on_output: Callable[[str, int, bytes], None] | None = None, trace: list[dict[str, Any]] | None = None,
        collect_room: int | None = None,
    ) -> Result:
        """Run one job. ``cancel_fd`` readable = cancel; ``on_started`` is called when the
        job has been handed to its sandbox, which starts the program (the worker's
        "started" event).
        With ``trace`` (a list), every syscall is allowed and the ones seen are appended to
        it (``sandbox profile trace``; trusted programs only). ``on_output(stream, offset,
        data)`` gets the output as it comes (``supervise``). ``collect_room``: the most
        bytes the result may hold in all (its output and the files the job collects,
        which are refused past it): a worker's frame.

        The finished sandbox is cleaned up later (``sandboxes.step`` or ``tidy``), so
        the caller can send the result first."""
        if job.interpreter is not None:
            if trace is not None:
                raise JobError("the interpreter mode is not traced", field="interpreter")
            return self._interpreters().run(job, cancel_fd=cancel_fd, on_started=on_started, on_output=on_output)
        return as_result(lambda: self._run(job, cancel_fd, on_started, on_output, trace, collect_room))

    def run_group(
        self, jobs: Sequence[Job], pipes: Sequence[Pipe] = (), *, cancel_fd: int | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> list[Result]:
        """Run ``jobs`` at once, each in a sandbox of its own, wired by ``pipes``; their
        Results in member order, each with its own status and usage (one member's limit
        kill ends only that member: its peers see EOF or SIGPIPE, as with any pipe). A
        piped stream is not captured: that member's Result has it empty. ``cancel_fd``
        readable cancels every member; ``on_started`` is called once all are handed to
        their sandboxes. Raises JobError for a malformed group (``Group``)."""
        group = Group(list(jobs), list(pipes))
        try:
            return self._run_group(group, cancel_fd, on_started)
        except JobError:
            raise
        except (SandboxError, OSError) as exc:
            error = str(exc) if isinstance(exc, SandboxError) else f"{type(exc).__name__}: {exc}"
            return [Result(Status.INTERNAL_ERROR, error=error) for _ in group.jobs]

    def _interpreters(self) -> Interpreters:
        """The interpreter mode's templates, made for the first job that asks for it (the
        module only then: the command line's cold path never loads it)."""
        with self._supply_lock:
            if self._interpreter_templates is None:
                from sandbox.interpreter import Interpreters

                self._interpreter_templates = Interpreters(self)
            return self._interpreter_templates

    def close_interpreters(self) -> None:
        """End the interpreter mode's templates (the next interpreter job starts anew)."""
        if self._interpreter_templates is not None:
            self._interpreter_templates.close()

    def tidy(self) -> None:
        """Finish the cleanup of jobs that already have their result."""
        with self._supply_lock:
            self.sandboxes.finish()

    # The supply's idle work, for a caller that runs it beside jobs on other threads (the
    # worker's launcher): each call takes the supply lock, as a job's take and start do.

    def prepare_step(self) -> bool:
        """One small step of the supply's background work (``SandboxSupply.step``); False
        when there is none to do now: sleep on ``waitables`` then."""
        with self._supply_lock:
            return self.sandboxes.step()

    def waitables(self) -> list[int]:
        """Fds that turn readable when ``prepare_step`` has work to do."""
        with self._supply_lock:
            return self.sandboxes.waitables()

    def offer(self) -> tuple[Sandbox, WarmKind] | None:
        """A ready warm sandbox for the worker to hand a job to itself (``SandboxSupply.offer``)."""
        with self._supply_lock:
            return self.sandboxes.offer()

    def take_cgroup(self, cpu_quota: bool) -> JobCgroup:
        """A job cgroup for a job in no sandbox of the supply's (``SandboxSupply.take_cgroup``)."""
        with self._supply_lock:
            return self.sandboxes.take_cgroup(cpu_quota)

    def discard_cgroup(self, cgroup: JobCgroup) -> None:
        """Give back a ``take_cgroup`` cgroup once its job is over (``SandboxSupply.discard_cgroup``)."""
        with self._supply_lock:
            self.sandboxes.discard_cgroup(cgroup)

    def lend(self, init_pid: int) -> None:
        """The worker handed a job to that offered sandbox (``SandboxSupply.lend``)."""
        with self._supply_lock:
            self.sandboxes.lend(init_pid)

    def take_offered(self, init_pid: int) -> Sandbox | None:
        """The offered or lent sandbox of that init pid (``SandboxSupply.take_offered``)."""
        with self._supply_lock:
            return self.sandboxes.take_offered(init_pid)

    def take_sandbox(self, image: ImageRoot | None, profile: str, limits: Limits, *, image_name: str) -> Sandbox:
        """A sandbox of the supply's for a caller that keeps it past one job (a session:
        ``sandbox/session.py``); it gives it back with ``retire``."""
        with self._supply_lock:
            sandbox = self.sandboxes.take(image, profile, limits, image_name=image_name, trace=False)
            if sandbox.cgroup is not None and not sandbox.accounting:
                sandbox.cgroup.start_accounting()
            return sandbox

    def open_as_job(self, sandbox: Sandbox, paths: list[str]) -> list[int]:
        """``paths`` opened for writing by the zygote that made ``sandbox``, as the id its
        program runs as (``Zygote.open_as``); by this process when it has none."""
        if not sandbox.job_id or sandbox.zygote is None:
            return [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in paths]
        with self._supply_lock:
            return sandbox.zygote.open_as(sandbox.job_id, paths)

    def release_lease(self, lease: Any) -> None:
        """Release an image lease (``images.runtime.LeasedImage``) a caller took, under
        the supply's lock, as leases are taken."""
        with self._supply_lock:
            lease.release()

    def retire(self, sandbox: Sandbox) -> None:
        """Kill the sandbox and clean it up later (``SandboxSupply.retire``)."""
        with self._supply_lock:
            self.sandboxes.retire(sandbox)

    def close(self) -> None:
        """End the interpreter templates, discard the warm sandboxes, finish pending
        cleanup, stop the zygote."""
        self.close_interpreters()
        with self._supply_lock:
            self.sandboxes.close()

    def _run(
        self, job: Job, cancel_fd: int | None, on_started: Callable[[], None] | None,
        on_output: Callable[[str, int, bytes], None] | None, trace: list[dict[str, Any]] | None,
        collect_room: int | None,
    ) -> Result:
        with ExitStack() as cleanup:
            fds: list[int] = []
            cleanup.callback(close_quietly, fds)
            with self._supply_lock:
                member = self._take(job, cleanup, trace is not None)
                if member.failed is not None:
                    return member.failed
                output = self._start(member, fds, _Stdio())
            return self._watch(
                member, output, cancel_fd=cancel_fd, on_started=on_started, on_output=on_output, trace=trace,
                collect_room=collect_room,
            )
        raise AssertionError("unreachable")  # pragma: no cover - the with block returns

    def _run_group(
        self, group: Group, cancel_fd: int | None, on_started: Callable[[], None] | None,
    ) -> list[Result]:
        """Take every member's sandbox and start every job here, in the calling thread
        (the supply is not thread-safe), then supervise the members at once, a thread
        each: ``supervise`` keeps its state in its own locals and the sandbox it is
        given, installs no signal handler and reaps only its own init."""
        with ExitStack() as cleanup:
            fds: list[int] = []
            cleanup.callback(close_quietly, fds)
            with self._supply_lock:
                members = [self._take(job, cleanup, False) for job in group.jobs]
                stdio = [_Stdio() for _ in members]
                pipe_ends: list[int] = []
                for pipe in group.pipes:
                    read_end, write_end = pipe_pair(pipe_ends)
                    stdio[pipe.target[0]].stdin = read_end
                    setattr(stdio[pipe.source[0]], pipe.source[1], write_end)
                fds.extend(pipe_ends)
                try:
                    outputs = [None if m.failed else self._start(m, fds, streams) for m, streams in zip(
                        members, stdio, strict=True)]
                except BaseException:  # (a member refused: the group never runs)
                    for member in members:
                        _end_layers(member, merge=False)
                    raise
                # The sandboxes hold their own copies now. Ours must go, or a member would
                # never see EOF on a pipe whose writer is gone: we would still hold it open.
                for fd in pipe_ends:
                    fds.remove(fd)
                    os.close(fd)
            if on_started is not None:
                on_started()
            results: list[Result | None] = [m.failed for m in members]

            def watch(index: int, output: tuple[int, int]) -> None:
                try:
                    results[index] = self._watch(members[index], output, cancel_fd=cancel_fd)
                except (SandboxError, OSError) as exc:
                    results[index] = Result(Status.INTERNAL_ERROR, error=f"{type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=watch, args=(index, output), name=f"sandbox-group-{index}")
                       for index, output in enumerate(outputs) if output is not None]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return [result or Result(Status.INTERNAL_ERROR, error="not supervised") for result in results]
        raise AssertionError("unreachable")  # pragma: no cover - the with block returns

    def standing_warnings(self) -> tuple[list[str], list[str]]:
        """What every job's Result says of this host (new lists): its warnings, and the
        limits not enforced. The worker's own supervision says the same (an offer
        carries them: worker/handover.py)."""
        warnings: list[str] = []
        not_enforced: list[str] = []
        if self.backend is None:
            not_enforced.extend(CGROUP_LIMITS)
            warnings.append(
                f"no delegated cgroup ({self.cgroup_problem}); memory is capped by an address-space "
                "rlimit, pids by RLIMIT_NPROC, CPU time per process only"
            )
        if self.id_plan.problem is not None:
            warnings.append(f"the job ran as this user, as every job of it does ({self.id_plan.problem})")
        return warnings, not_enforced

    def _take(self, job: Job, cleanup: ExitStack, trace: bool) -> _Member:
        """The job's sandbox, taken from the supply, its limits applied; ``failed`` when
        the sandbox did not start. Retired when ``cleanup`` closes. The caller holds
        ``_supply_lock``."""
        profile = self.profiles.get(job.profile)
        limits = job.limits.over(profile.limits)
        if self.backend is None and job.require_cgroups:
            raise CgroupError(f"cgroups required but unavailable: {self.cgroup_problem}")
        warnings, not_enforced = self.standing_warnings()
        egress = _wants_egress(job, profile.profile.network)
        sandbox, command = self._take_built(job, cleanup, profile.env, limits, trace, egress)
        member = _Member(job, sandbox, limits, warnings, not_enforced, command)
        prepared, cgroup = sandbox.prepared, sandbox.cgroup
        if prepared.init_pid <= 0:
            message = next((m["message"] for m in prepared.early if m["kind"] == "setup_error"), None)
            member.failed = Result(Status.INTERNAL_ERROR, error=message or "sandbox did not start", warnings=warnings)
            return member
        if egress:  # (stopped before the sandbox is retired: the callbacks run last first)
            # Imported for egress jobs only: the command line's cold path loads no subprocess.
            from sandbox.egress import start as start_egress

            cleanup.callback(start_egress(prepared.init_pid, job.allow_net).stop)
        if cgroup is not None:
            cgroup.apply_limits(limits)
            if not sandbox.accounting:
                cgroup.start_accounting()
        member.rlimits = rlimits(limits, cgroup is not None, warnings)
        return member

    def _take_built(
        self, job: Job, cleanup: ExitStack, profile_env: dict[str, str], limits: Limits, trace: bool, egress: bool,
    ) -> tuple[Sandbox, tuple[list[str], dict[str, str], str]]:
        """A sandbox from the supply for ``job``, retired when ``cleanup`` closes, and the
        job's argv, env and cwd. A job on an image no warm kind is kept for orders its
        sandbox from the root its image name and cwd last leased, and leases the image
        while the spawner clones (``meanwhile``): the lease's lookup would otherwise come
        first. A name that now leases another root (pulled again, removed) retires that
        sandbox and takes one of what it leased."""

        def take(image: ImageRoot | None, meanwhile: Callable[[], None] | None = None) -> Sandbox:
            return self.sandboxes.take(image, job.profile, limits, image_name=job.image, trace=trace,
                                       trees=bool(job.mounts), egress=egress, meanwhile=meanwhile)

        key = (job.image, job.cwd)
        guess = None
        if job.image != "host" and not any(spec.image == job.image for spec in self.sandboxes.warm):
            guess = self._last_roots.get(key)
        if guess is None:
            argv, env, cwd, image_root = _image_for(job, cleanup, profile_env, self._supply_lock)
            sandbox = take(image_root)
        else:
            leased: list[tuple[list[str], dict[str, str], str, ImageRoot | None]] = []
            sandbox = take(guess, meanwhile=lambda: leased.append(
                _image_for(job, cleanup, profile_env, self._supply_lock)))
            argv, env, cwd, image_root = leased[0]
            if image_root != guess:
                self.sandboxes.retire(sandbox)  # (the caller holds the supply lock)
                sandbox = take(image_root)
        cleanup.callback(self.retire, sandbox)
        if image_root is not None:
            if len(self._last_roots) >= MAX_LAST_ROOTS and key not in self._last_roots:
                del self._last_roots[next(iter(self._last_roots))]
            self._last_roots[key] = image_root
        return sandbox, (argv, env, cwd)

    def _start(self, member: _Member, fds: list[int], stdio: _Stdio) -> tuple[int, int]:
        """Hand the job to its sandbox; the read ends of its stdout and stderr. A stream
        ``stdio`` wires elsewhere (a group's pipe) is not ours to read: its read end here
        is at EOF from the start."""
        argv, env, cwd = member.command
        job = member.job
        stdout_r, stdout_w = pipe_pair(fds)
        stderr_r, stderr_w = pipe_pair(fds)
        stdin = job_stdin(job.stdin, fds) if stdio.stdin is None else stdio.stdin
        files = [(f.dest, open_blob(f.content, fds), f.mode) for f in job.files]
        try:  # (a job that never runs leaves its volumes as they were)
            mounts = [(entry.path, _mount_source(member.sandbox, entry, index, fds, member.layers),
                       bool(entry.writable)) for index, entry in enumerate(job.mounts)]
            stdout = stdout_w if stdio.stdout is None else stdio.stdout
            stderr = stderr_w if stdio.stderr is None else stdio.stderr
            spec = job_spec(argv, env, cwd, member.limits, (stdin, stdout, stderr), member.rlimits, files,
                            job.collect, mounts)
            try:
                start_job(member.sandbox.prepared.job_channel, spec)
                prepare.step_aside()
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:  # the sandbox would wait for it until set-up timed out
                    raise JobError(
                        "the command, its environment and the file names are too long for one job message",
                        field="cmd",
                    ) from None
                # else the sandbox died while waiting; supervise collects why
        except BaseException:
            _end_layers(member, merge=False)
            raise
        for fd in (stdout_w, stderr_w):
            fds.remove(fd)
            os.close(fd)
        return stdout_r, stderr_r

    def _watch(
        self, member: _Member, output: tuple[int, int], *, cancel_fd: int | None,
        on_started: Callable[[], None] | None = None, on_output: Callable[[str, int, bytes], None] | None = None,
        trace: list[dict[str, Any]] | None = None, collect_room: int | None = None,
    ) -> Result:
        """Supervise a started job to its end and draw its Result. Touches only this
        member's sandbox and cgroup: safe to run for several members at once."""
        limits, prepared, cgroup = member.limits, member.sandbox.prepared, member.sandbox.cgroup
        watch = Watch(
            limits=limits,
            cpus=self.parallelism,
            cgroup=cgroup,
            collecting=bool(member.job.collect),
        )
        try:
            outcome = supervise(
                prepared, *output, output_limit=limits.output_bytes, watch=watch, cancel_fd=cancel_fd,
                on_started=on_started, on_output=on_output,
            )
            if trace is not None:
                trace.extend(outcome.traced)
            job = member.job
            collected = (collect_after(member.sandbox.prepared.job_channel, job.collect, outcome, collect_room)
                         if job.collect else Collected())
            # (after collecting: the init killed what was left of the job)
            usage = usage_of(outcome, None if cgroup is None else cgroup.usage())
        finally:
            if member.layers:  # the job is over, whatever ended it: its volumes get what it left
                with self._supply_lock:
                    _end_layers(member, merge=True)
        return result_of(outcome, usage, limits, collected, member.warnings, member.not_enforced)


def as_result(run: Callable[[], Result]) -> Result:
    """``run()``'s Result, or an internal_error Result for a fault of the sandbox's; a
    JobError - the job's own - is raised."""
    try:
        return run()
    except JobError:
        raise
    except SandboxError as exc:
        return Result(Status.INTERNAL_ERROR, error=str(exc))
    except OSError as exc:
        return Result(Status.INTERNAL_ERROR, error=f"{type(exc).__name__}: {exc}")


@dataclass
class _Member:
    """A job and the sandbox taken for it: what starting and supervising it need."""

    job: Job
    sandbox: Sandbox
    limits: Limits
    warnings: list[str]
    not_enforced: list[str]
    command: tuple[list[str], dict[str, str], str]  # argv, env, cwd
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)
    failed: Result | None = None  # the sandbox did not start
    layers: list[int] = field(default_factory=list)  # its volumes' layers, by the zygote's numbers


@dataclass
class _Stdio:
    """A group member's streams wired to pipes (the write or read end); None: the usual."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


def _image_for(
    job: Job, cleanup: ExitStack, profile_env: dict[str, str], lock: threading.Lock,
) -> tuple[list[str], dict[str, str], str, ImageRoot | None]:
    """argv, env (over the profile's) cwd and the layer stack for the job; the lease ends
    with the job (released under ``lock``, as it was taken)."""
    if job.image == "host":
        return (*host_command(job, profile_env), None)
    # The image store's code, only for a job on an image (most of ``sandbox run``'s are not).
    leased = lease_image_root(job.image)
    cleanup.callback(_locked, lock, leased.lease.release)
    argv, env, cwd = command_of(job, profile_env, leased.lease)
    return argv, env, cwd, ImageRoot(leased.root.layers, cwd)


@dataclass
class LeasedRoot:
    """A stored image leased for longer than one job (a session's, an interpreter
    template's), and its layers as a sandbox's root."""

    lease: Any  # sandbox.images.runtime.LeasedImage (imported only for an image)
    root: ImageRoot


def lease_image_root(name: str) -> LeasedRoot:
    """Lease a stored image; one that is not there is the job's error. The caller gives
    the lease back (``Runner.release_lease``)."""
    from sandbox.images.errors import BadReference, ImageNotFound
    from sandbox.images.runtime import lease_image

    try:
        lease = lease_image(name)
    except (ImageNotFound, BadReference) as exc:
        raise JobError(str(exc), field="image") from exc
    return LeasedRoot(lease, ImageRoot(lease.layer_dirs, lease.workdir() or WORKDIR))


def command_of(job: Job, profile_env: dict[str, str], lease: Any | None) -> tuple[list[str], dict[str, str], str]:
    """argv, env (over the profile's) and cwd of ``job`` on the host image (``lease``
    None) or on a leased stored image (``images.runtime.image_command``)."""
    if lease is None:
        return host_command(job, profile_env)
    from sandbox.images.runtime import image_command

    return image_command(job, lease.config, profile_env)


def _wants_egress(job: Job, profile_network: str) -> bool:
    """Whether the job gets egress: asked for, or its profile's mode. Asking takes a
    profile whose filter allows inet sockets; ranges to allow take egress."""
    if job.network == "egress" and profile_network not in INET_MODES:
        raise JobError(f"profile {job.profile} has network {profile_network!r} (no inet sockets): egress needs "
                       "a profile with network loopback or egress", field="network")
    egress = job.network == "egress" or profile_network == "egress"
    if job.allow_net and not egress:
        raise JobError("allowed ranges are for an egress job: ask for network egress too", field="allow_net")
    return egress


def _locked(lock: threading.Lock, action: Callable[[], None]) -> None:
    with lock:
        action()


def pipe_pair(fds: list[int]) -> tuple[int, int]:
    """A pipe (read end, write end), both recorded in ``fds`` to be closed."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    fds.extend((read_end, write_end))
    return read_end, write_end


def _mount_source(sandbox: Sandbox, entry: Mount, index: int, fds: list[int], layers: list[int]) -> int:
    """The fd a sandbox init mounts a tree, bind or volume from: a detached clone of its
    directory, made by the zygote that made the sandbox (a clone works only in its own
    template user namespace). A tree id is known only to the worker that caches it,
    whose launcher gives its directory instead. A volume is first held for the job
    (``volumes.lock``, the fd kept with the job's until its sandbox is gone); a
    read-write one is given to the job's id and mounted as a layer of the job's own,
    capped, merged into it when the job is over (``volume_layer.py``; its number is
    added to ``layers``)."""
    where = f"mounts.{index}"
    if entry.tree_id is not None:
        raise JobError(f"{entry.tree_id}: a cached tree is mounted through the worker that holds it",
                       field=f"{where}.tree_id")
    if sandbox.zygote is None:
        raise SetupError("the sandbox has no zygote to clone a tree in")
    try:
        if entry.host_dir is not None:
            fd = sandbox.zygote.clone_tree(entry.host_dir)
        elif entry.bind is not None:
            fd = sandbox.zygote.clone_bind(entry.bind)
        else:
            assert entry.volume is not None  # (Mount.check_source: exactly one source)
            from sandbox import volumes  # (only for a job that mounts one: not on the command line's cold path)

            root = volumes.volumes_root()
            volumes.prepare_root(root)
            fds.append(volumes.lock(root, entry.volume, bool(entry.writable)))
            if entry.writable:  # the job's own files, in a layer of its own
                assert isinstance(entry.size, int)  # (Mount.check_source settled it)
                fd, layer = sandbox.zygote.volume_layer(str(root), entry.volume, sandbox.job_id or SANDBOX_UID,
                                                        entry.size)
                layers.append(layer)
            else:  # shared by its read-only users: nobody's to give; as its last writer left it
                fd = sandbox.zygote.clone_volume(str(root), entry.volume, None)
    except JobError as exc:
        raise type(exc)(exc.message, field=exc.field or f"{where}.{'bind' if entry.bind else 'volume'}") from None
    fds.append(fd)
    return fd


def _end_layers(member: _Member, *, merge: bool) -> None:
    """Merge (or drop) the job's volume layers, once every process of the job is gone:
    its init is killed and waited for (pid 1 of the job's pid namespace exits only
    after every other process there), so nothing writes to a layer being merged. The
    caller holds the supply lock (the zygote's channel)."""
    layers, member.layers = member.layers, []
    zygote = member.sandbox.zygote
    if not layers or zygote is None:
        return
    pid = member.sandbox.prepared.init_pid
    try:
        exited = os.pidfd_open(pid) if pid > 0 else -1
    except ProcessLookupError:
        exited = -1  # reaped already (a kill's wait): gone with everything of the job
    if exited >= 0:
        try:
            signal.pidfd_send_signal(exited, signal.SIGKILL)
            wait_readable([exited])
        finally:
            os.close(exited)
    for layer in layers:
        zygote.end_volume_layer(layer, merge=merge)


def close_quietly(fds: list[int]) -> None:
    """Close each of ``fds``, whichever are already closed (a clean-up's last word)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
