"""A job cgroup's CPU counter, as the supervisor reads it (CPU limit, usage). The sandbox
init (``native/init.c``) reads the same file the same way at the instant it hands the
job to the program stage: the job's CPU account starts there, after the stage's own
set-up."""

from __future__ import annotations

import os

V1 = "cpuacct.usage"  # nanoseconds, one number
V2 = "cpu.stat"  # "usage_usec N" among other keys


def read_cpu_ns(fd: int, kind: str) -> int:
    """Total CPU time of every task in the cgroup, in ns, from an fd open on ``kind``."""
    text = os.pread(fd, 4096, 0)
    if kind == V1:
        return int(text)
    for line in text.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"usage_usec":
            return int(value) * 1000
    raise ValueError(f"no usage_usec in {kind}")
