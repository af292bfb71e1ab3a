"""The worker's own supervision of a job it handed to a warm sandbox (worker/handover.py).

A launcher's job thread supervises the jobs a launcher starts (``sandbox.supervise``).
A job the worker handed over itself is watched here, in the worker's event loop: its
output and its init's report read as they come, its wall and CPU limits checked when
``Deadlines`` says one could first be crossed, its usage read from its cgroup's
counters, its Result drawn by ``verdict`` - the same pieces, so a limit and a verdict
mean the same whoever enforces them. The launcher is then on no part of such a job's
path: not before the hand-over, and not between the program's end and the result,
which had been the longest hop of a short job (a wake of the launcher's job thread, its
Python, its frame to the worker and the worker's read of it).

What a job's processes could do to the event loop is bounded as in the launcher: the
output kept is capped (``OutputBuffer``), and a kill is one pidfd signal to the init,
whose pid namespace goes with it. What the loop does to a kill: the CPU limit's check
runs when the loop gets to it, so a worker busy with other clients kills a job later
than a launcher's thread would - the verdict does not change (the CPU counter is
compared with the limit), only how far past it the job ran. RLIMIT_CPU stays the
backstop a second past the limit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

import trio

from sandbox.collect import Collected, collect_after
from sandbox.models import Collect, Limits, Result
from sandbox.outcome import (
    Deadlines,
    KillReason,
    MessageReader,
    Outcome,
    OutputBuffer,
    handle_message,
    take_started,
)
from sandbox.verdict import result_of, usage_of
from worker.handover import Offer
from worker.launcher_channel import RESULT_ROOM

_CHUNK = 1 << 16


class HandedJob:
    """One handed-over job: its facts as they come, and how it ends."""

    def __init__(self, offer: Offer, limits: Limits, handed_ns: int, collect: list[Collect],
                 on_output: Callable[[str, int, bytes], None] | None = None) -> None:
        """``offer``'s sandbox was just given the job (at ``handed_ns``,
        CLOCK_MONOTONIC), which collects ``collect``; ``on_output(stream, offset, data)``
        gets each piece of output kept, as it comes."""
        self.offer = offer
        self.limits = limits
        self.collect = collect
        self.outcome = Outcome(OutputBuffer(limits.output_bytes), OutputBuffer(limits.output_bytes))
        self.deadlines = Deadlines.of(limits, offer.parallelism, polls_cpu=offer.counters is not None,
                                      handed_ns=handed_ns)
        self.on_output = on_output
        # The output pipes not at EOF yet, each with what is kept of it.
        self.buffers = {offer.stdout_r: (self.outcome.stdout, "stdout"),
                        offer.stderr_r: (self.outcome.stderr, "stderr")}
        self.report_open = True
        self.emptiness_checked = False
        self.reader = MessageReader(offer.report)

    async def watch(self) -> Result:
        """Read the job's output and report and check its limits - whenever something
        comes or a limit could first be crossed - until every process of it is gone;
        its Result. One task and one epoll instance of its own over the three pipes,
        which the event loop waits on as one fd: no task per pipe to start and cancel
        on every job's path. The sandbox is the launcher's to clean up afterwards."""
        pipes = select.epoll(3)
        try:
            for fd in (*self.buffers, self.offer.report):
                os.set_blocking(fd, False)
                pipes.register(fd, select.EPOLLIN)
            cpu_used_ns: int | None = 0 if self.deadlines.cpu_limit_ns is not None else None
            while not self._over():
                timeout = self.deadlines.next_check_s(self.outcome, time.monotonic_ns(), cpu_used_ns)
                with trio.move_on_after(math.inf if timeout is None else timeout):
                    await trio.lowlevel.wait_readable(pipes.fileno())
                for fd, _ in pipes.poll(0):
                    if not self._read(fd):
                        pipes.unregister(fd)
                take_started(self.outcome, self.offer.job_channel, _describe)
                if cpu_used_ns is not None and self.outcome.kill_reason is None and self.outcome.exited is None:
                    cpu_used_ns = self._cpu_used_ns()
                reason = self.deadlines.crossed(self.outcome, time.monotonic_ns(), cpu_used_ns)
                if reason is not None:
                    self.kill(reason)
        finally:
            trio.lowlevel.notify_closing(pipes.fileno())
            pipes.close()
        take_started(self.outcome, self.offer.job_channel, _describe)
        collected = Collected()
        if self.collect:  # (files are read in a thread: a job may leave megabytes)
            collected = await trio.to_thread.run_sync(
                collect_after, self.offer.job_channel, self.collect, self.outcome, RESULT_ROOM)
        return self._result(collected)

    def kill(self, reason: KillReason) -> None:
        """SIGKILL the init: the kernel kills every process of the job's pid namespace.
        The first reason stands. The pipes' ends then wake the watch."""
        if self.outcome.killed(reason, time.monotonic_ns()):
            try:
                signal.pidfd_send_signal(self.offer.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited already: so did the rest of the job

    def abandon(self) -> None:
        """The launcher whose sandbox this is died: end the job (its caller fails it)."""
        self.kill(KillReason.CANCEL)

    def _read(self, fd: int) -> bool:
        """Take what one pipe has; False at its EOF."""
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return True
        if fd == self.offer.report:
            self.report_open = bool(chunk)
            for message in self.reader.feed(chunk):
                handle_message(self.outcome, message, _describe)
                if message["kind"] == "setup_error":
                    self.kill(KillReason.SETUP)
        elif chunk:
            buffer, name = self.buffers[fd]
            if buffer.take(chunk, name, self.on_output):
                self.kill(KillReason.OUTPUT)
        else:
            del self.buffers[fd]
        return bool(chunk)

    def _over(self) -> bool:
        """Whether the facts are complete: the init is gone (its report pipe at EOF) and
        the output too; or, sooner, the program was reaped, its output is at EOF and its
        cgroup holds no process (looked at once: else the init's end is waited for), as
        ``sandbox.supervise`` decides it; for a job that collects files, at the program's
        exit with the output at EOF."""
        if self.buffers:
            return False
        if not self.report_open or (self.collect and self.outcome.exited is not None):
            return True  # (a job that collects files: its init kills the rest of it before it sends them)
        if self.outcome.exited is None or self.offer.counters is None or self.emptiness_checked:
            return False
        self.emptiness_checked = True
        return self.offer.counters.empty()

    def _cpu_used_ns(self) -> int:
        counters, baseline = self.offer.counters, self.offer.baseline
        assert counters is not None and baseline is not None, "only polled with a cgroup"
        start = self.outcome.started_cpu_ns
        return counters.cpu_ns() - (baseline.cpu_ns if start is None else start)

    def _result(self, collected: Collected) -> Result:
        counters, baseline = self.offer.counters, self.offer.baseline
        measured = None
        if counters is not None and baseline is not None:
            start = self.outcome.started_cpu_ns
            measured = counters.since(baseline if start is None else dataclasses.replace(baseline, cpu_ns=start))
        usage = usage_of(self.outcome, measured)
        return result_of(self.outcome, usage, self.limits, collected, self.offer.warnings, self.offer.not_enforced)


def _describe(number: int, arch: int) -> dict[str, Any]:
    """A seccomp violation as a result names it. Imported when one happens: it loads
    libseccomp, which nothing else of the worker's process needs."""
    from sandbox.seccomp_policy import describe

    return describe(number, arch)
