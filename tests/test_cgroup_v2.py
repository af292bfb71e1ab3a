"""What only cgroup v2 offers, checked on a real v2 kernel (tests/vm/run boots one):
the supervisor leaf, cgroup.kill, group OOM kills, cpu.max throttling as the kernel
measures it. Skipped on v1 hosts, where the v1 backend cannot offer them."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hoststate import reap_exited_children

from sandbox.cgroups import JobCgroup
from sandbox.cgroups.base import cgroup_pids, read_keyed
from sandbox.cgroups.v2 import CONTROLLERS, SUPERVISOR_LEAF, own_cgroup
from sandbox.models import Limits, Status
from sandbox.runner import Runner

pytestmark = pytest.mark.cgroup


@pytest.fixture(autouse=True)
def v2_only(runner: Runner) -> None:
    if runner.backend is None or runner.backend.version != 2:
        pytest.skip("needs a delegated cgroup v2 subtree (tests/vm/run)")


@pytest.fixture
def job_cgroup(runner: Runner, request: pytest.FixtureRequest) -> Iterator[JobCgroup]:
    """A job cgroup made directly by the backend; limits from the test's `limits` mark."""
    mark = request.node.get_closest_marker("limits")
    assert runner.backend is not None
    cgroup = runner.backend.create_job()
    try:
        cgroup.apply_limits(Limits(**(mark.kwargs if mark else {})))
        yield cgroup
    finally:
        cgroup.destroy()


def start_in(cgroup: JobCgroup, argv: list[str]) -> int:
    """Fork a child that joins the cgroup (as the sandbox's program stage does when the
    kernel cannot clone it into the cgroup) and execs argv."""
    pid = os.fork()
    if pid == 0:
        try:
            for fd in cgroup.attach_fds:  # v2: the cgroup's directory (JobCgroup.JOIN)
                procs = os.open("cgroup.procs", os.O_WRONLY, dir_fd=fd)
                os.write(procs, b"0")
            devnull = os.open(os.devnull, os.O_RDWR)
            for target in (1, 2):
                os.dup2(devnull, target)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid


def reap_all(first: int, cgroup: JobCgroup) -> int:
    """Wait for ``first``, then for the job's cgroup to empty, and reap every orphan of the
    job reparented to us (we are a subreaper). Once the cgroup is empty every process of
    the job has exited, and each was reparented before its parent could be reaped: what
    is left are zombies, reaped here - and live children that are not the job's (the
    session Runner's zygote), left alone. Returns the status of ``first``."""
    _, status = os.waitpid(first, 0)
    assert wait_for(lambda: not cgroup.pids()), cgroup.pids()
    reap_exited_children()
    return status


