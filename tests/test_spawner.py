"""The host image's spawner (``native/init.c`` MODE "serve", started by the zygote): the
process every host-image sandbox init is cloned from."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import prepare
from sandbox.errors import SetupError
from sandbox.ids import plan_ids
from sandbox.models import Job, Status
from sandbox.profile_cache import ProfileCache
from sandbox.runner import Runner
from sandbox.zygote import Zygote


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    started = Zygote(plan_ids().zygote_argument())
    yield started
    started.close()


def _template() -> prepare.Blueprint:
    cap_last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return prepare.Blueprint(ProfileCache().get("default").bpf, cgroup_fds=[], disk_bytes=1 << 20, cap_last=cap_last)


def _status(pid: int, field: str) -> str:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field + ":"))
    return line.split(":", 1)[1].strip()


def test_the_spawner_is_our_child_and_holds_only_its_channel(zygote):
    # The zygote names the spawner as soon as it has cloned it; once the spawner has
    # answered a request it runs the C init's serve loop, its name and fds final.
    answered = prepare.receive(prepare.order(zygote, _template()))
    assert answered.init_pid > 0, answered.early
    os.kill(answered.init_pid, signal.SIGKILL)
    os.waitpid(answered.init_pid, 0)
    answered.close()
    pid = zygote.spawner_pid
    assert _status(pid, "Name") == "sandbox-spawn"
    assert int(_status(pid, "PPid")) == os.getpid()
    # stdio (/dev/null) and its request channel: nothing of the zygote's, such as the
    # zygote's own channel to us (its EOF would no longer reach the zygote).
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2, 3]
    assert _status(pid, "CapEff") != "0000000000000000"  # what B needs, until C drops it all


def test_a_sandbox_init_is_our_child_in_namespaces_of_its_own(zygote):
    prepared = prepare.receive(prepare.order(zygote, _template()))
    try:
        assert prepared.init_pid > 0, prepared.early
        assert int(_status(prepared.init_pid, "PPid")) == os.getpid()
        for namespace in ("mnt", "pid", "net", "ipc", "uts"):
            assert os.readlink(f"/proc/{prepared.init_pid}/ns/{namespace}") != os.readlink(
                f"/proc/{zygote.spawner_pid}/ns/{namespace}"), namespace
        deadline = time.monotonic() + 10
        while not prepared.ready() and time.monotonic() < deadline:
            select.select([prepared.report_fd], [], [], 1)
        assert prepared.ready(), prepared.early
        # B, a clone of the spawner, does not hold the spawner's request channel.
        channel = os.readlink(f"/proc/{zygote.spawner_pid}/fd/3")
        held = {os.readlink(f"/proc/{prepared.init_pid}/fd/{fd}") for fd in os.listdir(f"/proc/{prepared.init_pid}/fd")}
        assert channel not in held
    finally:
        if prepared.init_pid > 0:  # (never kill(0) or kill(-1): the test's group, or every process of ours)
            os.kill(prepared.init_pid, signal.SIGKILL)
            os.waitpid(prepared.init_pid, 0)
        prepared.close()


def test_a_malformed_request_gets_an_error_and_the_spawner_goes_on(zygote):
    read_end, write_end = os.pipe()
    try:
        zygote.spawn(["too", "few"], [write_end, write_end, write_end])
        with pytest.raises(SetupError, match="a malformed request"):
            zygote.spawned()
        zygote.spawn(_template().init_arguments(), [write_end])  # fewer fds than B needs
        with pytest.raises(SetupError, match="a malformed request"):
            zygote.spawned()
    finally:
        os.close(read_end)
        os.close(write_end)
    test_a_sandbox_init_is_our_child_in_namespaces_of_its_own(zygote)


def test_the_spawner_exits_with_its_channel():
    started = Zygote(plan_ids().zygote_argument())
    pid = started.spawner_pid
    assert Path(f"/proc/{pid}").exists()
    started.close()  # closes the channel, then reaps the spawner: it must have exited
    assert not Path(f"/proc/{pid}").exists()


def test_a_job_after_the_spawner_died_gets_a_new_one():
    runner = Runner()
    try:
        assert runner.run(Job(cmd=["true"])).status is Status.OK
        zygote = runner.sandboxes._zygote
        assert zygote is not None
        os.kill(zygote.spawner_pid, signal.SIGKILL)
        os.waitid(os.P_PID, zygote.spawner_pid, os.WEXITED | os.WNOWAIT)  # dead; left unreaped for Zygote.close
        result = runner.run(Job(cmd=["echo", "again"]))
        assert (result.status, result.stdout) == (Status.OK, b"again\n"), result
        assert runner.sandboxes._zygote is not zygote
    finally:
        runner.close()
