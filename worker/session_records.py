"""A record on disk of each session a launcher holds, so that a restarted worker removes
what a crashed one's sessions left (a launcher's side: the worker's trio process never
imports this, nor the cgroup code it uses).

What a dead launcher's sessions leave is only their cgroups: each session's init ends as
its job channel closes, taking its processes, mounts and files with it. The next
launcher's runner removes the cgroups of a dead creator by the pid in their names
(``CgroupBackend.reap_stale``), but a pid is reused, and a cgroup whose creator's pid
runs again - any process - is left alone. A record names the launcher and the session's
init by pid *and* start time, which no other process shares, and lists the session's
cgroup directories (its execs' are below them): a launcher starting reaps each record
whose launcher is gone - SIGKILL to its init if that still runs, the directories
removed deepest first - and a launcher deletes the record of each session it ends.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from sandbox.cgroups.base import remove_cgroup_tree
from sandbox.errors import CgroupError


def process_identity(pid: int) -> tuple[int, int] | None:
    """(pid, start time in clock ticks since boot) of a live process; None once it is
    gone or a zombie (it runs nothing, holds nothing but its pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else (pid, int(fields[19]))


class SessionRecords:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = Path(directory)
        self._launcher = process_identity(os.getpid())

    def write(self, session_id: str, init_pid: int, cgroups: list[str]) -> None:
        record = {"launcher": self._launcher, "init": process_identity(init_pid), "cgroups": cgroups}
        temporary = self.directory / f".{session_id}.json"
        temporary.write_text(json.dumps(record))
        temporary.rename(self.directory / f"{session_id}.json")  # whole or not at all

    def remove(self, session_id: str) -> None:
        (self.directory / f"{session_id}.json").unlink(missing_ok=True)

    def reap(self) -> int:
        """Clean up after each session whose launcher is gone; how many. A record whose
        directories stay (a process in them outlived SIGKILL for now) is kept for the
        next launcher to try again."""
        reaped = 0
        for path in self.directory.glob("s-*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # (another launcher took it meanwhile, or half a write no rename finished)
            launcher, init = record.get("launcher"), record.get("init")
            if launcher is not None and process_identity(launcher[0]) == tuple(launcher):
                continue  # a live launcher's
            if init is not None and process_identity(init[0]) == tuple(init):
                os.kill(init[0], signal.SIGKILL)  # its pid namespace, so every process of the session, with it
            try:
                removed = all([remove_cgroup_tree(directory) for directory in record.get("cgroups", [])])
            except CgroupError:
                removed = False
            if removed:
                path.unlink(missing_ok=True)
                reaped += 1
        return reaped
