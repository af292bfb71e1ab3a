"""cgroup v2 backend: job cgroups under a delegated subtree (systemd ``Delegate=yes``
or a directory ``sandbox setup-cgroups`` chowned to the user).

v2 forbids processes in a cgroup that distributes controllers to children (the
"no internal processes" rule), so before enabling controllers the backend moves every
process of the delegated parent into a ``supervisor`` leaf beside the jobs.
"""

from __future__ import annotations

import os

from sandbox.cgroups.base import (
    CgroupBackend,
    CgroupUsage,
    JobCgroup,
    cgroup_pids,
    current_user,
    read_int,
    read_keyed,
    remove_partial,
    write_file,
)
from sandbox.errors import CgroupError
from sandbox.models import Limits

CONTROLLERS = ("memory", "pids", "cpu")
SUPERVISOR_LEAF = "supervisor"
CPU_PERIOD_US = 100_000


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


class V2JobCgroup(JobCgroup):
    def __init__(self, directory: str) -> None:
        super().__init__([directory], [os.path.join(directory, "cgroup.procs")])
        self.directory = directory
        self._cpu_fd = os.open(os.path.join(directory, "cpu.stat"), os.O_RDONLY | os.O_CLOEXEC)

    def _cpu_stat(self) -> dict[str, int]:
        text = os.pread(self._cpu_fd, 4096, 0).decode()
        return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}

    def apply_limits(self, limits: Limits) -> None:
        write_file(os.path.join(self.directory, "memory.max"), str(limits.memory_bytes))
        write_file(os.path.join(self.directory, "pids.max"), str(limits.pids))
        quota = "max" if limits.cpus is None else str(round(limits.cpus * CPU_PERIOD_US))
        write_file(os.path.join(self.directory, "cpu.max"), f"{quota} {CPU_PERIOD_US}")

    def _raw_cpu_ns(self) -> int:
        return self._cpu_stat()["usage_usec"] * 1000

    def _raw_usage(self) -> CgroupUsage:
        stat = self._cpu_stat()
        peak_file = os.path.join(self.directory, "memory.peak")
        pids_peak_file = os.path.join(self.directory, "pids.peak")
        return CgroupUsage(
            cpu_ns=stat["usage_usec"] * 1000,
            cpu_user_ns=stat["user_usec"] * 1000,
            cpu_sys_ns=stat["system_usec"] * 1000,
            memory_peak_bytes=read_int(peak_file) if os.path.exists(peak_file) else None,
            oom_kills=read_keyed(os.path.join(self.directory, "memory.events")).get("oom_kill", 0),
            pids_peak=read_int(pids_peak_file) if os.path.exists(pids_peak_file) else None,
        )

    def kill_all(self) -> None:
        kill_file = os.path.join(self.directory, "cgroup.kill")
        if os.path.exists(kill_file) and self.pids():
            write_file(kill_file, "1")
        super().kill_all()

    def destroy(self) -> None:
        if self._cpu_fd >= 0:
            os.close(self._cpu_fd)
            self._cpu_fd = -1
        super().destroy()


class V2Backend(CgroupBackend):
    version = 2

    def __init__(self, mount_point: str, parent: str | None) -> None:
        relative = parent if parent is not None else own_cgroup()
        self.parent = os.path.join(mount_point, relative)
        if not os.access(os.path.join(self.parent, "cgroup.subtree_control"), os.W_OK):
            raise CgroupError(
                f"{self.parent} is not delegated to {current_user()}: start under "
                "'systemd-run --user --scope -p Delegate=yes' or run "
                f"'sudo sandbox setup-cgroups --user {current_user()}'"
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
        for pid in cgroup_pids(self.parent):
            try:
                write_file(os.path.join(leaf, "cgroup.procs"), str(pid))
            except CgroupError:
                if pid in cgroup_pids(self.parent):
                    raise
        write_file(os.path.join(self.parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in wanted))

    def parents(self) -> list[str]:
        return [self.parent]

    def features(self) -> dict[str, bool]:
        # Interface files of a leaf show what the kernel offers (the parent may be the root).
        probe = os.path.join(self.parent, SUPERVISOR_LEAF)
        directory = probe if os.path.isdir(probe) else self.parent
        return {
            f"{name}: {meaning}": os.path.exists(os.path.join(directory, name))
            for name, meaning in (
                ("memory.peak", "memory peak reported"),
                ("cgroup.kill", "atomic kill of the job"),
                ("pids.peak", "peak process count reported"),
                ("memory.swap.max", "swap capped"),
            )
        }

    def create_job(self) -> JobCgroup:
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
