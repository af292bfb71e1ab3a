"""Nothing of a job survives it: not its daemons, not its stopped processes, not even
when the supervisor itself is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hoststate import own_processes, reap_exited_children
from workerutil import SANDBOX_CLI

from sandbox.models import Status
from sandbox.runner import Runner

pytestmark = pytest.mark.cgroup


def sleeping(seconds: str) -> list[int]:
    """Host pids of `sleep SECONDS` processes (the marker each test's job uses)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == f"sleep\0{seconds}\0".encode():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll an observable condition (not a blind sleep) until it holds or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def reaped_orphans(survivors: set[int]) -> bool:
    """Reap exited children we did not start; True once only ``survivors`` (processes
    of ours from before, such as the session Runner's zygote) are left."""
    reap_exited_children()
    return own_processes() <= survivors


def test_daemons_and_stopped_processes_die_with_main(run):
    script = (
        "setsid sh -c 'sleep 1001 & sleep 1001' & "   # setsid'd, with a child of its own
        "(sleep 1001 &) ; "                            # double fork: orphaned to init
        "sh -c 'kill -STOP $$; sleep 1001' & "        # stopped
        "echo started"
    )
    result = run(["sh", "-c", script])
    assert result.status is Status.OK
    assert result.stdout == b"started\n"
    assert sleeping("1001") == []


def test_wall_limit_kills_a_stopped_job(run):
    result = run(["sh", "-c", "sleep 1003 & kill -STOP $$"], wall_time="300ms")
    assert result.status is Status.WALL_TIME_LIMIT
    assert sleeping("1003") == []


def test_killed_supervisor_takes_its_job_along_and_is_cleaned_up_after(cgroup_parents, slowdown):
    timeout = 10 * slowdown  # a CLI's start-up is interpreter work: slower machine, longer wait
    survivors = own_processes()
    cli = subprocess.Popen([*SANDBOX_CLI, "run", "--", "sleep", "1002"])
    try:
        assert wait_until(lambda: sleeping("1002"), timeout), "the job never started"
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        # The sandbox init has PDEATHSIG=SIGKILL; its death takes the pid namespace down.
        assert wait_until(lambda: not sleeping("1002"), timeout), "job outlived its supervisor"
        # Its sandbox init was reparented to us (this test process is a subreaper, as the
        # session Runner made it); reap it as any subreaper must.
        assert wait_until(lambda: reaped_orphans(survivors), timeout)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    leftovers = [name for parent in cgroup_parents for name in os.listdir(parent) if name.startswith("job-")]
    assert leftovers, "expected the killed supervisor's cgroup to be left for reaping"
    Runner().close()  # a new runner reaps cgroups whose creator is gone
    assert [name for parent in cgroup_parents for name in os.listdir(parent) if name.startswith("job-")] == []
