"""Job cgroups made ahead of their jobs and removed after them, a small step at a time.

A launcher is single-threaded: it makes and removes cgroups in its idle steps
(``SandboxSupply.step``), between looks for its next job, never on a job's path. A
thread did this work until the program stage joined its cgroup through ``tasks``: a
``cgroup.procs`` attach elsewhere could hold the kernel's cgroup_mutex through an RCU
grace period, and mkdirs and rmdirs waited for it. With no such attach left, they are
short, and the thread's hand-offs of the GIL (dozens of futex calls per job) cost more
CPU than they saved.
"""

from __future__ import annotations

import functools
from collections import deque

from sandbox.cgroups.base import CgroupBackend, JobCgroup, kill_cgroup_processes, remove_cgroup_dir
from sandbox.errors import SandboxError
from sandbox.models import Limits

# Cgroups kept made ahead for a warm pool: one, so that ordering a warm sandbox never
# waits for a mkdir in the same step (each step is a moment a job may be waiting).
KEEP_MADE = 1


class CgroupStock:
    """Fresh job cgroups on demand (``take``), removal later (``discard``), and the work
    in between one piece at a time (``work``). ``keep`` cgroups are made ahead, and what
    a removed cgroup leaves for reuse (``JobCgroup.keep_reusable``) is kept; with 0 (a
    runner without a warm pool, whose jobs each wait for their sandbox anyway) ``take``
    makes each one whole."""

    def __init__(self, backend: CgroupBackend, keep: int, limits: Limits | None = None) -> None:
        """``limits``: written into each cgroup made ahead (``apply_limits`` then finds
        them there and writes nothing); the cgroups made ahead can take a CPU quota only
        if these limits have one."""
        self.backend = backend
        self._keep = keep
        self._limits = limits
        self._made_with_cpu_quota = limits is not None and limits.cpus is not None
        self._made: deque[JobCgroup] = deque()
        self._doomed: deque[JobCgroup] = deque()
        self._reusable: list[str] = []  # what removed cgroups left for new ones (``keep_reusable``)
        self._making_failed = False  # stop making ahead until the next take

    def take(self, cpu_quota: bool) -> JobCgroup:
        """A fresh job cgroup (one that can take a CPU quota, with ``cpu_quota``): one
        made ahead if there is one, else one made now (whose failure, CgroupError, is
        the caller's)."""
        self._making_failed = False
        if self._made and (self._made_with_cpu_quota or not cpu_quota):
            return self._made.popleft()
        return self._create(cpu_quota)

    def discard(self, cgroup: JobCgroup) -> None:
        """Remove this cgroup later (``work``, ``drain``); what is left in it gets killed."""
        self._doomed.append(cgroup)

    @property
    def discarded(self) -> int:
        """How many discarded cgroups wait for their removal."""
        return len(self._doomed)

    def work(self) -> bool:
        """Make one cgroup ahead or remove one discarded; False when there is nothing to
        do. A cgroup that cannot be removed raises (CgroupError) - as a job's own removal
        would; one that cannot be made ahead is left for ``take`` to make and report."""
        if not self._making_failed and len(self._made) < self._keep:
            fresh = None
            try:
                fresh = self._create(self._made_with_cpu_quota)
                if self._limits is not None:
                    fresh.apply_limits(self._limits)
                self._made.append(fresh)
            except (SandboxError, OSError):
                self._making_failed = True
                if fresh is not None:
                    fresh.destroy()
            return True
        if self._doomed:
            self._remove(self._doomed.popleft())
            return True
        return False

    def drain(self) -> None:
        """Remove every discarded cgroup now, with what they left for reuse."""
        while self._doomed:
            self._doomed.popleft().destroy()
        while self._reusable:
            directory = self._reusable.pop()
            remove_cgroup_dir(directory, functools.partial(kill_cgroup_processes, directory))

    def close(self) -> None:
        """Remove what was discarded and what was made ahead."""
        self.drain()
        while self._made:
            self._made.popleft().destroy()

    def _create(self, cpu_quota: bool) -> JobCgroup:
        reuse = self._reusable.pop() if self._reusable and not cpu_quota else None
        return self.backend.create_job(cpu_quota, reuse)

    def _remove(self, cgroup: JobCgroup) -> None:
        # Only with a warm pool, which holds cgroups between jobs anyway: a supply
        # without one leaves nothing behind once its jobs are over.
        kept = cgroup.keep_reusable() if self._keep else None
        if kept is not None:
            self._reusable.append(kept)
        cgroup.destroy()
