"""Job cgroups made ahead of their jobs and removed after them, on a thread of their own.

Why a thread: mkdir and rmdir of a cgroup take the kernel's cgroup_mutex, which a
process joining a cgroup elsewhere (a warm sandbox's program stage, another slot's
launcher) can hold through an RCU grace period. Measured in a worker under a steady
stream of jobs, one mkdir or rmdir in a hundred took 4-12 ms, and a launcher blocked
there kept its next job waiting: that was the tail of the job latency. The system calls
release the GIL, so the launcher runs its jobs while this thread waits in the kernel.
"""

from __future__ import annotations

import os
import threading
from collections import deque

from sandbox.cgroups.base import CgroupBackend, JobCgroup
from sandbox.errors import SandboxError
from sandbox.models import Limits

# Cgroups kept made ahead for a warm pool beyond one per warm sandbox: a mkdir can wait
# ~20 ms for the cgroup mutex, and the stock absorbs such a stall.
KEEP_MADE = 2


class CgroupStock:
    """Fresh job cgroups on demand (``take``), removal in the background (``discard``).
    ``keep`` cgroups are made ahead; with 0 (a runner without a warm pool, whose jobs
    each wait for their sandbox anyway) ``take`` makes each one."""

    def __init__(self, backend: CgroupBackend, keep: int, limits: Limits | None = None) -> None:
        """``limits``: written into each cgroup made ahead, here rather than on the
        launcher's thread (``apply_limits`` then finds them there and writes nothing);
        the cgroups made ahead can take a CPU quota only if these limits have one."""
        self.backend = backend
        self._keep = keep
        self._limits = limits
        self._made_with_cpu_quota = limits is not None and limits.cpus is not None
        self._made: deque[JobCgroup] = deque()
        self._doomed: deque[JobCgroup] = deque()
        self._busy = False  # the thread is making or removing one right now
        self._making_failed = False  # stop making ahead until the next take
        self._failure: SandboxError | OSError | None = None  # of a removal, for the owner to raise
        self._closing = False
        self._changed = threading.Condition()
        # Readable once a cgroup made ahead is there (see ``ready_to_take``).
        self.made_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._work, name="cgroup-stock", daemon=True)
        self._thread.start()

    def take(self, cpu_quota: bool) -> JobCgroup:
        """A fresh job cgroup (one that can take a CPU quota, with ``cpu_quota``): one
        made ahead if there is one, else one made now (whose failure, CgroupError, is
        the caller's)."""
        with self._changed:
            self._making_failed = False
            self._changed.notify_all()
            if self._made and (self._made_with_cpu_quota or not cpu_quota):
                return self._made.popleft()
        return self.backend.create_job(cpu_quota)

    def ready_to_take(self, cpu_quota: bool) -> bool:
        """Whether ``take`` would not have to wait for a mkdir now: a cgroup made ahead
        is there - or ``take`` must make one itself anyway (making ahead failed; those
        made ahead cannot take a CPU quota). False: one is being made, and ``made_fd``
        turns readable once it is there. A warm sandbox waits for it: made on the
        launcher's thread, a mkdir that waits for the cgroup mutex (held through an RCU
        grace period by an attach elsewhere, up to ~20 ms here) holds up the next job."""
        with self._changed:
            if self._made or self._making_failed or self._keep == 0 or (cpu_quota and not self._made_with_cpu_quota):
                return True
            try:
                os.eventfd_read(self.made_fd)  # so that it turns readable for the next one only
            except BlockingIOError:
                pass
            return False

    def discard(self, cgroup: JobCgroup) -> None:
        """Remove this cgroup in the background (what is left in it gets killed)."""
        with self._changed:
            self._doomed.append(cgroup)
            self._changed.notify_all()

    def check(self) -> None:
        """Raise the first failure to remove a cgroup since the last check."""
        with self._changed:
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def drain(self) -> None:
        """Wait until every discarded cgroup is removed; raise the first failure."""
        with self._changed:
            while self._doomed or self._busy:
                self._changed.wait()
        self.check()

    def close(self) -> None:
        """Remove what was discarded and what was made ahead; stop the thread."""
        self.drain()
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        while self._made:
            self._made.popleft().destroy()
        os.close(self.made_fd)

    def _work(self) -> None:
        while True:
            with self._changed:
                while not (self._doomed or self._closing or self._should_make()):
                    self._changed.wait()
                if self._closing and not self._doomed:
                    return
                # Making comes first: a warm sandbox may be waiting for the cgroup.
                doomed = self._doomed.popleft() if self._doomed and (self._closing or not self._should_make()) else None
                self._busy = True
            made = None
            try:
                if doomed is not None:
                    doomed.destroy()
                else:
                    fresh = self.backend.create_job(self._made_with_cpu_quota)
                    try:
                        if self._limits is not None:
                            fresh.apply_limits(self._limits)
                    except BaseException:
                        fresh.destroy()
                        raise
                    made = fresh
            except (SandboxError, OSError) as exc:
                with self._changed:
                    if doomed is not None:
                        self._failure = self._failure or exc
                    else:
                        self._making_failed = True  # take() makes its own and reports why
            with self._changed:
                if made is not None:
                    self._made.append(made)
                    os.eventfd_write(self.made_fd, 1)
                self._busy = False
                self._changed.notify_all()

    def _should_make(self) -> bool:
        return not self._making_failed and len(self._made) < self._keep