def wait_for(condition, timeout: float = 60.0) -> bool:
    """Poll an observable condition (not a blind sleep) until it holds or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_runner_lives_in_a_leaf_and_delegates_controllers(runner: Runner):
    assert runner.backend is not None
    parent = runner.backend.parents()[0]
    assert cgroup_pids(parent) == [], "no-internal-processes: the parent must hold no process"
    assert own_cgroup().endswith(f"/{SUPERVISOR_LEAF}")
    enabled = Path(parent, "cgroup.subtree_control").read_text().split()
    assert set(CONTROLLERS) <= set(enabled)


def test_a_second_runner_reuses_the_delegated_parent(runner: Runner):
    # A process started from inside the leaf (a CLI, a helper) must not nest a tree there.
    assert runner.backend is not None
    second = Runner()
    try:
        assert second.backend.parents() == runner.backend.parents()  # type: ignore[union-attr]
    finally:
        second.close()


@pytest.mark.limits(memory="64M", pids=100)
def test_job_cgroup_has_the_v2_limits(job_cgroup: JobCgroup):
    directory = Path(job_cgroup.directories[0])
    assert (directory / "memory.max").read_text().strip() == str(64 << 20)
    assert (directory / "memory.oom.group").read_text().strip() == "1"
    assert (directory / "pids.max").read_text().strip() == "100"
    if (directory / "memory.swap.max").exists():
        assert (directory / "memory.swap.max").read_text().strip() == "0"


@pytest.mark.limits(pids=64)
def test_cgroup_kill_stops_a_fork_storm(job_cgroup: JobCgroup):
    directory = job_cgroup.directories[0]
    storm = "storm() { storm & storm & wait; }; storm"
    first = start_in(job_cgroup, ["/bin/bash", "-c", storm])
    try:
        assert wait_for(lambda: len(job_cgroup.pids()) >= 16), "the storm never got going"
        # One write, no kill loop: every process dies, forks in flight included.
        Path(directory, "cgroup.kill").write_text("1")
        assert wait_unpopulated(directory, timeout=60), job_cgroup.pids()
        assert job_cgroup.pids() == []
    finally:
        job_cgroup.kill_all()
        reap_all(first, job_cgroup)


def wait_unpopulated(directory: str, timeout: float) -> bool:
    """Block on cgroup.events (the kernel signals changes with POLLPRI) until the cgroup
    holds no process."""
    deadline = time.monotonic() + timeout
    fd = os.open(os.path.join(directory, "cgroup.events"), os.O_RDONLY)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while b"populated 0" not in os.pread(fd, 4096, 0):
            if time.monotonic() > deadline:
                return False
            poller.poll((deadline - time.monotonic()) * 1000)
        return True
    finally:
        os.close(fd)


@pytest.mark.limits(cpus=0.5)
def test_cpu_max_throttling_is_measured(job_cgroup: JobCgroup, programs):
    start = time.monotonic()
    status = reap_all(start_in(job_cgroup, [str(programs["spin"]), "300"]), job_cgroup)
    wall = time.monotonic() - start
    assert os.waitstatus_to_exitcode(status) == 0
    stat = read_keyed(os.path.join(job_cgroup.directories[0], "cpu.stat"))
    # 300 ms of CPU at 50 ms per 100 ms period: 6 periods, the first 5 of them throttled
    # for about 50 ms each (allow one period of slack for where the first one starts).
    assert stat["nr_throttled"] >= 4, stat
    assert stat["throttled_usec"] >= 150_000, stat
    assert wall >= 0.5, wall


def test_group_oom_kills_the_whole_job(run, programs):
    # memory.oom.group=1: the OOM killer takes the shell and its sleeping child along
    # with the allocator, so the job ends as MEMORY_LIMIT instead of waiting out the
    # wall clock (where the kernel kills only the allocator, `wait` would block).
    script = "sleep 1000 & /work/touch_memory 512; wait"
    result = run(["sh", "-c", script], files={"/work/touch_memory": programs["touch_memory"]},
                 memory="64M", wall_time="60s")
    assert result.status is Status.MEMORY_LIMIT, result
    assert result.usage.oom_killed
    assert result.usage.wall_ms < 60_000


WITHOUT_CLONE3 = """
import errno, json, pyseccomp
no_clone3 = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
no_clone3.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
no_clone3.load()
# (Loaded unprivileged, the filter sets no_new_privs, under which the setuid newuidmap
# cannot map a range of job ids: the single mapping here.)
import sandbox.ids
sandbox.ids.ID_MAPPERS = ("/nonexistent/newuidmap", "/nonexistent/newgidmap")
from sandbox.models import Job, Limits
from sandbox.runner import Runner
runner = Runner()
try:
    quiet = runner.run(Job(cmd=["true"]))
    hungry = runner.run(Job(cmd=["python3", "-c", "b = bytearray(256 << 20)"], limits=Limits(memory="64M")))
finally:
    runner.close()
print(json.dumps({"quiet": [quiet.status.value, quiet.usage.pids_peak, quiet.usage.memory_peak_bytes],
                  "hungry": hungry.status.value, "errors": [quiet.error, hungry.error]}))
"""


def test_without_clone3_the_program_stage_joins_through_cgroup_procs():
    """Before 5.7 there is no clone3, so no CLONE_INTO_CGROUP: the sandbox init forks the
    program stage, which writes itself into the job cgroup's cgroup.procs. A filter that
    answers clone3 with ENOSYS, for a process and everything it starts, makes this kernel
    look like one of those; the job must still be counted and limited by its cgroup."""
    completed = subprocess.run(
        [sys.executable, "-c", WITHOUT_CLONE3], capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    status, pids_peak, memory_peak = report["quiet"]
    assert status == "ok" and pids_peak == 1 and memory_peak > 0, report
    assert report["hungry"] == "memory_limit", report
