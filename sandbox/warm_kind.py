"""What a warm sandbox was made for, and the one answer to "may this job take it".

A warm sandbox is made before its job is known: with its profile's seccomp filter (not
the tracing one), on one image, in a cgroup. Two holders give such sandboxes jobs: the
launcher's supply (``SandboxSupply.take``) and the worker's direct hand-over
(worker/handover.py); both write the job's cgroup limits before the job starts, and both
ask ``WarmKind.fits``. The size of the writable area is no part of it: the job message
carries it and the sandbox resizes its tmpfs.

Light on purpose (the models only): the worker's trio process imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.models import Limits


@dataclass(frozen=True)
class WarmKind:
    """A warm sandbox as whoever holds it sees it."""

    profile: str
    image: str = "host"  # or a stored image's reference as jobs write it ("python:3.12")
    # Its cgroup can take a CPU quota: on cgroup v1 one made without the cpu controller
    # cannot (no cgroup at all: no quota is enforced, so any job's will do).
    cpu_quota: bool = True

    def fits(self, *, profile: str, image: str, limits: Limits, trace: bool = False, egress: bool = False) -> bool:
        """Whether a job of ``profile`` on ``image`` (its reference as the job wrote it),
        whose limits are ``limits`` (its own over its profile's), may run in a sandbox of
        this kind; never one to trace (``trace``), which needs the tracing filter, nor an
        ``egress`` job: its stack is started for it, on a sandbox made for it (warm ones
        are never made with one)."""
        if trace or egress or profile != self.profile or image != self.image:
            return False
        return limits.cpus is None or self.cpu_quota
