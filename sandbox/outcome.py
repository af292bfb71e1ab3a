"""The facts of one run as its supervisor gathers them, and the limits' arithmetic.

Two supervisors watch jobs: ``supervise`` (a launcher's job thread, the command line)
and the worker's own supervision of a job it handed to a warm sandbox
(worker/supervision.py, in its trio loop). Both keep their facts in an ``Outcome``, read
the sandbox init's report with a ``MessageReader`` and ask ``Deadlines`` which limit was
crossed and when to look again, so a limit means the same whoever enforces it. Light on
purpose (the standard library and the models): the worker's trio process imports it.
"""

from __future__ import annotations

import enum
import json
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.models import Limits

MIN_POLL_S = 0.0005
SETUP_TIMEOUT_S = 30.0


@dataclass
class OutputBuffer:
    """Keeps at most ``limit`` bytes; remembers that more came."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, chunk: bytes) -> bool:
        """Store what fits; True when the stream went over its limit."""
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.data += chunk[: max(room, 0)]
            self.truncated = True
        else:
            self.data += chunk
        return self.truncated

    def take(self, chunk: bytes, name: str, on_output: Callable[[str, int, bytes], None] | None) -> bool:
        """``add``, and pass on what was kept of it (``on_output(name, offset, data)``,
        the stream's name and where the piece starts in it); True when over the limit."""
        kept_before = len(self.data)
        over = self.add(chunk)
        if on_output is not None and len(self.data) > kept_before:
            on_output(name, kept_before, bytes(self.data[kept_before:]))
        return over


class KillReason(enum.Enum):
    """Why the supervisor killed a job (SIGKILL to its init)."""

    CPU = "cpu"  # the CPU time limit
    WALL = "wall"  # the wall-clock limit
    OUTPUT = "output"  # stdout or stderr went over its cap
    SETUP = "setup"  # the sandbox never started the program in time
    CANCEL = "cancel"  # the caller cancelled it


@dataclass
class Outcome:
    """The raw facts of one run, before a verdict is drawn from them."""

    stdout: OutputBuffer
    stderr: OutputBuffer
    started_ns: int | None = None
    started_cpu_ns: int | None = None  # the job cgroup's CPU counter as the init started the program
    exited: dict[str, Any] | None = None
    exec_error: dict[str, Any] | None = None
    setup_error: str | None = None
    kill_reason: KillReason | None = None
    killed_at_ns: int | None = None
    violation: dict[str, Any] | None = None  # {"syscall", "number", "arch"}: a kill-listed call
    traced: list[dict[str, Any]] = field(default_factory=list)  # calls seen by a trace run

    def killed(self, reason: KillReason, now_ns: int) -> bool:
        """Record a kill for ``reason``; False if the job was killed already (the first
        reason stands, and the caller must not kill again)."""
        if self.kill_reason is not None:
            return False
        self.kill_reason, self.killed_at_ns = reason, now_ns
        return True


# A seccomp violation's number and architecture -> how a result names it
# (``seccomp_policy.describe``, which needs libseccomp: the caller passes it in).
Describe = Callable[[int, int], dict[str, Any]]


def handle_message(outcome: Outcome, message: dict[str, Any], describe: Describe) -> None:
    """Take one message of the sandbox init (its report pipe, or "started" from its job
    channel) into ``outcome``."""
    kind = message["kind"]
    if kind == "started":
        outcome.started_ns = message["t"]
        outcome.started_cpu_ns = message.get("cpu_ns")
    elif kind == "exited":
        outcome.exited = message
    elif kind == "exec_error":
        outcome.exec_error = message
    elif kind == "setup_error":
        outcome.setup_error = message["message"]
    elif kind == "violation" and outcome.violation is None:
        if message["number"] is None:  # interrupted before the sandbox could read it
            outcome.violation = {"syscall": None, "number": None, "arch": None}
        else:
            outcome.violation = describe(message["number"], message["arch"])
    elif kind == "traced":
        outcome.traced.append(describe(message["number"], message["arch"]))


def take_started(outcome: Outcome, job_channel: socket.socket, describe: Describe) -> None:
    """Read the init's "started" if it is there yet. It comes on the job channel, which
    nothing polls: the supervisor is not woken for it while the program starts, and
    reads it when it needs it - a limit check, or the usage once the job is over."""
    if outcome.started_ns is not None:
        return
    try:
        data = job_channel.recv(1024, socket.MSG_DONTWAIT)
    except OSError:
        return  # not sent yet, or the init is gone
    if data:
        handle_message(outcome, json.loads(data), describe)


class MessageReader:
    """Split the report pipe into JSON messages."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        # The program stage quotes names as bytes: one that is not UTF-8 still arrives.
        return [json.loads(line.decode(errors="replace")) for line in lines if line]


@dataclass
class Deadlines:
    """A job's wall and CPU limits, and when each could first be crossed.

    The CPU limit is enforced by polling the job cgroup's total CPU time with an adaptive
    interval: with R nanoseconds of CPU left and at most P CPUs usable, the job cannot
    cross the limit sooner than R/P from now, so the supervisor sleeps exactly that long
    (never less than ``MIN_POLL_S``). Far from the limit it sleeps long; near it, it
    looks often - so the kill lands within about a millisecond of the limit without
    burning CPU (isolate polls every 100 ms, nsjail every second). The wall clock runs
    from the init's "started"; until that is read, from the hand-over (``handed_ns``),
    which can only be earlier - so no limit is crossed too late."""

    wall_limit_ns: int
    cpu_limit_ns: int | None  # only with a cgroup to poll
    parallelism: int
    handed_ns: int

    @classmethod
    def of(cls, limits: Limits, cpus_available: int, *, polls_cpu: bool, handed_ns: int) -> Deadlines:
        """A job's deadlines from its limits, on a host of ``cpus_available`` CPUs; its CPU
        limit only where a cgroup counts the job's CPU (``polls_cpu``)."""
        cpu_limit_ns = limits.cpu_time_ms * 1_000_000 if polls_cpu and limits.cpu_time_ms is not None else None
        # (the CPUs it can use at once: its ``cpus`` quota, at most the host's)
        parallelism = max(1, min(cpus_available, math.ceil(limits.cpus) if limits.cpus else cpus_available))
        return cls(limits.wall_time_ms * 1_000_000, cpu_limit_ns, parallelism, handed_ns)

    @property
    def setup_deadline_ns(self) -> int:
        return self.handed_ns + int(SETUP_TIMEOUT_S * 1e9)

    def crossed(self, outcome: Outcome, now_ns: int, cpu_used_ns: int | None) -> KillReason | None:
        """The limit the job has crossed by ``now_ns``, if any, with the CPU it used
        (None: not read, no cgroup)."""
        if outcome.kill_reason is not None or outcome.exited is not None:
            return None
        if outcome.started_ns is None:
            if now_ns >= self.setup_deadline_ns:
                return KillReason.SETUP
        elif now_ns - outcome.started_ns >= self.wall_limit_ns:
            return KillReason.WALL
        if cpu_used_ns is not None and self.cpu_limit_ns is not None and cpu_used_ns >= self.cpu_limit_ns:
            return KillReason.CPU
        return None

    def next_check_s(self, outcome: Outcome, now_ns: int, cpu_used_ns: int | None) -> float | None:
        """Seconds until a limit could first be crossed, from the CPU use just read
        (None: only I/O can end the wait - the job is over or being killed)."""
        if outcome.kill_reason is not None or outcome.exited is not None:
            return None
        remaining = (outcome.started_ns or self.handed_ns) + self.wall_limit_ns - now_ns
        if outcome.started_ns is None:
            remaining = min(remaining, self.setup_deadline_ns - now_ns)
        if cpu_used_ns is not None and self.cpu_limit_ns is not None:
            remaining = min(remaining, (self.cpu_limit_ns - cpu_used_ns) // self.parallelism)
        return max(remaining / 1e9, MIN_POLL_S)

