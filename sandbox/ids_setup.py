"""The admin step that grants a user the ids its jobs run as (``ids.py``): a range of
subordinate ids in /etc/subuid and /etc/subgid, as rootless podman needs. Part of
``sandbox setup-cgroups`` (root, idempotent): a user that has a range keeps it; one
without gets the next free range of ``RANGE_SIZE`` from ``FIRST_SUBORDINATE`` on, where
useradd would have put it, written by usermod (shadow's own locking of those files).
"""

from __future__ import annotations

import pwd
import subprocess

from sandbox.errors import SetupError
from sandbox.ids import subordinate

FIRST_SUBORDINATE = 100_000
RANGE_SIZE = 65_536
FILES = {"uid": "/etc/subuid", "gid": "/etc/subgid"}


def provision_ids(account: pwd.struct_passwd) -> list[str]:
    """Give ``account`` a subordinate uid and gid range if it lacks one; one line per
    file saying what was found or done. Raises SetupError if usermod fails."""
    lines = []
    for kind, path in FILES.items():
        found = subordinate(path, account.pw_name, account.pw_uid)
        if found is not None:
            first, count = found
            lines.append(f"subordinate {kind}s {first}..{first + count - 1} of {account.pw_name} (already there)")
            continue
        first = _next_free(path)
        last = first + RANGE_SIZE - 1
        done = subprocess.run(["usermod", f"--add-sub{kind}s", f"{first}-{last}", account.pw_name],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SetupError(f"usermod --add-sub{kind}s failed: {done.stderr.strip()}")
        lines.append(f"granted subordinate {kind}s {first}..{last} to {account.pw_name} ({path})")
    return lines


def _next_free(path: str) -> int:
    """The first id after every range the file hands out (and after the first of them)."""
    end = FIRST_SUBORDINATE
    try:
        with open(path) as handle:
            for line in handle:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    end = max(end, int(parts[1]) + int(parts[2]))
    except FileNotFoundError:
        pass
    return end
