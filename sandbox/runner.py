"""Job in, Result out: assemble cgroup, sandbox, supervision and verdict.

A ``Runner`` holds what is the same for every job of a process - the compiled seccomp
filter, the cgroup backend, the capability count - so a job pays only for its own
sandbox. It never raises for a job: every failure becomes a Result (``internal_error``
for faults of the sandbox, with the message).
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import prepare
from sandbox.cgroups import CgroupBackend, JobCgroup, open_backend
from sandbox.errors import CgroupError, JobError, SandboxError
from sandbox.ids import plan_ids
from sandbox.images.errors import BadReference, ImageNotFound
from sandbox.images.runtime import lease_image
from sandbox.job_message import (
    DEFAULT_PATH,
    host_command,
    job_spec,
    job_stdin,
    open_host_file,
    rlimits,
    start_job,
)
from sandbox.models import CGROUP_LIMITS, WORKDIR, Blob, Job, Limits, Result, Status, Usage, WarmSpec
from sandbox.prepare import ImageRoot
from sandbox.profile_cache import ProfileCache
from sandbox.supervise import Outcome, Watch, supervise
from sandbox.supply import Sandbox, SandboxSupply
from sandbox.verdict import decide

# Warm sandboxes are built with the default writable-area size; a job asking for
# another size gets the tmpfs resized (cheap) when it arrives.
WARM_DISK_BYTES = Limits().disk_bytes


@dataclass
class HandedOver:
    """A job the worker handed to an offered warm sandbox itself (worker/handover.py)."""

    sandbox: Sandbox  # taken back from the supply's offers (``SandboxSupply.take_offered``)
    at_ns: int  # CLOCK_MONOTONIC of the hand-over: the wall clock's start until the init says "started"


class Runner:
    """Runs jobs; with ``warm`` > 0, keeps that many sandboxes for ``profile`` on the host
    image prepared ahead of time, and those ``warm_for`` names besides (call
    ``sandboxes.step`` when idle), so a job's critical path is hand-over, exec, collect."""

    def __init__(self, profile: str = "default", warm: int = 0, warm_for: Sequence[WarmSpec] = ()) -> None:
        self.profiles = ProfileCache()
        self.profiles.get(profile)  # a broken default profile fails here, not at the first job
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
        self.id_plan = plan_ids()
        specs = WarmSpec.merged([WarmSpec(warm, profile), *warm_for])
        self.sandboxes = SandboxSupply(self.profiles, self.backend, cap_last, specs, WARM_DISK_BYTES, self.id_plan)
        self.sandboxes.start()

    def run(
        self, job: Job, *, cancel_fd: int | None = None, on_started: Callable[[], None] | None = None,
        on_output: Callable[[str, int, bytes], None] | None = None, trace: list[dict[str, Any]] | None = None,
        handed: HandedOver | None = None,
    ) -> Result:
        """Run one job. ``cancel_fd`` readable = cancel; ``on_started`` is called when the
        job has been handed to its sandbox, which starts the program (the worker's
        "started" event).
        With ``trace`` (a list), every syscall is allowed and the ones seen are appended to
        it (``sandbox profile trace``; trusted programs only). ``on_output(stream, offset,
        data)`` gets the output as it comes (``supervise``). With ``handed``, the job is
        already in that offered sandbox (the worker handed it over itself): it is only
        supervised.

        The finished sandbox is cleaned up later (``sandboxes.step`` or ``tidy``), so
        the caller can send the result first."""
        try:
            return self._run(job, cancel_fd, on_started, on_output, trace, handed)
        except JobError:
            raise
        except SandboxError as exc:
            return Result(Status.INTERNAL_ERROR, error=str(exc))
        except OSError as exc:
            return Result(Status.INTERNAL_ERROR, error=f"{type(exc).__name__}: {exc}")

    def tidy(self) -> None:
        """Finish the cleanup of jobs that already have their result."""
        self.sandboxes.finish()

    def close(self) -> None:
        """Discard the warm sandboxes, finish pending cleanup, stop the zygote."""
        self.sandboxes.close()

    def _run(
        self, job: Job, cancel_fd: int | None, on_started: Callable[[], None] | None,
        on_output: Callable[[str, int, bytes], None] | None, trace: list[dict[str, Any]] | None,
        handed: HandedOver | None,
    ) -> Result:
        with ExitStack() as cleanup:
            if handed is not None:  # running what the worker started there: it ends with us
                cleanup.callback(self.sandboxes.retire, handed.sandbox)
            profile = self.profiles.get(job.profile)
            limits = job.limits.over(profile.limits)
            warnings: list[str] = []
            not_enforced: list[str] = []
            if self.backend is None:
                if job.require_cgroups:
                    raise CgroupError(f"cgroups required but unavailable: {self.cgroup_problem}")
                not_enforced.extend(CGROUP_LIMITS)
                warnings.append(
                    f"no delegated cgroup ({self.cgroup_problem}); memory is capped by an address-space "
                    "rlimit, pids by RLIMIT_NPROC, CPU time per process only"
                )
            if self.id_plan.problem is not None:
                warnings.append(f"the job ran as this user, as every job of it does ({self.id_plan.problem})")
            if handed is None:
                argv, env, cwd, image_root = _image_for(job, cleanup, profile.env)
                sandbox = self.sandboxes.take(
                    image_root, limits.disk_bytes, job.profile, image_name=job.image, trace=trace is not None,
                    cpu_quota=limits.cpus is not None,
                )
                cleanup.callback(self.sandboxes.retire, sandbox)
            else:
                sandbox = handed.sandbox
            prepared, cgroup = sandbox.prepared, sandbox.cgroup
            if prepared.init_pid <= 0:
                message = next((m["message"] for m in prepared.early if m["kind"] == "setup_error"), None)
                return Result(Status.INTERNAL_ERROR, error=message or "sandbox did not start", warnings=warnings)
            if cgroup is not None:
                cgroup.apply_limits(limits)
                if not sandbox.accounting:
                    cgroup.start_accounting()
            fds: list[int] = []
            cleanup.callback(_close_all, fds)
            # (the worker computed the same for a job it handed over: the warnings are ours)
            job_rlimits = rlimits(limits, cgroup is not None, warnings)
            if handed is None:
                stdout_r, stdout_w = _pipe(fds)
                stderr_r, stderr_w = _pipe(fds)
                stdio = (job_stdin(job.stdin, fds), stdout_w, stderr_w)
                files = [(f.dest, open_blob(f.content, fds), f.mode) for f in job.files]
                spec = job_spec(argv, env, cwd, limits, stdio, job_rlimits, files)
                try:
                    start_job(prepared.job_channel, spec)
                    prepare.step_aside()
                except OSError as exc:
                    if exc.errno == errno.EMSGSIZE:  # the sandbox would wait for it until set-up timed out
                        raise JobError(
                            "the command, its environment and the file names are too long for one job message",
                            field="cmd",
                        ) from None
                    # else the sandbox died while waiting; supervise collects why
                for fd in (stdout_w, stderr_w):
                    fds.remove(fd)
                    os.close(fd)
            else:
                stdout_r, stderr_r = sandbox.take_output()
                fds.extend((stdout_r, stderr_r))
            watch = Watch(
                wall_limit_ns=limits.wall_time_ms * 1_000_000,
                cpu_limit_ns=None if limits.cpu_time_ms is None else limits.cpu_time_ms * 1_000_000,
                parallelism=_parallelism(self.parallelism, limits.cpus),
                cgroup=cgroup,
                handed_ns=0 if handed is None else handed.at_ns,
            )
            outcome = supervise(
                prepared, stdout_r, stderr_r, output_limit=limits.output_bytes, watch=watch, cancel_fd=cancel_fd,
                on_started=on_started, on_output=on_output,
            )
            if trace is not None:
                trace.extend(outcome.traced)
            usage = _usage(outcome, cgroup)
            verdict = decide(outcome, cpu_ms=usage.cpu_ms, cpu_limit_ms=limits.cpu_time_ms, oom_killed=usage.oom_killed)
            return Result(
                status=verdict.status,
                exit_code=verdict.exit_code,
                signal=verdict.signal,
                signal_name=verdict.signal_name,
                stdout=bytes(outcome.stdout.data),
                stderr=bytes(outcome.stderr.data),
                stdout_truncated=outcome.stdout.truncated,
                stderr_truncated=outcome.stderr.truncated,
                usage=usage,
                limits_not_enforced=not_enforced,
                warnings=warnings,
                error=verdict.error,
                violation=outcome.violation,
            )
        raise AssertionError("unreachable")  # pragma: no cover - the with block returns


