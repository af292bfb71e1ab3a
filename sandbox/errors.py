"""Typed errors. Each says whose fault it is, because judges must never blame a
program for a sandbox fault (that is an ``internal_error``, not a verdict)."""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every error this package raises on purpose."""


class JobError(SandboxError):
    """The job description is invalid; ``field`` names the offending part."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class SetupError(SandboxError):
    """The sandbox could not be built (a host or sandbox fault, not the program's)."""


class ProfileError(SetupError):
    """A profile file is malformed: unknown key, syscall, action or constant."""


class CgroupError(SandboxError):
    """cgroups are missing, not delegated, or refused an operation."""
