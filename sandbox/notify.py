"""The sandbox init's side of SECCOMP_RET_USER_NOTIF: name violations, allow one exec,
record traces.

The program's filter sends kill-listed calls (and foreign-architecture calls) to a
listener fd that the init (B) holds. A thread of B blocks in SECCOMP_IOCTL_NOTIF_RECV;
for a violation it writes {"kind": "violation", number, arch} on the report pipe and
SIGKILLs every process of the job's pid namespace. The notified call is never answered,
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
import threading
from collections.abc import Callable

from sandbox.linux import syscalls as sc

ReportFn = Callable[..., None]  # report(kind, **fields): one message on the report pipe


def start_watcher(
    listener_fd: int, report: ReportFn, *, exec_once: bool, trace: bool, native_arch: int, exec_numbers: set[int]
) -> threading.Thread:
    """Watch the listener in a daemon thread (B's main thread keeps reaping).
    ``native_arch`` and ``exec_numbers`` (the AUDIT_ARCH value and the execve and
    execveat numbers) come from the supervisor's pyseccomp, which stays out of the
    zygote (``stages.py``)."""
    if trace:
        thread = threading.Thread(target=_trace, args=(listener_fd, report), daemon=True)
    else:
        thread = threading.Thread(
            target=_enforce, args=(listener_fd, report, exec_once, native_arch, exec_numbers), daemon=True
        )
    thread.start()
    return thread


def _enforce(listener_fd: int, report: ReportFn, exec_once: bool, native_arch: int, exec_numbers: set[int]) -> None:
    exec_budget = 1 if exec_once else 0
    while True:
        try:
            notif = sc.seccomp_notif_recv(listener_fd)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            if exc.errno == errno.ENOENT and not _orphaned(listener_fd):
                report("violation", number=None, arch=None)
                _kill_job()
            return
        nr, arch = notif.data.nr, notif.data.arch
        if exec_budget and arch == native_arch and nr in exec_numbers:
            # The sandbox's own exec of the program: nothing of the program ran yet.
            exec_budget -= 1
            _continue(listener_fd, notif.id)
            continue
        report("violation", number=nr, arch=arch)
        _kill_job()
        return


def _trace(listener_fd: int, report: ReportFn) -> None:
    seen: set[tuple[int, int]] = set()
    while True:
        try:
            notif = sc.seccomp_notif_recv(listener_fd)
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.ENOENT):
                continue
            return
        key = (notif.data.nr, notif.data.arch)
        if key not in seen:
            seen.add(key)
            report("traced", number=key[0], arch=key[1])
        _continue(listener_fd, notif.id)


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
