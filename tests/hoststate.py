"""What the test uid owns on the host right now: processes and entries of shared
directories. The leak checks (conftest.no_leaks, hostile.harness) compare these before
and after, so both must read them the same way."""

from __future__ import annotations

import os
from pathlib import Path

PF_KTHREAD = 0x00200000


def own_processes() -> set[int]:
    """Pids of processes of our uid (kernel threads left out)."""
    uid = os.getuid()
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid and not _kernel_thread(entry):
                    pids.add(int(entry))
            except FileNotFoundError:
                pass
    return pids


def _kernel_thread(pid: str) -> bool:
    """Kernel threads belong to root too (the root-marked tests run as root): a kworker
    the kernel starts during a test is not a process the test left behind."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return bool(int(fields[6]) & PF_KTHREAD)


def owned_entries(path: str) -> set[str]:
    """Entries of a shared directory that belong to us (others may work beside us)."""
    uid = os.getuid()
    owned = set()
    for entry in os.scandir(path):
        try:
            if entry.stat(follow_symlinks=False).st_uid == uid and not entry.name.startswith("pytest-of-"):
                owned.add(entry.name)
        except FileNotFoundError:
            pass
    return owned


def reap_exited_children() -> None:
    """Reap every child of ours that has exited, without waiting for the live ones (the
    session Runner's zygote lives as long as the session)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return
