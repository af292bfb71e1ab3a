"""Turn the facts of a run into a status. One place, one precedence order.

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

from sandbox.models import Status, signal_name
from sandbox.supervise import KillReason, Outcome

_KILL_STATUS = {
    KillReason.OUTPUT: Status.OUTPUT_LIMIT,
    KillReason.CPU: Status.TIME_LIMIT,
    KillReason.WALL: Status.WALL_TIME_LIMIT,
}


@dataclass
class Verdict:
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
