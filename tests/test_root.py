"""The admin step, which needs root: scripts/test runs these as root after the main
suite (which runs as the unprivileged test user)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest
from workerutil import SANDBOX_CLI

from sandbox.cgroups.setup import setup_v2_subtree
from sandbox.cgroups.systemd import systemd_running
from sandbox.cgroups.v1 import CONTROLLERS, FREEZER, v1_mounts
from sandbox.cgroups.v2 import v2_mount
from sandbox.models import Job, Limits
from sandbox.runner import Runner

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: scripts/test runs it as root")


def test_setup_cgroups_delegates_and_is_idempotent():
    user = os.environ.get("SANDBOX_TEST_USER", "sandbox-test")
    account = pwd.getpwnam(user)
    first = subprocess.run([*SANDBOX_CLI, "setup-cgroups", "--user", user], capture_output=True, text=True)
    second = subprocess.run([*SANDBOX_CLI, "setup-cgroups", "--user", user], capture_output=True, text=True)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    if v2_mount() is not None and systemd_running():
        # The systemd way: a delegated scope is probed, nothing is made in the tree.
        assert f"scope with Delegate=yes is handed to {user}" in second.stdout, second.stdout
        assert f"-p User={user}" in second.stdout
        assert not os.path.exists(os.path.join(v2_mount(), "sandbox"))
        return
    assert "already there" in second.stdout and "created" not in second.stdout
    if v2_mount() is None:
        mounts = v1_mounts()
        for controller in [*CONTROLLERS, *([FREEZER] if FREEZER in mounts else [])]:  # (freezer: a session's pause)
            directory = os.path.join(mounts[controller], "sandbox", user)
            for path in (directory, os.path.join(directory, "cgroup.procs")):
                assert os.stat(path).st_uid == account.pw_uid, path
            # Nothing outside the delegated directory changed hands.
            assert os.stat(os.path.dirname(directory)).st_uid == 0


def test_setup_cgroups_rejects_unknown_user():
    done = subprocess.run([*SANDBOX_CLI, "setup-cgroups", "--user", "no-such-user-xyz"], capture_output=True)
    assert done.returncode == 125
    assert b"no such user" in done.stderr


def test_a_raw_cgroup_v2_subtree_serves_jobs_without_systemd():
    """cgroup v2 without systemd (a host or container with no systemd as the tree's
    writer): setup-cgroups makes /sys/fs/cgroup/sandbox/USER, enables the controllers
    down to it and hands it to the user, whose runner must start inside it. The guest of
    tests/vm/run has systemd, where setup-cgroups delegates a scope instead, so this
    drives the no-systemd path directly."""
    mount_point = v2_mount()
    if mount_point is None:
        pytest.skip("needs cgroup v2 (tests/vm/run)")
    user = os.environ.get("SANDBOX_TEST_USER", "sandbox-test")
    account = pwd.getpwnam(user)
    base = os.path.join(mount_point, "sandbox")
    created_base = not os.path.exists(base)
    user_dir = os.path.join(base, user)
    try:
        setup_v2_subtree(mount_point, account)
        assert os.stat(user_dir).st_uid == account.pw_uid
        hungry = "bytearray(256 << 20)"
        # The shell joins the subtree as root, then becomes the user: the runner inside it
        # makes its supervisor leaf and job cgroups there (the common-ancestor rule).
        script = (
            f'echo $$ > {user_dir}/cgroup.procs && exec setpriv --reuid={user} --regid={user} --init-groups '
            f'{" ".join(SANDBOX_CLI)} run --json --memory 64M -- python3 -c "{hungry}"'
        )
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120, check=False)
        result = json.loads(done.stdout)
        assert result["status"] == "memory_limit", (result, done.stderr)
        assert result["usage"]["oom_killed"] and result["usage"]["memory_peak_bytes"] > 32 << 20, result
        # The job's cgroup is gone with the job; the runner's own leaf stays.
        assert [entry.name for entry in os.scandir(user_dir) if entry.is_dir()] == ["supervisor"]
    finally:
        for directory in (os.path.join(user_dir, "supervisor"), user_dir, *([base] if created_base else [])):
            if os.path.isdir(directory):
                os.rmdir(directory)


def test_root_enforces_every_limit_with_no_set_up_step():
    """Root makes its own cgroup subtree on v1 (beside, never inside, the cgroup the
    machine put it in): its first `sandbox run` enforces memory by the cgroup. (On v2
    root runs jobs under the cgroup it was started in, as any user does.)"""
    if v2_mount() is not None:
        pytest.skip("root's own subtree is a cgroup v1 step")
    env = {name: value for name, value in os.environ.items() if name != "SANDBOX_CGROUP_PARENT"}
    done = subprocess.run(
        [*SANDBOX_CLI, "run", "--json", "--memory", "64M", "--", "python3", "-c", "bytearray(256 << 20)"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    result = json.loads(done.stdout)
    assert result["limits_not_enforced"] == [] and result["warnings"] == [], result
    assert result["status"] == "memory_limit" and result["usage"]["oom_killed"], result
    own_cgroups = Path("/proc/self/cgroup").read_text().splitlines()
    own_memory = next(line.split(":", 2)[2].strip() for line in own_cgroups if line.split(":")[1] == "memory")
    made = os.path.join(v1_mounts()["memory"], "sandbox", "root")
    assert os.path.isdir(made) and not made.startswith(os.path.join(v1_mounts()["memory"], own_memory.strip("/")) + "/")


def test_a_root_job_runs_as_an_unprivileged_host_id():
    """As isolate's boxes do, a root job's processes run as an id of a range no account
    owns - seen from the host while the job runs (it says so on its stdout, which the
    supervisor passes on as it comes), and uid 1000 inside."""
    marker = f"job-id-probe-{os.getpid()}"
    cancel_read, cancel_write = os.pipe()
    seen: dict[str, list[int]] = {}

    def on_output(stream: str, offset: int, data: bytes) -> None:
        if stream == "stdout" and b"ready" in data and not seen:
            for pid in (entry for entry in os.listdir("/proc") if entry.isdigit()):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        if marker.encode() not in handle.read() or int(pid) == os.getpid():
                            continue
                    with open(f"/proc/{pid}/status") as handle:
                        status = dict(line.split(":", 1) for line in handle)
                except OSError:
                    continue
                seen[pid] = [int(value) for value in status["Uid"].split() + status["Gid"].split()]
            os.write(cancel_write, b"x")

    runner = Runner()
    try:
        script = "import os; print(os.getuid(), os.getgid(), 'ready', flush=True); os.read(os.pipe()[0], 1)"
        result = runner.run(Job(cmd=["python3", "-c", script, marker], limits=Limits(wall_time="60s")),
                            cancel_fd=cancel_read, on_output=on_output)
    finally:
        runner.close()
        os.close(cancel_read)
        os.close(cancel_write)
    assert result.stdout.startswith(b"1000 1000 ready"), result
    assert len(seen) == 1, seen
    ids = next(iter(seen.values()))
    assert len(set(ids)) == 1 and ids[0] != 0, ids
    with pytest.raises(KeyError):
        pwd.getpwuid(ids[0])