def _image_for(
    job: Job, cleanup: ExitStack, profile_env: dict[str, str],
) -> tuple[list[str], dict[str, str], str, ImageRoot | None]:
    """argv, env (over the profile's) cwd and the layer stack for the job; the lease ends
    with the job."""
    if job.image == "host":
        return (*host_command(job, profile_env), None)
    base_env = {"PATH": DEFAULT_PATH}
    try:
        image = lease_image(job.image)
    except (ImageNotFound, BadReference) as exc:
        raise JobError(str(exc), field="image") from exc
    cleanup.callback(image.release)
    argv = image.argv(job.cmd)
    if not argv:
        raise JobError(f"no command given and image {image.name} has no Entrypoint or Cmd", field="cmd")
    cwd = job.cwd or image.workdir() or WORKDIR
    return argv, {**profile_env, **image.env(base_env), **job.env}, cwd, ImageRoot(image.layer_dirs, cwd)


def _parallelism(cpus_available: int, quota: float | None) -> int:
    return max(1, min(cpus_available, math.ceil(quota) if quota else cpus_available))


def _usage(outcome: Outcome, cgroup: JobCgroup | None) -> Usage:
    exited = outcome.exited or {}
    usage = Usage(max_rss_bytes=int(exited.get("maxrss_kb", 0)) * 1024)
    if outcome.started_ns is not None:
        end = exited.get("t") or outcome.killed_at_ns or outcome.started_ns
        usage.wall_ms = round((end - outcome.started_ns) / 1e6, 3)
    if cgroup is not None:
        measured = cgroup.usage()
        usage.cpu_ms = round(measured.cpu_ns / 1e6, 3)
        usage.cpu_user_ms = round(measured.cpu_user_ns / 1e6, 3)
        usage.cpu_sys_ms = round(measured.cpu_sys_ns / 1e6, 3)
        usage.memory_peak_bytes = measured.memory_peak_bytes
        usage.oom_killed = measured.oom_kills > 0
        usage.pids_peak = measured.pids_peak
    else:
        usage.cpu_user_ms = round(float(exited.get("utime", 0.0)) * 1000, 3)
        usage.cpu_sys_ms = round(float(exited.get("stime", 0.0)) * 1000, 3)
        usage.cpu_ms = round(usage.cpu_user_ms + usage.cpu_sys_ms, 3)
    return usage


def _pipe(fds: list[int]) -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    fds.extend((read_end, write_end))
    return read_end, write_end


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


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
