"""``sandbox setup-cgroups --user NAME``: the one-time admin step (root, idempotent). It
also grants the user the subordinate ids its jobs run as (``ids_setup.py``).

Like isolate's cg keeper, but for an ordinary user: it creates a subtree, hands it to
the user, and leaves the rest of the hierarchy alone. On v1 that is
``<controller>/sandbox/<user>`` in each needed hierarchy (never the host's own cgroup of
this process: on the development hosts that belongs to the machine). On v2 with systemd
(most hosts) delegation belongs to units, so it creates nothing and instead checks that
systemd delegates a scope to the user and says how to start the worker in one
(``systemd.py``). On v2 without systemd it is ``/sys/fs/cgroup/sandbox/<user>`` with the
controllers enabled down to it; v2 also requires the user's worker to *run* inside that
subtree (the common-ancestor rule), so it prints how to start it there.
"""

from __future__ import annotations

import os
import pwd

from sandbox.cgroup_files import read_text, write_file
from sandbox.cgroups import default_v1_parent, systemd
from sandbox.cgroups.v1 import CONTROLLERS as V1_CONTROLLERS
from sandbox.cgroups.v1 import FREEZER, v1_mounts
from sandbox.cgroups.v2 import CONTROLLERS as V2_CONTROLLERS
from sandbox.cgroups.v2 import v2_mount
from sandbox.errors import CgroupError
from sandbox.ids_setup import provision_ids

V1_DELEGATED_FILES = ("cgroup.procs", "tasks")
V2_DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")


def setup_cgroups(user: str) -> list[str]:
    """Create and delegate the subtree, and grant the user the subordinate ids its jobs
    run as (``ids_setup.py``); returns one line per action taken or found."""
    if os.geteuid() != 0:
        raise CgroupError("setup-cgroups must run as root (it changes ownership in /sys/fs/cgroup)")
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise CgroupError(f"no such user: {user}") from None
    mount_point = v2_mount()
    if mount_point is not None and systemd.systemd_running():
        lines = systemd.explain(account, systemd.check_scope_delegation(account))
    elif mount_point is not None:
        lines = setup_v2_subtree(mount_point, account)
    else:
        lines = delegate_v1(account)
    return lines + provision_ids(account)


def delegate_v1(account: pwd.struct_passwd) -> list[str]:
    """The v1 subtree of ``account`` in each needed hierarchy (root: what every run as
    root makes for itself, so that root needs no set-up step)."""
    mounts = v1_mounts()
    missing = [c for c in V1_CONTROLLERS if c not in mounts]
    if missing:
        raise CgroupError(f"cgroup v1 controllers not mounted: {', '.join(missing)}")
    lines = []
    for directory in dict.fromkeys(os.path.join(mounts[c], default_v1_parent(account.pw_name)) for c in V1_CONTROLLERS):
        lines.append(_delegate(directory, account, V1_DELEGATED_FILES))
    # Sessions' pause (sandbox/session.py) freezes a session in a hierarchy of its own.
    if FREEZER in mounts:
        lines.append(_delegate(os.path.join(mounts[FREEZER], default_v1_parent(account.pw_name)), account,
                               V1_DELEGATED_FILES))
    # Job cgroups inherit it (no swapping inside a job; its memory limit covers swap
    # too), so the worker need not write it into each one.
    write_file(os.path.join(mounts["memory"], default_v1_parent(account.pw_name), "memory.swappiness"), "0")
    lines.append("set memory.swappiness 0 for the job cgroups")
    return lines


def setup_v2_subtree(mount_point: str, account: pwd.struct_passwd) -> list[str]:
    """The v2 way without systemd, where nothing else writes the tree: a directory made
    and handed over like v1's, with the controllers enabled on the way down to it."""
    lines: list[str] = []
    base = os.path.join(mount_point, "sandbox")
    user_dir = os.path.join(base, account.pw_name)
    for parent in (mount_point, base):
        if parent != mount_point:
            _mkdir(parent, lines)
        enabled = read_text(os.path.join(parent, "cgroup.subtree_control")).split()
        wanted = [c for c in V2_CONTROLLERS if c not in enabled]
        if wanted:
            write_file(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in wanted))
            lines.append(f"enabled {' '.join(wanted)} in {parent}/cgroup.subtree_control")
    lines.append(_delegate(user_dir, account, V2_DELEGATED_FILES))
    lines.append(
        f"v2: start the worker inside {user_dir} (e.g. 'systemd-run --scope -p Delegate=yes "
        f"--uid={account.pw_name} ...' or a unit with Delegate=yes), or set SANDBOX_CGROUP_PARENT"
    )
    return lines


def _delegate(directory: str, account: pwd.struct_passwd, files: tuple[str, ...]) -> str:
    lines: list[str] = []
    _mkdir(os.path.dirname(directory), lines)
    _mkdir(directory, lines)
    for path in (directory, *(os.path.join(directory, name) for name in files)):
        os.chown(path, account.pw_uid, account.pw_gid)
    return f"delegated {directory} to {account.pw_name}" + (" (created)" if lines else " (already there)")


def _mkdir(directory: str, lines: list[str]) -> None:
    try:
        os.mkdir(directory, 0o755)
        lines.append(f"created {directory}")
    except FileExistsError:
        pass
