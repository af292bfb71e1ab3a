"""Sessions through the engine (``sandbox/session.py``, a Runner's sandboxes): state
lives between execs, an exec's limit ends the exec and not the session, each exec has
its own cgroup below the session's, and a deleted session leaves nothing behind."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator

import pytest

from sandbox.errors import JobError
from sandbox.models import Blob, Collect, InputFile, Job, Limits, SessionSpec, Status
from sandbox.runner import Runner
from sandbox.session import Session, SessionGone

pytestmark = pytest.mark.cgroup

MIB = 1 << 20


@pytest.fixture
def session(runner: Runner) -> Iterator[Session]:
    opened = Session(runner, SessionSpec(limits=Limits(memory="256M", pids=64)))
    try:
        yield opened
    finally:
        opened.delete()
        runner.tidy()


def sh(script: str, **limits: object) -> Job:
    return Job(cmd=["sh", "-c", script], limits=Limits(**limits))  # type: ignore[arg-type]


def test_files_written_by_one_exec_are_read_by_the_next(session):
    first = session.exec(sh("echo kept > /work/state && echo t > /tmp/t && echo written"))
    assert first.status is Status.OK, first
    assert first.stdout == b"written\n"
    second = session.exec(sh("cat /work/state /tmp/t"))
    assert second.status is Status.OK, second
    assert second.stdout == b"kept\nt\n"


def test_each_exec_has_its_own_usage(session, programs):
    busy = session.exec(Job(cmd=["/work/spin"], limits=Limits(cpu_time="300ms"), files=[
        InputFile("/work/spin", Blob(path=str(programs["spin"])), 0o755)]))
    assert busy.status is Status.TIME_LIMIT
    idle = session.exec(sh("true"))
    assert idle.status is Status.OK
    assert busy.usage.cpu_ms >= 300
    assert idle.usage.cpu_ms < 100  # not the spin's: a cgroup of its own


def test_time_limit_in_one_exec_leaves_the_session_usable(session, programs):
    session.exec(sh("echo before > /work/mark"))
    result = session.exec(Job(cmd=["/work/spin"], limits=Limits(cpu_time="200ms", wall_time="5s"), files=[
        InputFile("/work/spin", Blob(path=str(programs["spin"])), 0o755)]))
    assert result.status is Status.TIME_LIMIT
    after = session.exec(sh("cat /work/mark"))
    assert after.status is Status.OK
    assert after.stdout == b"before\n"


def test_memory_limit_in_one_exec_leaves_the_session_usable(session, programs):
    result = session.exec(Job(cmd=["/work/touch_memory", "256"], limits=Limits(memory="32M"), files=[
        InputFile("/work/touch_memory", Blob(path=str(programs["touch_memory"])), 0o755)]))
    assert result.status is Status.MEMORY_LIMIT
    assert result.usage.memory_peak_bytes is None or result.usage.memory_peak_bytes <= 32 * MIB
    after = session.exec(sh("ls /work"))
    assert after.status is Status.OK
    assert b"touch_memory" in after.stdout


def test_session_memory_limit_holds_over_a_larger_exec_limit(runner, programs):
    small = Session(runner, SessionSpec(limits=Limits(memory="48M")))
    try:
        result = small.exec(Job(cmd=["/work/touch_memory", "128"], limits=Limits(memory="512M"), files=[
            InputFile("/work/touch_memory", Blob(path=str(programs["touch_memory"])), 0o755)]))
        assert result.status is Status.MEMORY_LIMIT
        assert small.exec(sh("true")).status is Status.OK
    finally:
        small.delete()
        runner.tidy()


def test_violation_in_one_exec_leaves_the_session_usable(session):
    result = session.exec(Job(cmd=["python3", "-c", "import ctypes; ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)"]))
    assert result.status is Status.SYSCALL_VIOLATION, result
    assert session.exec(sh("echo alive")).stdout == b"alive\n"


def test_background_processes_end_with_their_exec(session):
    result = session.exec(sh("sleep 1000 & echo started"))
    assert result.stdout == b"started\n"
    assert session.exec(sh("ps -e -o comm= | grep -c sleep || true")).stdout == b"0\n"


def test_collect_and_input_files_work_per_exec(session):
    session.exec(Job(cmd=["sh", "-c", "cp /tmp/in /work/out"],
                     files=[InputFile("/tmp/in", Blob(data=b"payload"), 0o644)]))
    result = session.exec(Job(cmd=["true"], collect=[Collect("/work/out")]))
    assert result.files == {"/work/out": b"payload"}


def test_exec_after_delete_is_refused_and_nothing_is_left(runner):
    opened = Session(runner, SessionSpec())
    assert opened.exec(sh("true")).status is Status.OK
    directories = opened.cgroup_directories
    opened.delete()
    runner.tidy()
    with pytest.raises(SessionGone):
        opened.exec(sh("true"))
    assert not any(os.path.exists(d) for d in directories)


def test_stop_ends_the_running_exec_and_keeps_the_session(session):
    results = []
    trapped = threading.Event()
    script = "echo x > /work/kept; trap 'exit 7' TERM; echo trapped; while :; do :; done"
    exec_thread = threading.Thread(target=lambda: results.append(session.exec(
        sh(script, wall_time="20s", cpu_time="20s"), on_output=lambda stream, offset, data: trapped.set())))
    exec_thread.start()
    try:
        assert trapped.wait(10)
        assert session.stop(grace_s=5)
    finally:
        exec_thread.join()
    assert results[0].status is Status.RUNTIME_ERROR, results[0]
    assert results[0].exit_code == 7
    assert not session.stop(grace_s=5)  # nothing runs now
    assert session.exec(sh("cat /work/kept")).stdout == b"x\n"


def test_a_paused_session_uses_no_cpu(session, slowdown):
    spinning = threading.Event()
    results = []
    exec_thread = threading.Thread(target=lambda: results.append(session.exec(
        sh("echo spinning; while :; do :; done", wall_time="60s", cpu_time="60s"),
        on_output=lambda stream, offset, data: spinning.set())))
    exec_thread.start()
    try:
        assert spinning.wait(10)
        session.pause()
        frozen_at = session.cpu_ns()
        threading.Event().wait(0.3)  # a window to measure over, not a synchronisation
        assert session.cpu_ns() == frozen_at
        with pytest.raises(JobError, match="paused"):
            session.exec(sh("true"))
        session.resume()
        deadline = time.monotonic() + 10 * slowdown
        while session.cpu_ns() == frozen_at:  # a thawed busy loop moves the counter again
            assert time.monotonic() < deadline, "the session's CPU counter did not move after resume"
            os.sched_yield()
    finally:
        session.stop(grace_s=0)
        exec_thread.join()
    assert results[0].status is Status.SIGNALED
    assert session.exec(sh("echo after")).stdout == b"after\n"


def test_a_paused_session_is_deleted_without_thawing_first(runner):
    opened = Session(runner, SessionSpec())
    spinning = threading.Event()
    results = []
    exec_thread = threading.Thread(target=lambda: results.append(opened.exec(
        sh("echo spinning; while :; do :; done", wall_time="60s"),
        on_output=lambda stream, offset, data: spinning.set())))
    exec_thread.start()
    try:
        assert spinning.wait(10)
        opened.pause()
        opened.delete()
    finally:
        exec_thread.join()
        runner.tidy()
    assert results[0].status is Status.INTERNAL_ERROR or results[0].signal_name == "SIGKILL"


def test_a_session_whose_init_failed_says_why(runner):
    """The init's own reason reaches the caller, not only that it is gone: here it
    refuses a request it does not know (as an init older than the session code would),
    reports why and exits, and the next exec ends the session with that reason."""
    opened = Session(runner, SessionSpec())
    try:
        pidfd = os.pidfd_open(opened.init_pid)
        try:
            opened._sandbox.prepared.job_channel.send(b"bogus")
            assert select.select([pidfd], [], [], 30)[0], "the init did not exit"
        finally:
            os.close(pidfd)
        result = opened.exec(sh("true"))
        assert result.status is Status.INTERNAL_ERROR
        assert "a session request it does not know" in result.error, result.error
        assert opened.closed
    finally:
        opened.delete()
        runner.tidy()


def test_an_init_reaped_by_someone_else_is_still_cleaned_up(runner):
    """The supervisor is a subreaper, and reaping its orphans may take a retired init
    before the supply's cleanup waits for it: the cleanup goes on (its cgroup too)."""
    sandbox = runner.take_sandbox(None, "default", Limits(), image_name="host")
    directories = list(sandbox.cgroup.directories)
    runner.retire(sandbox)
    os.waitpid(sandbox.prepared.init_pid, 0)
    runner.tidy()
    assert not any(os.path.exists(d) for d in directories)
