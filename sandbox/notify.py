"""The sandbox init's side of SECCOMP_RET_USER_NOTIF: name violations, allow one exec,
record traces.

The program's filter sends kill-listed calls (and foreign-architecture calls) to a
listener fd that the init (B) holds. B's main loop polls it beside its children's
exits; for a violation it writes {"kind": "violation", number, arch} on the report pipe
and SIGKILLs every process of the job's pid namespace. The notified call is never answered,
so it never runs; the decision uses only the syscall number and architecture, never a
pointer argument the program could change underneath us.

The filter is installed with SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: once B has read a
notification, no signal handler of the program can interrupt the wait. Before B reads
it, a handler can (the call then fails with EINTR without running); B's RECV then
returns ENOENT, and that is reported as a violation too, with the name unknown. (RECV
also says ENOENT once no task uses the filter any more - the job ended; the listener
then polls POLLHUP, which tells the two apart. The one gap: an interrupted attempt
immediately followed by the end of the whole job looks like the latter. The call never
ran either way.)
"""

from __future__ import annotations

import errno
import os
import select
import signal
from collections.abc import Callable

from sandbox.linux import syscalls as sc

ReportFn = Callable[..., None]  # report(kind, **fields): one message on the report pipe


class Watcher:
    """Handles the notifications of one job's filter, one at a time, from the sandbox
    init's main loop (``stages.py``): no thread, so nothing to start on the job's path.
    ``native_arch`` and ``exec_numbers`` (the AUDIT_ARCH value and the execve and
    execveat numbers) come from the supervisor's pyseccomp, which stays out of the
    zygote."""

    def __init__(
        self, report: ReportFn, *, exec_once: bool, trace: bool, native_arch: int, exec_numbers: set[int]
    ) -> None:
        self.report = report
        self.exec_budget = 1 if exec_once and not trace else 0
        self.trace = trace
        self.native_arch = native_arch
        self.exec_numbers = exec_numbers
        self.seen: set[tuple[int, int]] = set()

    def handle(self, listener_fd: int) -> bool:
        """Take the pending notification (the listener polled readable or hung up);
        False once the listener is done with: the job ended or was killed."""
        try:
            notif = sc.seccomp_notif_recv(listener_fd)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return True
            if exc.errno == errno.ENOENT and not _orphaned(listener_fd):
                if self.trace:
                    return True  # the traced call was interrupted: nothing to name
                self.report("violation", number=None, arch=None)
                _kill_job()
            return False
        nr, arch = notif.data.nr, notif.data.arch
        if self.trace:
            if (nr, arch) not in self.seen:
                self.seen.add((nr, arch))
                self.report("traced", number=nr, arch=arch)
            _continue(listener_fd, notif.id)
            return True
        if self.exec_budget and arch == self.native_arch and nr in self.exec_numbers:
            # The sandbox's own exec of the program: nothing of the program ran yet.
            self.exec_budget -= 1
            _continue(listener_fd, notif.id)
            return True
        self.report("violation", number=nr, arch=arch)
        _kill_job()
        return False


def _orphaned(listener_fd: int) -> bool:
    """True when no task uses the filter any more (RECV then says ENOENT too)."""
    poller = select.poll()
    poller.register(listener_fd, select.POLLIN)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


def _continue(listener_fd: int, notif_id: int) -> None:
    try:
        sc.seccomp_notif_continue(listener_fd, notif_id)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # the caller died meanwhile
            raise


def _kill_job() -> None:
    """From pid 1 of the job's namespace, kill(-1) reaches every other process in it."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
