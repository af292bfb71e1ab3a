"""Kernel memory a job can pile up counts against its memory limit, or is capped.

Each case runs tests/programs/pile.c, which holds one kind of kernel memory (socket
buffers, pipe buffers, SysV messages and shared memory, POSIX message queues, epoll
items) until a
call refuses or eight times the job's memory limit is held, printing its running total.
Without accounting the total goes far past the limit while the cgroup shows almost
nothing (TCP buffers on cgroup v1 did: 490 MB queued under a 64 MiB limit); with it the
job is OOM-killed or the kernel refuses near the limit.
"""

from __future__ import annotations

import re

import pytest

from sandbox.models import Status

pytestmark = pytest.mark.cgroup

LIMIT = 32 << 20
TARGET = 8 * LIMIT
# Per-socket and per-pipe reserves the kernel charges in batches: a little over the limit.
SLACK = 1.25


def _held(stdout: bytes) -> int:
    totals = [int(n) for n in re.findall(rb"^held (\d+)$", stdout, re.MULTILINE)]
    return max(totals, default=0)


@pytest.mark.parametrize(("kind", "limits"), [
    ("tcp", {}), ("unix", {}), ("pipe", {}), ("msg", {}), ("shm", {}),
    # epoll items are bounded by open files too: with many, they go far past the limit
    ("epoll", {"open_files": 4096}),
])
def test_kernel_memory_is_bounded_by_the_job_limit(run_program, kind: str, limits: dict[str, object]) -> None:
    result = run_program("pile", kind, str(TARGET), memory=str(LIMIT), wall_time="60s", **limits)
    held = _held(result.stdout)
    assert b"reached" not in result.stdout, (kind, held, result)
    assert result.status in (Status.OK, Status.MEMORY_LIMIT), result
    # It really piled memory up (not refused at the first call for another reason)...
    assert held >= LIMIT // 4, (kind, held, result.stdout[-300:])
    # ...and no more than the limit allows.
    assert held <= LIMIT * SLACK, (kind, held, result.stdout[-300:])


def test_posix_message_queues_are_capped_by_their_rlimit(run_program) -> None:
    """POSIX queues are bounded per user by RLIMIT_MSGQUEUE (800 KiB by default), far
    below any job limit: mq_open refuses the next queue with EMFILE."""
    result = run_program("pile", "mqueue", str(TARGET), memory=str(LIMIT))
    assert result.status == Status.OK, result
    assert b"stopped: mq_open errno=24" in result.stdout, result.stdout[-300:]
    assert 0 < _held(result.stdout) <= 1 << 20
