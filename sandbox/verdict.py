"""Turn the facts of a run into a status and a Result. One place, one precedence order,
for every supervisor (``supervise``, and the worker's own for the jobs it hands over):
light on purpose, the worker's trio process imports it.

Precedence: a cancel first (the client's doing, not the program's nor the sandbox's),
then a sandbox fault (never blamed on the program), then the limit the supervisor killed
for, then a seccomp violation the sandbox init reported (named, see native/notify.c),
then what the kernel says (OOM kill), then how the program ended. A job that ends by
itself after going over its CPU limit between two polls is still a time_limit: the
limit is what was promised.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from sandbox.cgroup_files import CgroupUsage
from sandbox.collect import Collected
from sandbox.models import Limits, Result, Status, Usage, signal_name
from sandbox.outcome import KillReason, Outcome

_KILL_STATUS = {
    KillReason.OUTPUT: Status.OUTPUT_LIMIT,
    KillReason.CPU: Status.TIME_LIMIT,
    KillReason.WALL: Status.WALL_TIME_LIMIT,
}


@dataclass
class Verdict:
    """How a job ended, decided from its outcome and its cgroup's word (``decide``),
    before its usage and output are put into its Result."""

    status: Status
    exit_code: int | None
    signal: int | None
    signal_name: str | None
    error: str | None


def decide(outcome: Outcome, *, cpu_ms: float, cpu_limit_ms: int | None, oom_killed: bool) -> Verdict:
    exit_code, sig = _termination(outcome)
    name = signal_name(sig) if sig else None

    def verdict(status: Status, error: str | None = None) -> Verdict:
        return Verdict(status, exit_code, sig, name, error)

    if outcome.kill_reason is KillReason.CANCEL:
        return Verdict(Status.CANCELLED, None, None, None, "cancelled before it finished")
    never_ran = outcome.exited is None and outcome.kill_reason is None
    if outcome.setup_error or outcome.kill_reason is KillReason.SETUP or never_ran:
        return Verdict(Status.INTERNAL_ERROR, None, None, None, outcome.setup_error or "sandbox set-up did not finish")
    if outcome.kill_reason in _KILL_STATUS:
        return verdict(_KILL_STATUS[outcome.kill_reason])
    if outcome.violation is not None:
        return verdict(Status.SYSCALL_VIOLATION)
    if cpu_limit_ms is not None and cpu_ms > cpu_limit_ms:
        return verdict(Status.TIME_LIMIT)
    if oom_killed:
        return verdict(Status.MEMORY_LIMIT)
    if outcome.exec_error:
        return verdict(Status.RUNTIME_ERROR, outcome.exec_error["message"])
    if sig == signal.SIGXCPU:
        return verdict(Status.TIME_LIMIT)
    if sig:
        return verdict(Status.SIGNALED)
    return verdict(Status.RUNTIME_ERROR if exit_code else Status.OK)


def _termination(outcome: Outcome) -> tuple[int | None, int | None]:
    """(exit code, signal) of the program; None for both when it never reported."""
    if outcome.exited is None:
        return None, (signal.SIGKILL if outcome.kill_reason else None)
    status = outcome.exited["status"]
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def result_of(
    outcome: Outcome, usage: Usage, limits: Limits, collected: Collected, warnings: list[str],
    not_enforced: list[str],
) -> Result:
    """A job's Result from the facts of its run: a job's, or a session's exec's
    (``sandbox/session.py``), which must read alike."""
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
        files=collected.files,
        file_errors=collected.errors,
    )


def usage_of(outcome: Outcome, measured: CgroupUsage | None) -> Usage:
    """What the job used: its cgroup's counters (``measured``: since the job started),
    else the init's rusage of the program."""
    exited = outcome.exited or {}
    usage = Usage(max_rss_bytes=int(exited.get("maxrss_kb", 0)) * 1024)
    if outcome.started_ns is not None:
        end = exited.get("t") or outcome.killed_at_ns or outcome.started_ns
        usage.wall_ms = round((end - outcome.started_ns) / 1e6, 3)
    if measured is not None:
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
