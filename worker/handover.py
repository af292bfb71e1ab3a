"""The worker's direct hand-over: a job given to a warm sandbox by the worker itself.

A launcher offers the worker a ready warm sandbox of each kind it keeps, one per kind at a
time (``SandboxSupply.offer``), for the first of its slots to take a job that fits one
(``LauncherProcess.claim_offer``): with SCM_RIGHTS, the sandbox's job channel, both ends
of its output pipes, its report pipe, a pidfd of its init and its cgroup's counters;
and what the worker needs to tell the sandbox what the launcher would - the profile's
limits and environment - and the sandbox's kind and cgroup. A job that fits such a sandbox
(``WarmKind.fits``, the test the launcher's supply makes) and mounts nothing goes
straight to it from the worker: its cgroup limits written first where
they are not the profile's (the cgroup is the same user's, and the limits are what the
launcher would write: ``sandbox.cgroup_files.write_limits``), its input files with it
(their bytes in memfds, or the cache's files it names by id, opened here as the launcher
would open them). The worker then supervises the job itself (worker/supervision.py) and
gives the sandbox back to the launcher, to be cleaned up, once its job is over. The job's
path then has no launcher on it at all: no wake of it and none of its Python before the
hand-over, nor between the program's end and the result.

The sandbox hears exactly what the launcher would have sent (``job_message.job_spec``).

A sandbox on a stored image takes a job only while the job's reference names the image it
was made from (the launcher's ``SandboxSupply.take`` holds warm ones to the same test): the
worker reads that from its admission's lookup, which rereads the store's refs whenever
their directory changed, so a tag pulled anew sends its next job to the new layers. The
sandbox keeps its image's lease, taken when it was made, through the job. An offer whose
image its reference no longer names is given back (``outdated``): no job would take it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from sandbox.cgroup_files import CgroupUsage, Counters, write_limits
from sandbox.images.runtime import image_command, image_workdir
from sandbox.images.store import ImageRecord
from sandbox.job_message import host_command, job_spec, job_stdin, open_blob, rlimits, start_job
from sandbox.models import WORKDIR, Blob, Job, Limits
from sandbox.warm_kind import WarmKind
from worker.filecache import cached_path
from worker.launcher_channel import MAX_OUTPUT, OfferSandbox

# The job channel, stdout's and stderr's write and read ends, the report pipe, the
# init's pidfd; then the cgroup's counters, if it has one (``OfferSandbox``).
OFFER_FDS = 7
# Input files' bytes a job handed over here may bring (in all): the worker writes them into
# memfds in its event loop; a job with more goes the launcher's way.
MAX_FILE_BYTES = 1 << 20


@dataclass
class Offer:
    """A warm sandbox a launcher offered (its ``OfferSandbox`` and the fds with it)."""

    init_pid: int  # the sandbox init's pid: how the launcher knows it again
    kind: WarmKind  # what it was made for
    profile_limits: dict[str, Any]  # the profile's [limits], as the launcher has them
    profile_env: dict[str, str]
    cgroups: bool  # the launcher has a delegated cgroup subtree
    cgroup: tuple[dict[str, Any], tuple[int, int, float | None]] | None  # its limits' files, and what is written
    job_channel: socket.socket
    stdout_w: int
    stderr_w: int
    stdout_r: int
    stderr_r: int
    report: int  # the init's report pipe (``sandbox.outcome.MessageReader``)
    pidfd: int  # the init's: how a kill reaches it (the launcher, its parent, reaps it)
    counters: Counters | None  # its cgroup's, and their readings as its account started
    baseline: CgroupUsage | None
    image: tuple[str, str] | None  # a stored image's id and the working directory made (``OfferSandbox``)
    warnings: list[str]  # what every Result of its launcher says (``OfferSandbox``)
    not_enforced: list[str]
    parallelism: int
    cache_dir: str | None  # the worker's file cache, where a job's files given by id are

    @staticmethod
    def fd_count(message: OfferSandbox) -> int:
        """How many fds come with ``message``."""
        return OFFER_FDS + (0 if message.counters is None else 1 + len(message.counters[1]))

    @classmethod
    def from_message(cls, message: OfferSandbox, fds: list[int], cache_dir: str | None) -> Offer:
        channel, stdout_w, stderr_w, stdout_r, stderr_r, report, pidfd, *counter_fds = fds
        counters = baseline = None
        if message.counters is not None and message.baseline is not None:
            version, names = message.counters
            counters = Counters(version, counter_fds[0], dict(zip(names, counter_fds[1:], strict=True)))
            cpu_ns, user_ns, sys_ns, oom_kills = message.baseline
            baseline = CgroupUsage(cpu_ns, user_ns, sys_ns, None, oom_kills, None)
        return cls(
            message.sandbox, message.kind, message.profile_limits, message.env, message.cgroups, message.cgroup,
            socket.socket(fileno=channel), stdout_w, stderr_w, stdout_r, stderr_r, report, pidfd, counters, baseline,
            message.image, message.warnings, message.not_enforced, message.parallelism, cache_dir,
        )

    def limits_for(self, job: Job, image_now: ImageRecord | None) -> Limits | None:
        """The job's limits if it fits this sandbox (``WarmKind.fits``) and may be handed
        over here, else None: the launcher gets it then. ``image_now``: the stored image
        the job's reference names now (``current_image``; None on the host image)."""
        if job.mounts or job.interpreter is not None or (job.require_cgroups and not self.cgroups):
            # (trees, binds, volumes: cloned by the launcher's zygote; the interpreter
            # mode: its templates are the launcher's; no cgroups: it reports why it cannot run it)
            return None
        if (sum(len(f.content.data or b"") for f in job.files) > MAX_FILE_BYTES
                or (self.cache_dir is None and any(f.content.file_id is not None for f in job.files))):
            return None  # (the launcher writes what would hold up the event loop; a file by id needs the cache)
        limits = job.limits.over(self.profile_limits)
        fits = self.kind.fits(profile=job.profile, image=job.image, limits=limits, egress=job.network == "egress")
        if fits and self.image is not None:
            made_from, workdir = self.image
            fits = (image_now is not None and image_now.id == made_from
                    and (job.cwd or image_workdir(image_now.config) or WORKDIR) == workdir)
        # (an output limit no result frame carries: the launcher's way, which refuses it)
        return limits if fits and limits.output_bytes <= MAX_OUTPUT else None

    def outdated(self, image_now: ImageRecord | None) -> bool:
        """Whether this sandbox's image is no longer ``image_now``, the one its reference
        names now (pulled anew; None: removed): no job will take it, and it keeps gc off
        the old layers."""
        return self.image is not None and (image_now is None or image_now.id != self.image[0])

    def hand_over(self, job: Job, limits: Limits, image_now: ImageRecord | None) -> int:
        """Send the job, with the limits and image ``limits_for`` passed, to the sandbox
        (which starts it at once); the CLOCK_MONOTONIC time of the hand-over, in ns.
        Raises OSError if the sandbox is gone, CgroupError if its cgroup refused the
        job's limits, JobError if the job's image gives it no command or an input file
        cannot be read (then ``close`` follows, and the sandbox goes back)."""
        if self.image is None:
            argv, env, cwd = host_command(job, self.profile_env)
        else:
            assert image_now is not None, "``limits_for`` passes an image job only with its image"
            argv, env, cwd = image_command(job, image_now.config, self.profile_env)
        if self.cgroup is not None and limits.cgroup_values != self.cgroup[1]:
            write_limits(self.cgroup[0], limits)
        fds: list[int] = []
        try:
            stdio = (job_stdin(job.stdin, fds), self.stdout_w, self.stderr_w)
            files = [(f.dest, open_blob(self._here(f.content), fds), f.mode) for f in job.files]
            spec = job_spec(argv, env, cwd, limits, stdio, rlimits(limits, self.cgroups, self.warnings), files,
                            collect=job.collect)
            handed_ns = time.monotonic_ns()
            start_job(self.job_channel, spec)
        finally:
            for fd in fds:
                os.close(fd)
        for fd in (self.stdout_w, self.stderr_w):  # (the sandbox has its copies: EOF comes with its end)
            os.close(fd)
        self.stdout_w = self.stderr_w = -1
        return handed_ns

    def _here(self, blob: Blob) -> Blob:
        """An input file as this host has it: one given by id is the cache's file (the
        pool holds a lease on it while the job is queued or running)."""
        if blob.file_id is None:
            return blob
        assert self.cache_dir is not None, "``limits_for`` lets a file by id through only with a cache"
        return Blob(path=cached_path(self.cache_dir, blob.file_id))

    def close(self) -> None:
        """Close the worker's copies: its job channel then closes with the launcher's end
        alone."""
        self.job_channel.close()
        for fd in (self.stdout_w, self.stderr_w, self.stdout_r, self.stderr_r, self.report, self.pidfd):
            if fd >= 0:
                os.close(fd)
        if self.counters is not None:
            self.counters.close()

