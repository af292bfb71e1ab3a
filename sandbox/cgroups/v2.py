"""cgroup v2 backend: job cgroups under a delegated subtree (systemd ``Delegate=yes``
or a directory ``sandbox setup-cgroups`` chowned to the user).

v2 forbids processes in a cgroup that distributes controllers to children (the
"no internal processes" rule), so before enabling controllers the backend moves every
process of the delegated parent into a ``supervisor`` leaf beside the jobs.
"""

from __future__ import annotations

import copy
import os
import select
import time
from typing import Any

from sandbox.cgroup_files import write_file, write_v2
from sandbox.cgroups.base import (
    CgroupBackend,
    Freezer,
    JobCgroup,
    cgroup_pids,
    current_user,
    read_keyed,
    remove_partial,
)
from sandbox.cpucounter import V2
from sandbox.errors import CgroupError
from sandbox.models import Limits

CONTROLLERS = ("memory", "pids", "cpu")
SUPERVISOR_LEAF = "supervisor"
# cgroup.kill is one atomic step, but the dying processes leave the cgroup only once the
# kernel has run their exit paths; wait this long for "populated 0" before falling back.
KILL_WAIT_S = 5.0
_ENABLE_ATTEMPTS = 10


def v2_mount() -> str | None:
    """The cgroup2 mount that carries controllers (None on v1-only or hybrid hosts)."""
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                mount_point = left.split()[4]
                try:
                    with open(os.path.join(mount_point, "cgroup.controllers")) as handle:
                        if "memory" in handle.read().split():
                            return mount_point
                except OSError:
                    continue
    return None


def own_cgroup() -> str:
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            if line.startswith("0::"):
                return line[3:].strip().lstrip("/")
    return ""


def delegated_parent() -> str:
    """The delegated cgroup this process was started in (relative to the mount).

    A process started by a runner that already moved itself into the ``supervisor``
    leaf (a CLI run from a test, a helper of the worker) inherits that leaf; its parent
    is the delegated cgroup, not the leaf, or it would nest a second tree in the leaf.
    """
    own = own_cgroup()
    if os.path.basename(own) == SUPERVISOR_LEAF:
        return os.path.dirname(own)
    return own


