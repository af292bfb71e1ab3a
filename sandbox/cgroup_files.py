"""A job cgroup's limits as the kernel's control files take them, and the bare reads and
writes of control files. Light on purpose (the standard library and the models): the
worker's trio process writes a job's limits too, before its direct hand-over
(worker/handover.py), and loads no cgroup backend.
"""

from __future__ import annotations

import os
from typing import Any

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
