"""Watch a started sandbox: collect its output, enforce CPU, wall and output limits.

The CPU limit is enforced by polling the job cgroup's total CPU time with an adaptive
interval: with R nanoseconds of CPU left and at most P CPUs usable, the job cannot
cross the limit sooner than R/P from now, so we sleep exactly that long (never less
than ``MIN_POLL_S``). Far from the limit the supervisor sleeps long; near it, it looks
often - so the kill lands within about a millisecond of the limit without burning CPU
(isolate polls every 100 ms, nsjail every second).
"""

from __future__ import annotations

import enum
import json
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.cgroups import JobCgroup
from sandbox.prepare import Prepared
from sandbox.seccomp_policy import describe

MIN_POLL_S = 0.0005
SETUP_TIMEOUT_S = 30.0
_CHUNK = 1 << 16


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
    exited: dict[str, Any] | None = None
    exec_error: dict[str, Any] | None = None
    setup_error: str | None = None
    kill_reason: KillReason | None = None
    killed_at_ns: int | None = None
    violation: dict[str, Any] | None = None  # {"syscall", "number", "arch"}: a kill-listed call
    traced: list[dict[str, Any]] = field(default_factory=list)  # calls seen by a trace run


@dataclass
class Watch:
    """What to enforce. ``cpu_limit_ns`` is only used with a cgroup to poll."""

    wall_limit_ns: int
    cpu_limit_ns: int | None
    parallelism: int
    cgroup: JobCgroup | None
    cpu_used_ns: int = 0  # the last reading of the cgroup's CPU time
    emptiness_checked: bool = False  # looked once for an early end (``_finished_early``)
    # When the job was handed over: its wall clock until the init's "started" is read
    # (``_take_started``), which can only be later - so no limit is crossed too late.
    # Set by ``supervise``, unless the worker handed the job over and said when.
    handed_ns: int = 0
    # The job names files to collect: its init, having reported the exit, kills and
    # reaps the rest of the job itself and then sends them - supervise returns at the
    # exit (with the output at EOF) and leaves the files to ``sandbox.collect``.
    collecting: bool = False
    # How a kill is done: None, SIGKILL to the init (the job's pid namespace goes with
    # it); a session's exec kills its own cgroup instead, and the init lives on.
    kill: Callable[[], None] | None = None
    # Whether the init is this process's child to reap once the job is over: an
    # interpreter-mode snippet is the template's (sandbox/interpreter.py).
    reaps: bool = True


def supervise(
    sandbox: Prepared,
    stdout_fd: int,
    stderr_fd: int,
    *,
    output_limit: int,
    watch: Watch,
    cancel_fd: int | None = None,
    on_started: Callable[[], None] | None = None,
    on_output: Callable[[str, int, bytes], None] | None = None,
) -> Outcome:
    """Run until every process of the job is gone; returns the facts. ``sandbox.reaped``
    tells whether the init was reaped here or is left to the caller (``_finished_early``).

    ``cancel_fd`` becoming readable kills the job (``KillReason.CANCEL``); its data is left
    unread for the caller. ``on_started`` is called at once, the job having just been
    handed to the sandbox; ``on_output(stream, offset, data)`` with each piece of output
    kept ("stdout"/"stderr", its position in that stream), as it arrives."""
    if sandbox.init_pid <= 0:
        raise ValueError("supervise() needs the pid of a started sandbox init")
    outcome = Outcome(OutputBuffer(output_limit), OutputBuffer(output_limit))
    for message in sandbox.early:
        _handle_message(outcome, message)
    streams = {stdout_fd: outcome.stdout, stderr_fd: outcome.stderr}
    names = {stdout_fd: "stdout", stderr_fd: "stderr"}
    selector = selectors.PollSelector()  # a handful of fds for one job: no epoll instance to make and close
    for fd in (stdout_fd, stderr_fd, sandbox.report_fd):
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    if cancel_fd is not None:
        selector.register(cancel_fd, selectors.EVENT_READ)
    watch.handed_ns = watch.handed_ns or time.monotonic_ns()  # the worker's, if it handed the job over
    setup_deadline = watch.handed_ns + int(SETUP_TIMEOUT_S * 1e9)

    def kill(reason: KillReason) -> None:
        if outcome.kill_reason is None:
            outcome.kill_reason = reason
            outcome.killed_at_ns = time.monotonic_ns()
            if watch.kill is None:
                os.kill(sandbox.init_pid, signal.SIGKILL)
            else:
                watch.kill()

    if outcome.setup_error:
        kill(KillReason.SETUP)
    elif on_started is not None:
        on_started()
    try:
        timeout = _next_check_s(outcome, watch, setup_deadline)
        while any(key.fd != cancel_fd for key in selector.get_map().values()):
            if _finished_early(outcome, selector, streams, watch):
                _take_started(outcome, sandbox, watch)
                return outcome  # the sandbox's own exit is left to the caller's cleanup
            for key, _ in selector.select(timeout):
                fd = key.fd
                if fd == cancel_fd:
                    selector.unregister(fd)
                    kill(KillReason.CANCEL)
                    continue
                try:
                    chunk = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                elif fd == sandbox.report_fd:
                    for message in sandbox.reader.feed(chunk):
                        _handle_message(outcome, message)
                        if message["kind"] == "setup_error":
                            kill(KillReason.SETUP)
                else:
                    kept_before = len(streams[fd].data)
                    over = streams[fd].add(chunk)
                    if on_output is not None and len(streams[fd].data) > kept_before:
                        on_output(names[fd], kept_before, bytes(streams[fd].data[kept_before:]))
                    if over:
                        kill(KillReason.OUTPUT)
            _take_started(outcome, sandbox, watch)
            reason = _limit_crossed(outcome, watch, setup_deadline)
            if reason:
                kill(reason)
            timeout = _next_check_s(outcome, watch, setup_deadline)
    finally:
        selector.close()
    _take_started(outcome, sandbox, watch)
    if watch.reaps:
        os.waitpid(sandbox.init_pid, 0)
    sandbox.reaped = True
    return outcome


