"""The interpreter mode: Python snippets by the thousand (an evaluation harness's), each
in a sandbox of its own, forked from a python3 that waits with its imports done.

A job opts in with ``Job.interpreter`` (the modules to import ahead). Its command is
``python3 FILE ARGS`` or ``python3 -c CODE ARGS``. The first such job of a kind (image,
profile, modules) starts a template: a sandbox from the runner's supply whose program is
``interpreter_server.py`` on the image's python3, with a seccomp filter that also lets
it make sandboxes (``ProfileCache``'s interpreter variant of the profile). Each snippet
is a clone of the template into new user, pid, mount, network, IPC and UTS namespaces,
which sets itself up as the C init and program stage set up a job - a scratch and /proc
of its own, lo, its own cgroup (made here, joined by fds sent with the request), its
input files, rlimits and stdio, no capabilities, the profile's own filter over the
template's - and then runs the code. What snippets share is the template's: the read-only
root, the interpreter's memory as it was at the fork (copy-on-write), and the job id
the template runs as (docs/architecture.md, "Interpreter mode").

The supervisor's side is the job's: the snippet's cgroup holds its limits and usage,
``supervise`` reads its output and the report pipe the template and the snippet write
in the C init's words, and a kill is a SIGKILL to the snippet's pidfd (pid 1 of its pid
namespace: the rest of it goes too).
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import threading
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.cgroups import JobCgroup
from sandbox.collect import Collected
from sandbox.errors import CgroupError, JobError, SetupError
from sandbox.job_message import job_spec, job_stdin, open_blob, rlimits, start_job
from sandbox.models import Blob, Job, Limits, Result, Status, runs_python
from sandbox.outcome import MessageReader
from sandbox.prepare import Prepared
from sandbox.profile_cache import SNIPPET_VARIANT, TEMPLATE_VARIANT
from sandbox.runner import (
    Runner,
    as_result,
    close_quietly,
    command_of,
    lease_image_root,
    pipe_pair,
)
from sandbox.supervise import Watch, supervise
from sandbox.verdict import result_of, usage_of

# Where the template's own files go: its scratch, which no snippet sees.
HOME = "/tmp/.interpreter"
_PACKAGE = Path(__file__).resolve().parent
# The template's code: the server and the one module of the package it imports.
_TEMPLATE_SOURCES = {
    "sandbox/__init__.py": None,  # (an empty package: the real one imports the engine)
    "sandbox/linux/__init__.py": _PACKAGE / "linux" / "__init__.py",
    "sandbox/linux/syscalls.py": _PACKAGE / "linux" / "syscalls.py",
    "sandbox/interpreter_server.py": _PACKAGE / "interpreter_server.py",
}
_BOOTSTRAP = f"import sys; sys.path.insert(0, {HOME!r}); from sandbox.interpreter_server import main; main()"
# The template itself: its interpreter and imports, and the snippets while they clone
# (a clone is charged to the template's cgroup until it joins its own).
TEMPLATE_LIMITS = Limits(cpu_time="none", memory="2G", pids=1024, open_files=1 << 16, disk="16M")
READY_TIMEOUT_S = 120.0  # the imports a template is asked for may be slow (a scientific stack)
ANSWER_TIMEOUT_S = 30.0  # a template that does not clone in this long is taken for dead
MAX_TEMPLATES = 4  # per runner: a kind's template beyond this ends the least recently used
# A request's fds are one message's (SCM_RIGHTS carries 253 at most): the channel, the
# report pipe, stdio, a tasks file per v1 hierarchy (four at most), and the input files.
MAX_SNIPPET_FILES = 253 - 5 - 4


@dataclass(frozen=True)
class _Kind:
    image: str
    profile: str
    preload: tuple[str, ...]


# How long a snippet whose template stopped answering waits to see the template gone.
HANG_UP_WAIT_S = 5.0


class TemplateGone(SetupError):
    """The template's sandbox ended (or never said it was ready) before a job started."""


