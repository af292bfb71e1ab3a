"""cgroup v1 backend: one job directory in each of the memory, cpu, cpuacct and pids
hierarchies, under the subtree ``sandbox setup-cgroups`` delegated to the user.

The parent is never derived from /proc/self/cgroup: on the development hosts our own
v1 memory cgroup can belong to the machine itself, which must never be written.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

from sandbox.cgroup_files import TCP_LIMIT, read_int, read_text, write_file, write_v1
from sandbox.cgroups.base import (
    CgroupBackend,
    Freezer,
    JobCgroup,
    cgroup_pids,
    current_user,
    kill_cgroup_processes,
    remove_cgroup_dir,
    remove_partial,
)
from sandbox.cpucounter import V1
from sandbox.errors import CgroupError
from sandbox.models import Limits

CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
FREEZER = "freezer"
FREEZE_WAIT_S = 5.0


def v1_mounts() -> dict[str, str]:
    """Controller name -> mount point of its v1 hierarchy (co-mounts share one)."""
    found: dict[str, str] = {}
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) < 3 or fields[0] != "cgroup":
                continue
            mount_point = left.split()[4]
            for option in fields[2].split(","):
                if option in CONTROLLERS or option == FREEZER:
                    found.setdefault(option, mount_point)
    return found


class V1JobCgroup(JobCgroup):
    def __init__(
        self, dirs: dict[str, str], has_swap_limit: bool, *, has_tcp_limit: bool, cpu_dir_reusable: bool = False,
    ) -> None:
        """``cpu_dir_reusable``: the cpuacct directory may serve a later job (see
        ``keep_reusable``)."""
        unique_dirs = list(dict.fromkeys(dirs.values()))
        cpuacct, memory, pids = (dirs[c] for c in ("cpuacct", "memory", "pids"))
        counters = {
            "user": os.path.join(cpuacct, "cpuacct.usage_user"),
            "sys": os.path.join(cpuacct, "cpuacct.usage_sys"),
            "peak": os.path.join(memory, "memory.max_usage_in_bytes"),  # "0" resets it
            "oom": os.path.join(memory, "memory.oom_control"),
            "pids_now": os.path.join(pids, "pids.current"),
            "pids_peak": os.path.join(pids, "pids.peak"),  # 6.1+ backports
            "procs": os.path.join(unique_dirs[0], "cgroup.procs"),
        }
        # The program stage joins through "tasks", which moves only the writing thread (it
        # is single-threaded then): the kernel skips the global threadgroup lock for that,
        # and with it the RCU grace period its first writer after a quiet spell waits for
        # (milliseconds, against a tenth of one through tasks).
        super().__init__(
            unique_dirs, [os.path.join(d, "tasks") for d in unique_dirs], (cpuacct, V1),
            counters, writable_counters=frozenset({"peak"}),
        )
        self.by_controller = dirs
        self.cpu_quota = "cpu" in dirs
        self.has_swap_limit = has_swap_limit  # memory.memsw.* (swap accounting) exists
        self.has_tcp_limit = has_tcp_limit  # memory.kmem.tcp.* exists
        self.cpu_dir_reusable = cpu_dir_reusable and not self.cpu_quota

    def keep_reusable(self) -> str | None:
        """The cpuacct directory, for the next job's cgroup, once no process is left in
        it. It holds nothing of a job but counters that only grow - every job reads
        them against the values at its start - and, made without a CPU quota, no
        setting. Taking it over saves a mkdir, an rmdir and the kernel's deferred
        release of a cgroup per job."""
        directory = self.by_controller["cpuacct"]
        if not self.cpu_dir_reusable or directory not in self.directories or cgroup_pids(directory):
            return None
        self.directories.remove(directory)
        return directory

    def _write_limits(self, limits: Limits) -> None:
        write_v1(self.by_controller, limits, has_swap_limit=self.has_swap_limit, has_tcp_limit=self.has_tcp_limit,
                 fresh=self._applied is None)

    def limit_files(self) -> dict[str, Any]:
        return {"version": 1, "dirs": self.by_controller, "swap": self.has_swap_limit, "tcp": self.has_tcp_limit}

    def _reset_peak(self) -> None:
        self._rewrite_counter("peak", "0")


class V1Freezer(Freezer):
    """A directory of the freezer hierarchy per session, named as its cgroup (so that
    ``reap_stale`` finds it after a crash), which each exec's program stage joins too."""

    def __init__(self, directory: str) -> None:
        os.mkdir(directory)
        self.directory = directory
        self.attach_fds = [os.open(os.path.join(directory, "tasks"), os.O_WRONLY | os.O_CLOEXEC)]

    def set(self, frozen: bool) -> None:
        wanted = "FROZEN" if frozen else "THAWED"
        state = os.path.join(self.directory, "freezer.state")
        deadline = time.monotonic() + FREEZE_WAIT_S
        # FREEZING until every task is frozen; v1 has no notification for it: look again.
        while True:
            write_file(state, wanted)
            if read_text(state).strip() == wanted:
                return
            if time.monotonic() > deadline:
                raise CgroupError(f"{self.directory} did not reach {wanted}")
            os.sched_yield()

    def destroy(self) -> None:
        for fd in self.attach_fds:
            os.close(fd)
        self.attach_fds = []
        if os.path.isdir(self.directory):
            write_file(os.path.join(self.directory, "freezer.state"), "THAWED")
            remove_cgroup_dir(self.directory, lambda: kill_cgroup_processes(self.directory))


