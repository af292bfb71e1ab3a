"""Watch a started sandbox: collect its output, enforce CPU, wall and output limits
(the limits' arithmetic is ``outcome.Deadlines``), from a thread that may block: a
launcher's job thread, the command line. The worker supervises the jobs it hands to
warm sandboxes itself, in its event loop (worker/supervision.py), with the same pieces.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.cgroups import JobCgroup
from sandbox.models import Limits
from sandbox.outcome import Deadlines, KillReason, Outcome, OutputBuffer, handle_message, take_started
from sandbox.prepare import Prepared
from sandbox.seccomp_policy import describe

_CHUNK = 1 << 16


@dataclass
class Watch:
    """What to enforce: the job's limits (``outcome.Deadlines.of``; its CPU limit only
    with a cgroup to poll) on a host of ``cpus`` CPUs."""

    limits: Limits
    cpus: int
    cgroup: JobCgroup | None
    emptiness_checked: bool = False  # looked once for an early end (``_finished_early``)
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
        handle_message(outcome, message, describe)
    streams = {stdout_fd: outcome.stdout, stderr_fd: outcome.stderr}
    names = {stdout_fd: "stdout", stderr_fd: "stderr"}
    selector = selectors.PollSelector()  # a handful of fds for one job: no epoll instance to make and close
    for fd in (stdout_fd, stderr_fd, sandbox.report_fd):
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    if cancel_fd is not None:
        selector.register(cancel_fd, selectors.EVENT_READ)
    deadlines = Deadlines.of(watch.limits, watch.cpus, polls_cpu=watch.cgroup is not None,
                             handed_ns=time.monotonic_ns())
    polls_cpu = deadlines.cpu_limit_ns is not None
    cpu_used_ns: int | None = 0 if polls_cpu else None

    def kill(reason: KillReason) -> None:
        if outcome.killed(reason, time.monotonic_ns()):
            if watch.kill is None:
                os.kill(sandbox.init_pid, signal.SIGKILL)
            else:
                watch.kill()

    if outcome.setup_error:
        kill(KillReason.SETUP)
    elif on_started is not None:
        on_started()
    try:
        timeout = deadlines.next_check_s(outcome, time.monotonic_ns(), cpu_used_ns)
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
                        handle_message(outcome, message, describe)
                        if message["kind"] == "setup_error":
                            kill(KillReason.SETUP)
                elif streams[fd].take(chunk, names[fd], on_output):
                    kill(KillReason.OUTPUT)
            _take_started(outcome, sandbox, watch)
            if polls_cpu and outcome.kill_reason is None and outcome.exited is None:
                assert watch.cgroup is not None
                cpu_used_ns = watch.cgroup.cpu_usage_ns()
            now = time.monotonic_ns()
            reason = deadlines.crossed(outcome, now, cpu_used_ns)
            if reason:
                kill(reason)
            timeout = deadlines.next_check_s(outcome, now, cpu_used_ns)
    finally:
        selector.close()
    _take_started(outcome, sandbox, watch)
    if watch.reaps:
        os.waitpid(sandbox.init_pid, 0)
    sandbox.reaped = True
    return outcome


def _take_started(outcome: Outcome, sandbox: Prepared, watch: Watch) -> None:
    """``outcome.take_started``; the job's CPU account starts at the reading it brings."""
    if outcome.started_ns is None:
        take_started(outcome, sandbox.job_channel, describe)
        if watch.cgroup is not None and outcome.started_cpu_ns is not None:
            watch.cgroup.start_cpu_account_at(outcome.started_cpu_ns)


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
    return watch.cgroup.empty()
