"""The admin step, which needs root: scripts/test runs these as root after the main
suite (which runs as the unprivileged test user)."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

from workerutil import SANDBOX_CLI
from sandbox.cgroups.systemd import systemd_running
from sandbox.cgroups.v1 import CONTROLLERS, v1_mounts
from sandbox.cgroups.v2 import v2_mount

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
        for controller in CONTROLLERS:
            directory = os.path.join(mounts[controller], "sandbox", user)
            for path in (directory, os.path.join(directory, "cgroup.procs")):
                assert os.stat(path).st_uid == account.pw_uid, path
            # Nothing outside the delegated directory changed hands.
            assert os.stat(os.path.dirname(directory)).st_uid == 0


def test_setup_cgroups_rejects_unknown_user():
    done = subprocess.run([*SANDBOX_CLI, "setup-cgroups", "--user", "no-such-user-xyz"], capture_output=True)
    assert done.returncode == 125
    assert b"no such user" in done.stderr