class V1Backend(CgroupBackend):
    version = 1

    def __init__(self, parent: str) -> None:
        mounts = v1_mounts()
        missing = [c for c in CONTROLLERS if c not in mounts]
        if missing:
            raise CgroupError(f"cgroup v1 controllers not mounted: {', '.join(missing)}")
        self.parent_dirs = {c: os.path.join(mounts[c], parent) for c in CONTROLLERS}
        for directory in self.parent_dirs.values():
            if not os.access(directory, os.W_OK):
                raise CgroupError(
                    f"{directory} is missing or not writable: run "
                    f"'sudo sandbox setup-cgroups --user {current_user()}' once"
                )
        memory = self.parent_dirs["memory"]
        self.has_swap_limit = _exists(memory, "memory.memsw.limit_in_bytes")
        self.has_tcp_limit = _exists(memory, TCP_LIMIT)
        # The cpuacct directory can pass from job to job only in a hierarchy of its own
        # (with cpu at most), not where it would carry memory or pids along.
        self.cpu_dir_reusable = self.parent_dirs["cpuacct"] not in (memory, self.parent_dirs["pids"])
        # A new memory cgroup takes its parent's swappiness: where setup-cgroups set it
        # to 0 there, a job cgroup needs no write of its own.
        self.swappiness_inherited = read_int(os.path.join(memory, "memory.swappiness")) == 0
        # Sessions' pause (optional: jobs never need it), where setup-cgroups delegated it.
        freezer = os.path.join(mounts[FREEZER], parent) if FREEZER in mounts else None
        self.freezer_parent = freezer if freezer is not None and os.access(freezer, os.W_OK) else None

    def parents(self) -> list[str]:
        freezer = [] if self.freezer_parent is None else [self.freezer_parent]
        return list(dict.fromkeys([*self.parent_dirs.values(), *freezer]))

    def freezer(self, cgroup: JobCgroup) -> Freezer:
        if self.freezer_parent is None:
            raise CgroupError(
                "pausing needs the freezer hierarchy delegated: run "
                f"'sudo sandbox setup-cgroups --user {current_user()}' once"
            )
        return V1Freezer(os.path.join(self.freezer_parent, os.path.basename(cgroup.directories[0])))

    def features(self) -> dict[str, bool]:
        memory, pids = self.parent_dirs["memory"], self.parent_dirs["pids"]
        return {
            "swap accounting (memory.memsw.*): swap capped with memory": self.has_swap_limit,
            "socket buffer limit (memory.kmem.tcp.*): TCP/UDP buffers capped": self.has_tcp_limit,
            "pids.peak: peak process count reported": _exists(pids, "pids.peak"),
            "oom_kill count in memory.oom_control": "oom_kill" in _read(memory, "memory.oom_control"),
            "freezer hierarchy delegated: sessions can be paused": self.freezer_parent is not None,
        }

    def nested(self, cgroup: JobCgroup) -> V1Backend:
        assert isinstance(cgroup, V1JobCgroup)
        inner = copy.copy(self)
        inner.parent_dirs = dict(cgroup.by_controller)
        inner.cpu_dir_reusable = False  # its cpuacct directory is the session's
        inner.swappiness_inherited = True  # from the session's cgroup, which has it
        return inner

    def create_job(self, cpu_quota: bool = True, reuse: str | None = None) -> JobCgroup:
        name = self.job_name()
        dirs = {c: os.path.join(p, name) for c, p in self.parent_dirs.items() if cpu_quota or c != "cpu"}
        taken_over: list[str] = []
        if reuse is not None and self.cpu_dir_reusable and not cpu_quota:
            dirs["cpuacct"] = reuse
            taken_over.append(reuse)
        created: list[str] = []
        try:
            for directory in dict.fromkeys(dirs.values()):
                if directory not in taken_over:
                    os.mkdir(directory)
                    created.append(directory)
            if not self.swappiness_inherited:
                write_file(os.path.join(dirs["memory"], "memory.swappiness"), "0")
            return V1JobCgroup(
                dirs, self.has_swap_limit, has_tcp_limit=self.has_tcp_limit, cpu_dir_reusable=self.cpu_dir_reusable,
            )
        except BaseException as exc:
            remove_partial(created + taken_over)
            if isinstance(exc, OSError):
                raise CgroupError(f"cannot create job cgroup: {exc}") from exc
            raise


def _read(directory: str, name: str) -> str:
    with open(os.path.join(directory, name)) as handle:
        return handle.read()


def _exists(directory: str, name: str) -> bool:
    return os.path.exists(os.path.join(directory, name))