def _take_started(outcome: Outcome, sandbox: Prepared, watch: Watch) -> None:
    """Read the init's "started" if it is there yet. It comes on the job channel, which
    nothing polls: the supervisor is not woken for it while the program starts, and
    reads it when it needs it - a limit check, or the usage once the job is over."""
    if outcome.started_ns is not None:
        return
    try:
        data = sandbox.job_channel.recv(1024, socket.MSG_DONTWAIT)
    except OSError:
        return  # not sent yet, or the init is gone
    if data:
        message = json.loads(data)
        _handle_message(outcome, message)
        if watch.cgroup is not None and message.get("cpu_ns") is not None:
            watch.cgroup.start_cpu_account_at(message["cpu_ns"])


def _finished_early(
    outcome: Outcome, selector: selectors.BaseSelector, streams: dict[int, OutputBuffer], watch: Watch
) -> bool:
    """True when the facts are complete before the sandbox init has exited: the program
    was reaped, its output is at EOF, and its cgroup holds no process (so nothing of the
    job can run, write or use a resource any more). The init's own exit - tearing down a
    forked interpreter and the job's namespaces - then stays off the job's critical path.
    Without a cgroup there is no such proof: wait for the init - unless it collects
    files, which it does only once the rest of the job is dead (``Watch.collecting``)."""
    if outcome.exited is None:
        return False
    if watch.collecting:
        return not any(fd in selector.get_map() for fd in streams)
    if watch.cgroup is None or watch.emptiness_checked:
        return False
    if any(fd in selector.get_map() for fd in streams):
        return False
    watch.emptiness_checked = True
    return not watch.cgroup.pids()


def _handle_message(outcome: Outcome, message: dict[str, Any]) -> None:
    kind = message["kind"]
    if kind == "started":
        outcome.started_ns = message["t"]
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


def _limit_crossed(outcome: Outcome, watch: Watch, setup_deadline: int) -> KillReason | None:
    """The limit the job has just crossed, if any (one cgroup read)."""
    if outcome.kill_reason is not None or outcome.exited is not None:
        return None
    now = time.monotonic_ns()
    if outcome.started_ns is None:
        if now >= setup_deadline:
            return KillReason.SETUP
    elif now - outcome.started_ns >= watch.wall_limit_ns:
        return KillReason.WALL  # (before "started" is read, the clock runs from the hand-over: _next_check_s)
    if watch.cgroup is not None and watch.cpu_limit_ns is not None:
        watch.cpu_used_ns = watch.cgroup.cpu_usage_ns()
        if watch.cpu_used_ns >= watch.cpu_limit_ns:
            return KillReason.CPU
    return None


def _next_check_s(outcome: Outcome, watch: Watch, setup_deadline: int) -> float | None:
    """Seconds until a limit could first be crossed (None: only I/O can wake us), from
    the CPU usage ``_limit_crossed`` just read."""
    if outcome.kill_reason is not None or outcome.exited is not None:
        return None
    now = time.monotonic_ns()
    remaining = (outcome.started_ns or watch.handed_ns) + watch.wall_limit_ns - now
    if outcome.started_ns is None:
        remaining = min(remaining, setup_deadline - now)
    if watch.cgroup is not None and watch.cpu_limit_ns is not None:
        cpu_left = watch.cpu_limit_ns - watch.cpu_used_ns
        remaining = min(remaining, cpu_left // watch.parallelism)
    return max(remaining / 1e9, MIN_POLL_S)
