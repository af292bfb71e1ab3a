"""Per-user kernel state between two jobs running at once, on two slots of the worker.

Each job runs as an id of the user's subordinate range that no other running job has
(sandbox/ids.py; the test user gets a range from scripts/test's setup-cgroups), never as
the worker's own user. What the kernel keeps per user therefore cannot carry a signal
from one job to the other or let one job starve the next: the pipe-buffer budget
(pipe-user-pages-soft) and pending signals (RLIMIT_SIGPENDING, of which each job gets a
share). Under a single mapping - every job the worker's user - each of these fails.

The first job fills its budget, says so, and holds (it blocks until it is cancelled);
the second runs start to end meanwhile. The order comes from the first job's streamed
output, not from time.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from hostile.harness import Harness
from sandbox.models import Job, Limits
from worker.client import Client

T = TypeVar("T")
LIMITS = Limits(wall_time="60s")
HOLD = "print('holding', flush=True)\nos.read(os.pipe()[0], 1)\n"
PIPE_FILLER = """import fcntl, os
pipes = 0
try:
    while True:
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
        pipes += 1
except OSError as exc:
    print("filled", pipes, "errno", exc.errno, flush=True)
""" + HOLD
PIPE_PROBE = """import fcntl, os
read_end, write_end = os.pipe()
try:
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    print("ok")
except OSError as exc:
    print("errno", exc.errno)
"""
SIGQUEUE = """import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
class Value(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("pointer", ctypes.c_void_p)]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
def queue():
    if libc.sigqueue(os.getpid(), signal.SIGRTMIN, Value(0)) != 0:
        raise OSError(ctypes.get_errno(), "sigqueue")
"""
SIGNAL_FILLER = SIGQUEUE + """queued = 0
try:
    while True:
        queue()
        queued += 1
except OSError as exc:
    print("filled", queued, "errno", exc.errno, flush=True)
""" + HOLD
SIGNAL_PROBE = SIGQUEUE + """try:
    queue()
    print("ok")
except OSError as exc:
    print("errno", exc.errno)
"""


def _while_holding(harness: Harness, source: str, then: Callable[[], T], *args: str) -> tuple[str, T]:
    """Run ``source`` (which ends by holding) on the worker; once it says "holding",
    ``then()`` - while it still runs - and cancel it. Its output and ``then``'s value."""
    client = harness.client
    job_id = client.submit(Job(cmd=["python3", "-c", source, *args], limits=LIMITS), stream=True)
    said = bytearray()
    outcome: list[T] = []

    def on_output(stream: str, offset: int, data: bytes) -> None:
        said.extend(data if stream == "stdout" else b"")
        if said.endswith(b"holding\n") and not outcome:
            outcome.append(then())
            client.cancel(job_id)

    assert "cancelled" in (client.wait(job_id, on_output).error or "")
    assert outcome, f"the first job never held: {bytes(said)!r}"
    return said.decode(), outcome[0]


def _alongside(harness: Harness, source: str) -> str:
    """The stdout of ``source``, run to its end on a second connection (and slot)."""
    with Client(harness.worker.socket_path, timeout=120) as second:
        result = second.run(Job(cmd=["python3", "-c", source], limits=LIMITS))
    assert result.status.value == "ok", result
    return result.stdout.decode()


def _host_uid(marker: str) -> int:
    """The host uid of the one process whose arguments carry ``marker`` (its real,
    effective, saved and file system uids are the same)."""
    found = []
    for pid in (entry for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker.encode() not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/status") as handle:
                uids = next(line for line in handle if line.startswith("Uid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        assert len(set(uids)) == 1, uids
        found.append(int(uids[0]))
    assert len(found) == 1, (marker, found)
    return found[0]


def test_concurrent_jobs_are_different_host_users(harness: Harness, record_property) -> None:
    record_property("hostile_case", "job_ids_two_running_jobs")
    record_property("hostile_class", "leak")
    record_property("expected", "two host uids, neither the worker's")
    first_marker, second_marker = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"

    def look_at_both() -> tuple[int, int]:
        with Client(harness.worker.socket_path, timeout=120) as second:
            job_id = second.submit(Job(cmd=["python3", "-c", "import os\n" + HOLD, second_marker], limits=LIMITS),
                                   stream=True)
            seen: list[tuple[int, int]] = []

            def on_output(stream: str, offset: int, data: bytes) -> None:
                if b"holding" in data and not seen:
                    seen.append((_host_uid(first_marker), _host_uid(second_marker)))
                    second.cancel(job_id)

            assert "cancelled" in (second.wait(job_id, on_output).error or "")
        return seen[0]

    _, (first, second) = _while_holding(harness, "import os\n" + HOLD, look_at_both, first_marker)
    record_property("got", f"{first}, {second} (worker {os.getuid()})")
    assert first != second
    assert os.getuid() not in (first, second) and 0 not in (first, second)


@pytest.mark.parametrize(("case", "filler", "probe", "errno_name"), [
    ("job_ids_pipe_budget", PIPE_FILLER, PIPE_PROBE, "EPERM"),  # its pipe-buffer budget is full
    ("job_ids_pending_signals", SIGNAL_FILLER, SIGNAL_PROBE, "EAGAIN"),  # its share of signals is queued
])
def test_a_per_user_budget_is_the_jobs_own(harness: Harness, record_property, case: str, filler: str, probe: str,
                                            errno_name: str) -> None:
    """One job fills a per-user kernel budget; another job running meanwhile still has its own."""
    number = getattr(errno, errno_name)
    record_property("hostile_case", case)
    record_property("hostile_class", "resource")
    record_property("expected", f"the filler stops at {errno_name}; the other job's call: ok")
    filled, probed = _while_holding(harness, filler, lambda: _alongside(harness, probe))
    record_property("got", probed.strip())
    assert filled.startswith("filled ") and f" errno {number}\n" in filled, filled
    assert probed == "ok\n"
