"""A job cgroup's limits as the kernel's control files take them, its counters as they
are read, and the bare reads and writes of control files. Light on purpose (the standard
library and the models): the worker's trio process writes a job's limits too, before its
direct hand-over (worker/handover.py), and reads the usage of the jobs it supervises
itself (worker/supervision.py); it loads no cgroup backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sandbox.cpucounter import V1, V2, read_cpu_ns
from sandbox.errors import CgroupError
from sandbox.models import Limits

CFS_PERIOD_US = 100_000  # v1's cpu.cfs_period_us
CPU_PERIOD_US = 100_000  # v2's cpu.max period
TCP_LIMIT = "memory.kmem.tcp.limit_in_bytes"


def write_limits(limit_files: dict[str, Any], limits: Limits) -> None:
    """Write a job's limits into the cgroup ``JobCgroup.limit_files`` described, from a
    process that does not hold it (the worker's direct hand-over), over the limits its
    holder wrote there before. Raises CgroupError (or OSError for a file it reads)."""
    if limit_files["version"] == 2:
        write_v2(limit_files["directory"], limits)
    else:
        write_v1(limit_files["dirs"], limits, has_swap_limit=limit_files["swap"], has_tcp_limit=limit_files["tcp"],
                 fresh=False)


def write_v1(dirs: dict[str, str], limits: Limits, *, has_swap_limit: bool, has_tcp_limit: bool, fresh: bool) -> None:
    """Write memory, pids and CPU quota limits into a job cgroup's directories (``dirs``,
    by controller); ``fresh``: none were written yet (the kernel's are unlimited)."""
    memory = dirs["memory"]
    # memsw must stay >= the memory limit at every step: order the writes accordingly
    # (a new cgroup's limits are unlimited: nothing to read).
    swap_limit = os.path.join(memory, "memory.memsw.limit_in_bytes")
    if has_swap_limit and not fresh:
        if limits.memory_bytes > read_int(os.path.join(memory, "memory.limit_in_bytes")):
            write_file(swap_limit, str(limits.memory_bytes))
    write_file(os.path.join(memory, "memory.limit_in_bytes"), str(limits.memory_bytes))
    if has_swap_limit:
        write_file(swap_limit, str(limits.memory_bytes))
    if has_tcp_limit:
        # v1 charges TCP (and UDP) socket buffers to a counter of their own, and only
        # once a limit is written: without it a job queues gigabytes in socket
        # buffers on lo that no memory limit sees. Capped at the memory limit, so a
        # job holds at most twice its limit in all (v2 charges sockets to memory).
        write_file(os.path.join(memory, TCP_LIMIT), str(limits.memory_bytes))
    write_file(os.path.join(dirs["pids"], "pids.max"), str(limits.pids))
    if "cpu" in dirs:  # (made only for the jobs that may need a quota)
        cpu = dirs["cpu"]
        quota = -1 if limits.cpus is None else round(limits.cpus * CFS_PERIOD_US)
        write_file(os.path.join(cpu, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
        write_file(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota))


def write_v2(directory: str, limits: Limits) -> None:
    """Write memory, pids and CPU quota limits into a job cgroup's directory."""
    write_file(os.path.join(directory, "memory.max"), str(limits.memory_bytes))
    write_file(os.path.join(directory, "pids.max"), str(limits.pids))
    quota = "max" if limits.cpus is None else str(round(limits.cpus * CPU_PERIOD_US))
    write_file(os.path.join(directory, "cpu.max"), f"{quota} {CPU_PERIOD_US}")


# Control files are read and written with bare os calls: a job reads and writes a dozen
# of them on its critical path, and Python's file objects cost three times the system
# calls (fstat, ioctl, lseek) and a buffered wrapper each.


def write_file(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc


def read_text(path: str) -> str:
    """A control file's whole text, read until EOF."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def read_int(path: str) -> int:
    return int(read_text(path).split()[0])


@dataclass
class CgroupUsage:
    """A job cgroup's counters as read at one moment, or as a difference of two
    readings (``Counters.since``): what a Result's usage is made from."""

    cpu_ns: int
    cpu_user_ns: int
    cpu_sys_ns: int
    memory_peak_bytes: int | None
    oom_kills: int
    pids_peak: int | None


@dataclass
class Counters:
    """A job cgroup's counter files, open, so a job reads each with one pread instead
    of an open, a read and a close on its critical path. ``JobCgroup`` opens them where
    the cgroup is made; a launcher's offer of a warm sandbox gives the worker copies
    (worker/handover.py). ``fds`` by name (a file this kernel lacks is left out):
    "user", "sys" (v1), "peak", "oom" (v1 memory.oom_control, v2 memory.events),
    "pids_now", "pids_peak", "procs"."""

    version: int
    cpu_fd: int  # the CPU counter (``cpucounter``): cpuacct.usage on v1, cpu.stat on v2
    fds: dict[str, int]

    def cpu_ns(self) -> int:
        """Total CPU time of every task in the cgroup, as the kernel shows it."""
        return read_cpu_ns(self.cpu_fd, V1 if self.version == 1 else V2)

    def raw(self) -> CgroupUsage:
        """Every counter as the kernel shows it."""
        if self.version == 1:
            cpu_ns, user_ns, sys_ns = self.cpu_ns(), self._int("user") or 0, self._int("sys") or 0
        else:
            stat = parse_keyed(os.pread(self.cpu_fd, 4096, 0).decode())
            cpu_ns, user_ns, sys_ns = (stat[key] * 1000 for key in ("usage_usec", "user_usec", "system_usec"))
        return CgroupUsage(
            cpu_ns=cpu_ns,
            cpu_user_ns=user_ns,
            cpu_sys_ns=sys_ns,
            memory_peak_bytes=self._int("peak"),
            oom_kills=parse_keyed((self.text("oom") or b"").decode()).get("oom_kill", 0),
            pids_peak=self._int("pids_peak"),
        )

    def since(self, base: CgroupUsage) -> CgroupUsage:
        """What was used since ``base`` was read (the peaks: since they were reset)."""
        raw = self.raw()
        cpu_ns = raw.cpu_ns - base.cpu_ns
        user_ns, sys_ns = split_cpu_time(cpu_ns, raw.cpu_user_ns - base.cpu_user_ns, raw.cpu_sys_ns - base.cpu_sys_ns)
        return CgroupUsage(
            cpu_ns=cpu_ns,
            cpu_user_ns=user_ns,
            cpu_sys_ns=sys_ns,
            memory_peak_bytes=raw.memory_peak_bytes,
            oom_kills=raw.oom_kills - base.oom_kills,
            pids_peak=raw.pids_peak,
        )

    def pids(self) -> list[int]:
        """Processes in the cgroup (its first hierarchy's, on v1)."""
        return [int(pid) for pid in (self.text("procs") or b"").split()]

    def empty(self) -> bool:
        """Whether no task of the job is left: its pids controller's count, one number,
        where listing cgroup.procs makes the kernel build a list of pids (and on v1 free
        it from a kernel worker a second later). A task that exited but is not reaped
        yet still counts: the job is then not over yet, which only waits longer."""
        count = self._int("pids_now")
        return not self.pids() if count is None else count == 0

    def text(self, name: str) -> bytes | None:
        """The text of a counter file now; None if this kernel has no such file."""
        fd = self.fds.get(name)
        return None if fd is None else os.pread(fd, 1 << 16, 0)

    def _int(self, name: str) -> int | None:
        text = self.text(name)
        return None if text is None else int(text.split()[0])

    def close(self) -> None:
        for fd in (self.cpu_fd, *self.fds.values()):
            os.close(fd)
        self.cpu_fd, self.fds = -1, {}


def split_cpu_time(total_ns: int, user_sampled_ns: int, sys_sampled_ns: int) -> tuple[int, int]:
    """User and system time that add up to the exact total. The kernel measures a
    cgroup's total CPU time exactly but splits it into user and system by sampling at
    clock ticks (4 ms here), so a short job can show 4 ms of system time and 1 ms in
    all. As the kernel does for getrusage (cputime_adjust), the total is divided in the
    sampled proportion, and counts as user time when no tick sampled it."""
    sampled = user_sampled_ns + sys_sampled_ns
    if sampled <= 0:
        return total_ns, 0
    user_ns = total_ns * user_sampled_ns // sampled
    return user_ns, total_ns - user_ns


def parse_keyed(text: str) -> dict[str, int]:
    """Parse "key value" lines (memory.events, cpu.stat, oom_control)."""
    result = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            result[key] = int(value)
    return result