class V2JobCgroup(JobCgroup):
    JOIN = "directory"
    VERSION = 2

    def __init__(self, directory: str) -> None:
        counters = {
            "peak": os.path.join(directory, "memory.peak"),  # 5.19+
            "oom": os.path.join(directory, "memory.events"),
            "pids_now": os.path.join(directory, "pids.current"),
            "pids_peak": os.path.join(directory, "pids.peak"),  # 6.1+
            "procs": os.path.join(directory, "cgroup.procs"),
        }
        super().__init__([directory], [directory], (directory, V2), counters)
        self.directory = directory

    def join(self) -> None:
        """v2: the one directory's cgroup.procs (its fd is the directory's, for clone3)."""
        fd = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.attach_fds[0])
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def _write_limits(self, limits: Limits) -> None:
        write_v2(self.directory, limits)

    def limit_files(self) -> dict[str, Any]:
        return {"version": 2, "directory": self.directory}

    def kill_all(self) -> None:
        """cgroup.kill (5.14+) SIGKILLs every process at once, so a fork storm cannot
        outrun it as it can a kill loop; without it, the loop of the base class."""
        kill_file = os.path.join(self.directory, "cgroup.kill")
        if os.path.exists(kill_file) and self._populated():
            write_file(kill_file, "1")
            if self._wait_unpopulated(KILL_WAIT_S):
                return
        super().kill_all()

    def _populated(self) -> bool:
        return read_keyed(os.path.join(self.directory, "cgroup.events")).get("populated", 0) == 1

    def _wait_unpopulated(self, timeout_s: float) -> bool:
        """Block until cgroup.events says "populated 0" (the kernel signals each change
        of that file with POLLPRI), or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        fd = os.open(os.path.join(self.directory, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while b"populated 0" not in os.pread(fd, 4096, 0):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                poller.poll(remaining * 1000)
            return True
        finally:
            os.close(fd)


class V2Freezer(Freezer):
    """cgroup.freeze of the session's cgroup, which holds every exec's cgroup."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.attach_fds = []

    def set(self, frozen: bool) -> None:
        write_file(os.path.join(self.directory, "cgroup.freeze"), "1" if frozen else "0")
        wanted = f"frozen {int(frozen)}".encode()
        fd = os.open(os.path.join(self.directory, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        try:  # the kernel signals each change of cgroup.events with POLLPRI
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            deadline = time.monotonic() + KILL_WAIT_S
            while wanted not in os.pread(fd, 4096, 0):
                if time.monotonic() > deadline:
                    raise CgroupError(f"{self.directory} did not reach {wanted.decode()!r}")
                poller.poll(100)
        finally:
            os.close(fd)

    def destroy(self) -> None:
        if os.path.exists(os.path.join(self.directory, "cgroup.freeze")):
            write_file(os.path.join(self.directory, "cgroup.freeze"), "0")


class V2Backend(CgroupBackend):
    version = 2

    def __init__(self, mount_point: str, parent: str | None) -> None:
        relative = parent if parent is not None else delegated_parent()
        self.parent = os.path.join(mount_point, relative)
        if not os.access(os.path.join(self.parent, "cgroup.subtree_control"), os.W_OK):
            raise CgroupError(
                f"{self.parent} is not delegated to {current_user()}: start the worker in a unit "
                "with Delegate=yes (contrib/systemd/sandbox-worker.service), or ad hoc under "
                f"'sudo systemd-run --scope -p Delegate=yes -p User={current_user()} "
                f"--uid={current_user()} --gid={current_user()} -- COMMAND' "
                "(see 'sudo sandbox setup-cgroups --user NAME')"
            )
        self._enable_controllers()

    def _enable_controllers(self) -> None:
        with open(os.path.join(self.parent, "cgroup.controllers")) as handle:
            available = handle.read().split()
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise CgroupError(f"controllers {missing} not delegated to {self.parent}")
        with open(os.path.join(self.parent, "cgroup.subtree_control")) as handle:
            enabled = handle.read().split()
        wanted = [c for c in CONTROLLERS if c not in enabled]
        if not wanted:
            return
        leaf = os.path.join(self.parent, SUPERVISOR_LEAF)
        os.makedirs(leaf, exist_ok=True)
        # A process may fork into the parent between the move and the write (EBUSY):
        # move again; give up only if processes keep appearing.
        for _ in range(_ENABLE_ATTEMPTS):
            _move_all(self.parent, leaf)
            try:
                write_file(os.path.join(self.parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in wanted))
                return
            except CgroupError:
                if not cgroup_pids(self.parent):
                    raise
        raise CgroupError(f"processes keep appearing in {self.parent}; cannot enable controllers")

    def parents(self) -> list[str]:
        return [self.parent]

    def features(self) -> dict[str, bool]:
        # Interface files of a leaf show what the kernel offers (the parent may be the root).
        probe = os.path.join(self.parent, SUPERVISOR_LEAF)
        directory = probe if os.path.isdir(probe) else self.parent
        return {
            f"{name}: {meaning}": os.path.exists(os.path.join(directory, name))
            for name, meaning in (
                ("memory.peak", "memory peak reported (Linux 5.19+; else memory_peak_bytes is null)"),
                ("cgroup.kill", "atomic kill of the job (5.14+; else a kill loop a fork storm can race)"),
                ("pids.peak", "peak process count reported (else pids_peak is null)"),
                ("memory.swap.max", "swap capped at 0 (else a job may swap beyond --memory)"),
                ("memory.oom.group", "OOM kills the whole job (4.19+)"),
            )
        }

    def freezer(self, cgroup: JobCgroup) -> Freezer:
        assert isinstance(cgroup, V2JobCgroup)
        return V2Freezer(cgroup.directory)

    def nested(self, cgroup: JobCgroup) -> V2Backend:
        assert isinstance(cgroup, V2JobCgroup)
        write_file(os.path.join(cgroup.directory, "cgroup.subtree_control"), " ".join(f"+{c}" for c in CONTROLLERS))
        inner = copy.copy(self)
        inner.parent = cgroup.directory
        return inner

    def create_job(self, cpu_quota: bool = True, reuse: str | None = None) -> JobCgroup:
        # One directory holds every controller: cpu.max costs nothing until written.
        directory = os.path.join(self.parent, self.job_name())
        try:
            os.mkdir(directory)
        except OSError as exc:
            raise CgroupError(f"cannot create job cgroup: {exc}") from exc
        try:
            swap_max = os.path.join(directory, "memory.swap.max")
            if os.path.exists(swap_max):
                write_file(swap_max, "0")
            write_file(os.path.join(directory, "memory.oom.group"), "1")
            return V2JobCgroup(directory)
        except BaseException:
            remove_partial([directory])
            raise


def _move_all(source: str, leaf: str) -> None:
    """Move every process of ``source`` into ``leaf`` (ones that exit meanwhile are fine)."""
    for pid in cgroup_pids(source):
        try:
            write_file(os.path.join(leaf, "cgroup.procs"), str(pid))
        except CgroupError:
            if pid in cgroup_pids(source):
                raise
