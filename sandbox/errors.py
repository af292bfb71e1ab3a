"""Typed errors. Each says whose fault it is, because judges must never blame a
program for a sandbox fault (that is an ``internal_error``, not a verdict)."""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every error this package raises on purpose."""


class JobError(SandboxError):
    """The job description is invalid; ``field`` names the offending part. ``code`` is
    the protocol's error code for it: a subclass names what a client may want to tell
    apart (and retry, or not) from a malformed job."""

    code = "invalid_job"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class BindNotAllowed(JobError):
    """A bind of a host path that the worker's operator did not allow (``--allow-bind``)."""

    code = "bind_not_allowed"


class VolumeBusy(JobError):
    """A volume that a running job holds in a way that excludes this one (a read-write
    user excludes every other; read-only users share)."""

    code = "volume_busy"


class SetupError(SandboxError):
    """The sandbox could not be built (a host or sandbox fault, not the program's)."""


class ProfileError(SetupError):
    """A profile file is malformed: unknown key, syscall, action or constant."""


class CgroupError(SandboxError):
    """cgroups are missing, not delegated, or refused an operation."""