class Interpreters:
    """A runner's templates, one per kind, started for the first job that needs one."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._templates: OrderedDict[_Kind, _Template] = OrderedDict()
        self._lock = threading.Lock()

    def run(
        self, job: Job, *, cancel_fd: int | None = None, on_started: Any = None, on_output: Any = None,
    ) -> Result:
        """Run a snippet job (``Job.interpreter`` set) and return its Result; raises
        JobError for a job the mode cannot run, as ``Runner.run`` does."""
        return as_result(lambda: self._run(job, cancel_fd, on_started, on_output))

    def _run(self, job: Job, cancel_fd: int | None, on_started: Any, on_output: Any) -> Result:
        """On the kind's template; one that turns out to be gone before the job started
        (it ended since its last job: an OOM kill, a crash) is replaced, once."""
        assert job.interpreter is not None
        kind = _Kind(job.image, job.profile, tuple(job.interpreter))
        for attempt in range(2):
            template = self._template(kind)
            try:
                return template.run(job, cancel_fd, on_started, on_output)
            except TemplateGone:
                self._forget(kind, template)
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _template(self, kind: _Kind) -> _Template:
        with self._lock:
            template = self._templates.get(kind)
            if template is not None and template.alive:
                self._templates.move_to_end(kind)
                return template
            if template is not None:
                del self._templates[kind]
                template.close()
            while len(self._templates) >= MAX_TEMPLATES:
                _, oldest = self._templates.popitem(last=False)
                oldest.close()
            template = _Template(self._runner, kind)
            self._templates[kind] = template
            return template

    def _forget(self, kind: _Kind, template: _Template) -> None:
        with self._lock:
            if self._templates.get(kind) is template:
                del self._templates[kind]
        template.close()

    def close(self) -> None:
        with self._lock:
            for template in self._templates.values():
                template.close()
            self._templates.clear()


class _Template:
    """One template sandbox: its control socket and what it runs on."""

    def __init__(self, runner: Runner, kind: _Kind) -> None:
        if runner.backend is None:
            raise CgroupError(f"the interpreter mode needs a delegated cgroup: {runner.cgroup_problem}")
        self._runner = runner
        self.kind = kind
        self.profile = runner.profiles.get(kind.profile)
        if self.profile.exec_once:
            raise JobError(f"profile {kind.profile} allows one exec only: the interpreter mode runs no exec",
                           field="profile")
        self.alive = True
        self._send_lock = threading.Lock()
        self._image = lease_image_root(kind.image) if kind.image != "host" else None
        self._sandbox: Any = None
        self.control: socket.socket | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        runner, kind = self._runner, self.kind
        disk = self.profile.kind_limits.disk_bytes  # a job that gives none: the spares' scratch
        template_job = Job(cmd=["python3", "-I", "-c", _BOOTSTRAP, str(disk), *kind.preload], image=kind.image,
                           profile=kind.profile, cwd="/")
        argv, env, cwd = command_of(template_job, self.profile.env, None if self._image is None else self._image.lease)
        self._sandbox = runner.take_sandbox(None if self._image is None else self._image.root,
                                            kind.profile + TEMPLATE_VARIANT, TEMPLATE_LIMITS, image_name=kind.image)
        prepared, cgroup = self._sandbox.prepared, self._sandbox.cgroup
        if prepared.init_pid <= 0:
            message = next((m["message"] for m in prepared.early if m["kind"] == "setup_error"), None)
            raise SetupError(message or "the interpreter's sandbox did not start")
        if cgroup is not None:
            cgroup.apply_limits(TEMPLATE_LIMITS)
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        fds: list[int] = [theirs.detach()]
        try:
            null = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
            fds.append(null)
            files = [(f"{HOME}/{name}", open_blob(Blob(data=b"" if source is None else source.read_bytes()), fds),
                      0o644) for name, source in _TEMPLATE_SOURCES.items()]
            snippets = runner.profiles.get(kind.profile + SNIPPET_VARIANT)
            files.append((f"{HOME}/filter.bpf", open_blob(Blob(data=snippets.bpf), fds), 0o644))
            spec = job_spec(argv, env, cwd, TEMPLATE_LIMITS, (fds[0], null, null),
                            rlimits(TEMPLATE_LIMITS, cgroup is not None, []), files)
            start_job(prepared.job_channel, spec)
        finally:
            close_quietly(fds)
        answer = self._answer(self.control, READY_TIMEOUT_S, "ready")
        if answer.get("kind") == "error":
            raise JobError(f"the interpreter could not import its modules: {answer.get('message')}",
                           field="interpreter")
        if answer.get("kind") != "ready":
            raise TemplateGone(f"the interpreter answered {answer!r}")

    def _answer(self, channel: socket.socket, timeout_s: float, what: str) -> dict[str, Any]:
        ready, _, _ = select.select([channel], [], [], timeout_s)
        data = channel.recv(1 << 16) if ready else b""
        if not data:
            self.alive = False
            raise TemplateGone(f"the interpreter's sandbox ended before {what}" if ready
                               else f"the interpreter did not say {what} in {timeout_s:g} s")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def run(self, job: Job, cancel_fd: int | None, on_started: Any, on_output: Any) -> Result:
        """One snippet: its cgroup and pipes made here, its sandbox cloned by the
        template, then supervised as a job is."""
        _check_snippet(job)
        runner = self._runner
        assert runner.backend is not None and self.control is not None
        limits = job.limits.over(self.profile.limits)
        warnings: list[str] = []
        if runner.id_plan.problem is not None:
            warnings.append(f"the job ran as this user, as every job of it does ({runner.id_plan.problem})")
        argv, env, cwd = command_of(job, self.profile.env, None if self._image is None else self._image.lease)
        with ExitStack() as cleanup:
            fds: list[int] = []
            cleanup.callback(close_quietly, fds)
            cgroup = runner.take_cgroup(cpu_quota=limits.cpus is not None)
            cleanup.callback(runner.discard_cgroup, cgroup)
            cgroup.apply_limits(limits)
            cgroup.start_accounting()
            stdout_r, stdout_w = pipe_pair(fds)
            stderr_r, stderr_w = pipe_pair(fds)
            report_r, report_w = pipe_pair(fds)
            channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            cleanup.callback(channel.close)
            channel_end = theirs.detach()
            fds.append(channel_end)
            joins = _join_fds(runner, self._sandbox, cgroup, fds)
            files = [open_blob(f.content, fds) for f in job.files]
            request = {
                "argv": argv, "env": env, "cwd": cwd, "disk": limits.disk_bytes, "joins": len(joins),
                "files": [[f.dest, f.mode] for f in job.files], "rlimits": rlimits(limits, True, warnings),
            }
            passed = [channel_end, report_w, job_stdin(job.stdin, fds), stdout_w, stderr_w, *joins, *files]
            try:
                with self._send_lock:
                    socket.send_fds(self.control, [json.dumps(request).encode()], passed)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    raise JobError("the command, its environment and the file names are too long for one job "
                                   "message", field="cmd") from None
                self.alive = False
                raise TemplateGone(f"the interpreter's sandbox is gone ({exc.strerror})") from None
            for fd in (channel_end, stdout_w, stderr_w, report_w):  # the template's now: EOF when it ends
                fds.remove(fd)
                os.close(fd)
            pidfd, refusal = self._snippet_pidfd(channel)
            if pidfd is None:
                return Result(Status.INTERNAL_ERROR, error=refusal, warnings=warnings)
            fds.append(pidfd)
            snippet = Prepared(init_pid=_host_pid(pidfd), report_fd=report_r, job_channel=channel,
                               reader=MessageReader(report_r), early=[])
            watch = Watch(
                limits=limits,
                cpus=runner.parallelism,
                cgroup=cgroup,
                kill=lambda: _kill(pidfd),
                reaps=False,  # the template reaps it, and says so on the report pipe
            )
            outcome = supervise(snippet, stdout_r, stderr_r, output_limit=limits.output_bytes, watch=watch,
                                cancel_fd=cancel_fd, on_started=on_started, on_output=on_output)
            if outcome.exited is None and outcome.kill_reason is None and self._hung_up(HANG_UP_WAIT_S):
                outcome.setup_error = outcome.setup_error or "the interpreter's sandbox ended during the job"
            usage = usage_of(outcome, None if cgroup is None else cgroup.usage())
            return result_of(outcome, usage, limits, Collected(), warnings, [])
        raise AssertionError("unreachable")  # pragma: no cover - the with block returns

    def _hung_up(self, wait_s: float) -> bool:
        """Whether the template is gone (its end of the control socket closed, which
        may take up to ``wait_s`` to show: a process that is killed closes its files one
        by one, and the snippet's report pipe may go before the control socket); it is
        then no longer used."""
        if self.control is not None and self.alive:
            poller = select.poll()
            poller.register(self.control, 0)  # a hang-up is reported whatever the mask
            if any(event & select.POLLHUP for _, event in poller.poll(round(wait_s * 1000))):
                self.alive = False
        return not self.alive

    def _snippet_pidfd(self, channel: socket.socket) -> tuple[int | None, str]:
        """The template's answer to a request: the snippet's pidfd, or None and why it
        could not clone one."""
        ready, _, _ = select.select([channel], [], [], ANSWER_TIMEOUT_S)
        if not ready:
            self.alive = False
            raise TemplateGone(f"the interpreter did not start a snippet in {ANSWER_TIMEOUT_S:g} s")
        data, fds, _, _ = socket.recv_fds(channel, 1 << 16, 1)
        if not data:
            self.alive = False
            raise TemplateGone("the interpreter's sandbox ended")
        if fds:
            return fds[0], ""
        return None, str(json.loads(data).get("message", "the interpreter could not start the snippet"))

    def close(self) -> None:
        """End the template (and any snippet still running: they are in its pid
        namespace). Idempotent."""
        self.alive = False
        if self.control is not None:
            self.control.close()
            self.control = None
        if self._sandbox is not None:
            self._runner.retire(self._sandbox)
            self._sandbox = None
        if self._image is not None:
            self._runner.release_lease(self._image.lease)
            self._image = None


def _check_snippet(job: Job) -> None:
    """What the interpreter mode runs: python3 on a file or on -c code, in a sandbox with
    no mounts, no collected files and no egress (each would need the C init's work)."""
    cmd = job.cmd
    if len(cmd) < 2 or not runs_python(cmd) or (cmd[1] == "-c" and len(cmd) < 3):
        raise JobError("the interpreter mode runs 'python3 FILE [ARG...]' or 'python3 -c CODE [ARG...]'", field="cmd")
    if cmd[1].startswith("-") and cmd[1] != "-c":
        raise JobError(f"the interpreter mode takes no python3 option but -c (got {cmd[1]})", field="cmd")
    for name, given in (("mounts", job.mounts), ("collect", job.collect), ("network", job.network)):
        if given:
            raise JobError(f"the interpreter mode has no {name}", field=name)
    if len(job.files) > MAX_SNIPPET_FILES:
        raise JobError(f"the interpreter mode takes at most {MAX_SNIPPET_FILES} input files", field="files")


def _join_fds(runner: Runner, template: Any, cgroup: JobCgroup, fds: list[int]) -> list[int]:
    """What the snippet writes "0" into to join its cgroup. The kernel checks the move
    with the credentials of the file's opener: on v2 (the directory's cgroup.procs) they
    must be allowed to write the delegated subtree - this process's; on v1 (each
    hierarchy's tasks file) they must be the moved process's own user - the template's
    job id, as which its zygote opens them."""
    if cgroup.JOIN == "directory":
        opened = [os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=fd) for fd in cgroup.attach_fds]
    else:
        opened = runner.open_as_job(template, cgroup.attach_paths)
    fds.extend(opened)
    return opened


def _host_pid(pidfd: int) -> int:
    """The snippet's pid as this process sees it, for what names it; nothing signals or
    waits for it by pid (signals go to the pidfd, the template reaps it). A snippet that
    has already ended and been reaped has none (its pidfd says -1): 1 stands for it."""
    with open(f"/proc/self/fdinfo/{pidfd}") as info:
        for line in info:
            if line.startswith("Pid:"):
                return max(int(line.split()[1]), 1)
    return 1


def _kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
