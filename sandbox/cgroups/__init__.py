"""Choose the cgroup backend for this host: v2 where a cgroup2 hierarchy carries the
controllers, v1 otherwise (hybrid hosts such as the development machines).

``SANDBOX_CGROUP_PARENT`` overrides where job cgroups go (a path relative to the
hierarchy root); the default is what ``sandbox setup-cgroups`` creates on v1 and the
caller's own (delegated) cgroup on v2. Root needs no set-up step on v1: it makes its own
subtree (``sandbox/root`` in each hierarchy, as ``setup-cgroups`` would for a user) -
beside whatever cgroup the machine put the caller in, never inside it.
"""

from __future__ import annotations

import os
import pwd

from sandbox.cgroup_files import CgroupUsage
from sandbox.cgroups.base import CgroupBackend, JobCgroup, current_user
from sandbox.cgroups.v1 import V1Backend
from sandbox.cgroups.v2 import V2Backend, v2_mount

__all__ = ["CgroupBackend", "CgroupUsage", "JobCgroup", "default_v1_parent", "open_backend"]

PARENT_ENV = "SANDBOX_CGROUP_PARENT"
V1_ROOT = "sandbox"


def default_v1_parent(user: str) -> str:
    return f"{V1_ROOT}/{user}"


def open_backend() -> CgroupBackend:
    """The backend for this process; raises CgroupError saying what is missing."""
    parent = os.environ.get(PARENT_ENV)
    mount_point = v2_mount()
    if mount_point is not None:
        return V2Backend(mount_point, parent)
    if parent is None and os.geteuid() == 0:
        from sandbox.cgroups.setup import delegate_v1  # setup imports this module

        delegate_v1(pwd.getpwuid(0))
    return V1Backend(parent or default_v1_parent(current_user()))
