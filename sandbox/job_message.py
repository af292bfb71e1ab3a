"""The message that hands a job to a prepared sandbox: what the sandbox's init is told to
run, and the fds it gets - built the same way by the runner and by the worker's direct
hand-over (worker/handover.py), which must say exactly the same. Light on purpose: the
worker's trio process imports it, and it loads nothing that starts sandboxes.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import math
import os
import resource
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from sandbox.errors import JobError
from sandbox.models import WORKDIR, Blob, Collect, Job, Limits

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# A memfd that nobody can change any more: what a sandbox is handed to read (its filter,
# a job's stdin) must stay what was checked and sent.
SEALED = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


@dataclass
class JobSpec:
    """What only the job says. The fds are the supervisor's; start_job sends copies."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    disk_bytes: int
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    input_files: list[tuple[str, int, int]] = field(default_factory=list)  # dest, fd, mode
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)  # resource, soft, hard
    collect: list[Collect] = field(default_factory=list)  # what the init opens for the supervisor at the end
    mounts: list[tuple[str, int, bool]] = field(default_factory=list)  # path, fd of a detached clone, writable


def host_command(job: Job, profile_env: dict[str, str]) -> tuple[list[str], dict[str, str], str]:
    """argv, env and working directory of a job on the host image."""
    return job.cmd, {**profile_env, "PATH": DEFAULT_PATH, **job.env}, job.cwd or WORKDIR


def job_spec(
    argv: list[str], env: dict[str, str], cwd: str, limits: Limits, stdio: tuple[int, int, int],
    job_rlimits: list[tuple[int, int, int]], input_files: Sequence[tuple[str, int, int]] = (),
    collect: Sequence[Collect] = (), mounts: Sequence[tuple[str, int, bool]] = (),
) -> JobSpec:
    """What a sandbox is told to run (``job_rlimits``: from ``rlimits``) - by
    ``Runner.run``, and by the worker's direct hand-over (worker/handover.py), which must
    say exactly the same."""
    stdin_fd, stdout_fd, stderr_fd = stdio
    return JobSpec(
        argv=argv, env=env, cwd=cwd, disk_bytes=limits.disk_bytes, stdin_fd=stdin_fd, stdout_fd=stdout_fd,
        stderr_fd=stderr_fd, input_files=list(input_files), rlimits=job_rlimits, collect=list(collect),
        mounts=list(mounts),
    )


def rlimits(limits: Limits, have_cgroup: bool, warnings: list[str]) -> list[tuple[int, int, int]]:
    """Per-process limits. With a cgroup the CPU rlimit is only a backstop a second
    past the limit; without one it is the enforcement (per process)."""
    wanted = [
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_STACK, limits.stack_bytes),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_CORE, 0),
    ]
    if limits.cpu_time_ms is not None:
        seconds = math.ceil(limits.cpu_time_ms / 1000) + (1 if have_cgroup else 0)
        wanted.append((resource.RLIMIT_CPU, seconds))
    if not have_cgroup:
        wanted.append((resource.RLIMIT_AS, limits.memory_bytes))
        wanted.append((resource.RLIMIT_NPROC, limits.pids + 1))
    result = []
    for limit, value in wanted:
        hard = _hard_limit(limit)
        if hard != resource.RLIM_INFINITY and value > hard:
            warnings.append(f"rlimit {limit} capped at the host's hard limit {hard} (asked {value})")
            value = hard
        soft_hard = value + 1 if limit == resource.RLIMIT_CPU else value
        if hard != resource.RLIM_INFINITY:
            soft_hard = min(soft_hard, hard)
        result.append((limit, value, soft_hard))
    return result


@functools.cache
def _hard_limit(limit: int) -> int:
    """This process's hard limit: it never changes them, and a job is not the place
    for a system call per limit."""
    return resource.getrlimit(limit)[1]


def job_stdin(blob: Blob | None, fds: list[int]) -> int:
    """The program's fd 0: a private copy it cannot use to reach back. A host file handed
    over as it is would show its host path in /proc/self/fd/0 and could be reopened
    through it for writing; a shared /dev/null or empty file would share its offset
    between jobs. So: the bytes in a sealed memfd of the job's own, or, for no stdin,
    a pipe whose writer is already closed (EOF at once)."""
    if blob is None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.close(write_end)
        fds.append(read_end)
        return read_end
    fd = os.memfd_create("stdin", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    fds.append(fd)
    if blob.path is None:
        with open(fd, "wb", closefd=False) as handle:
            handle.write(blob.data or b"")
    else:
        source = open_host_file(blob.path, "stdin")
        try:
            _copy(source, fd)
        finally:
            os.close(source)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALED)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _copy(source: int, target: int) -> None:
    """Everything ``source`` yields into ``target``: in the kernel where it can (a
    regular file), by reads where it cannot (a pipe or a terminal given as the file)."""
    try:
        while os.sendfile(target, source, None, 1 << 30):
            pass
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        while chunk := os.read(source, 1 << 20):
            os.write(target, chunk)


def open_blob(blob: Blob, fds: list[int]) -> int:
    """An fd the sandbox init copies an input file from (the program never gets it):
    the host file, or a memfd holding the data. A file given by id is known only to the
    worker that caches it, whose launcher passes its path instead."""
    if blob.file_id is not None:
        raise JobError(f"{blob.file_id}: a cached file is used through the worker that holds it", field="files")
    if blob.path is not None:
        fd = open_host_file(blob.path, "files")
    else:
        fd = os.memfd_create("sandbox-input", os.MFD_CLOEXEC)
        with open(fd, "wb", closefd=False) as handle:
            handle.write(blob.data or b"")
        os.lseek(fd, 0, os.SEEK_SET)
    fds.append(fd)
    return fd


def open_host_file(path: str, field: str) -> int:
    """The host file, for reading; a missing or unreadable one is the job's error, naming ``field``."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise JobError(f"cannot read {path}: {exc.strerror}", field=field) from exc


def start_job(job_channel: socket.socket, job: JobSpec) -> None:
    """Hand the job to a prepared sandbox over its job channel (``Prepared.job_channel``,
    or the worker's copy of it: ``worker/handover.py``). Raises OSError if the sandbox
    is gone.

    The message is what the C init reads (``native/init.c``): NUL-terminated fields
    (strings hold no NUL: ``models.py`` refuses them) - the size of the writable area,
    the input files (count, then path and octal mode of each), the paths to collect
    (count, then path, "file" or "dir" and the most entries its walk takes), then the
    program stage's part: cwd, the rlimits (count, then resource, soft, hard), argv
    (count, strings), env (count, "NAME=value" strings)."""
    fds = [job.stdin_fd, job.stdout_fd, job.stderr_fd, *(fd for _, fd, _ in job.input_files),
           *(fd for _, fd, _ in job.mounts)]
    fields = [
        str(job.disk_bytes),
        str(len(job.input_files)), *(item for dest, _, mode in job.input_files for item in (dest, f"{mode:o}")),
        str(len(job.mounts)),
        *(item for path, _, writable in job.mounts for item in ("rw" if writable else "ro", path)),
        str(len(job.collect)),
        *(item for entry in job.collect
          for item in (entry.path, "dir" if entry.directory else "file", str(entry.max_entries))),
        job.cwd,
        str(len(job.rlimits)), *(str(value) for limit in job.rlimits for value in limit),
        str(len(job.argv)), *job.argv,
        str(len(job.env)), *(f"{name}={value}" for name, value in job.env.items()),
    ]
    message = "".join(field + "\0" for field in fields).encode("utf-8", "surrogateescape")  # os.fsencode's, at once
    socket.send_fds(job_channel, [message], fds)


