"""The systemd way of delegating cgroup v2 (what most production hosts do).

Under systemd the cgroup tree has one writer, systemd. Delegation is a property of a
*unit*, not of a user: a service or scope with ``Delegate=yes`` (and ``User=``) gets a
cgroup its user may manage below, and the process must be started inside it. So on such
hosts ``setup-cgroups`` creates nothing in /sys/fs/cgroup; it checks that systemd really
delegates a scope to the user and says how to start the worker or an ad-hoc command.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

from sandbox.errors import CgroupError

WORKER_UNIT = "contrib/systemd/sandbox-worker.service"
# The probe prints the owner of its own scope's cgroup.subtree_control: the user when
# the scope is delegated, root when it is not (e.g. --uid without -p User=).
_PROBE = 'stat -c %U "/sys/fs/cgroup$(sed -n "s/^0:://p" /proc/self/cgroup)/cgroup.subtree_control"'


def systemd_running() -> bool:
    """sd_booted(3): systemd is PID 1 when this directory exists."""
    return os.path.isdir("/run/systemd/system")


def scope_command(user: str) -> list[str]:
    """The ad-hoc way to run a command in a scope delegated to ``user`` (as root)."""
    return ["systemd-run", "--quiet", "--scope", "-p", "Delegate=yes", "-p", f"User={user}",
            f"--uid={user}", f"--gid={user}", "--"]


def check_scope_delegation(account: pwd.struct_passwd) -> str:
    """Start a throw-away scope the way ``scope_command`` does and check its cgroup is
    handed to the user. Returns the cgroup it got; raises CgroupError otherwise."""
    if shutil.which("systemd-run") is None:
        raise CgroupError("systemd is running but systemd-run is missing")
    probe = f'{_PROBE}; sed -n "s/^0:://p" /proc/self/cgroup'
    done = subprocess.run([*scope_command(account.pw_name), "/bin/sh", "-c", probe],
                          capture_output=True, text=True, timeout=60, check=False)
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2:
        raise CgroupError(f"systemd-run --scope -p Delegate=yes failed: {done.stderr.strip() or done.stdout.strip()}")
    owner, cgroup = lines
    if owner != account.pw_name:
        raise CgroupError(f"systemd did not delegate {cgroup} to {account.pw_name} (owner {owner})")
    return cgroup


def explain(account: pwd.struct_passwd, scope_cgroup: str) -> list[str]:
    user = account.pw_name
    return [
        f"cgroup v2 under systemd: verified that a scope with Delegate=yes is handed to {user} "
        f"(probe ran in {scope_cgroup}); nothing created in /sys/fs/cgroup (systemd owns the tree)",
        f"worker service: install {WORKER_UNIT} with User={user} (Delegate=yes), then "
        "'systemctl daemon-reload && systemctl enable --now sandbox-worker'",
        f"ad hoc: sudo {' '.join(scope_command(user))} sandbox run -- COMMAND",
    ]
