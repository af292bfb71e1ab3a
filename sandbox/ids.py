"""Which host ids the jobs of a supervisor run as.

The template user namespace (``template.py``) maps uid and gid 1000 to the supervisor's
own ids: the zygote, the spawner and every sandbox init run as those, so they can read
what the supervisor can (an image's layers in its store). Where the host grants a range
of ids that own nothing - the user's subordinate ids (``/etc/subuid``, ``/etc/subgid``,
mapped by newuidmap and newgidmap), or for root a fixed range it maps itself, as
isolate's boxes have - the template maps that range too, from ``JOB_IDS_INSIDE`` on, and
each sandbox takes one id of it for as long as it lives (``JobIds``): its init makes
the program stage in a user namespace of its own that maps the job's uid and gid 1000 to
that id (``native/init.c``). Two jobs running at once are then two host users: the
kernel's per-user state (pipe buffers, pending signals, file ownership, signal
permission) separates them, and a job is never the supervisor's user.

Without a range the template maps 1000 alone and every job is the supervisor's user,
as before (``IdPlan.problem`` says why, for ``doctor`` and each result's warnings).

Ids are leased in blocks of ``BLOCK`` per supervisor - a CLI run or a worker launcher,
several at once for one user - with a lock file per block (flock, held while the
supervisor lives and released by the kernel when it dies), so no two supervisors hand
out the same id; within a block a supervisor hands ids out itself.
"""

from __future__ import annotations

import fcntl
import os
import pwd
from dataclasses import dataclass

from sandbox.errors import SetupError
from sandbox.template import JOB_IDS_INSIDE

# Root's range when /etc/subuid names none for it: above what useradd hands out as
# subordinate ids (100000 to 600100000) and the container ranges systemd picks from
# (up to 0x6FFFFFFF), in the range systemd leaves unused, where no distribution puts
# accounts.
ROOT_FIRST_ID = 0x7000_0000
ROOT_ID_COUNT = 65_536
# Ids a supervisor leases at a time: its warm sandboxes, its running job and the ones
# still being torn down fit in one block; it leases another when they do not.
BLOCK = 64
ID_MAPPERS = ("/usr/bin/newuidmap", "/usr/bin/newgidmap")


@dataclass(frozen=True)
class IdRange:
    """Host ids the jobs run as: uids from ``uid``, gids from ``gid``, ``count`` each."""

    uid: int
    gid: int
    count: int


@dataclass(frozen=True)
class IdPlan:
    """The template user namespace's maps: 1000 to the supervisor (``owner_uid``,
    ``owner_gid``) and, with ``jobs``, the job range from ``JOB_IDS_INSIDE`` on,
    written by root itself (``mapper`` "write") or by newuidmap/newgidmap ("newidmap")."""

    owner_uid: int
    owner_gid: int
    jobs: IdRange | None = None
    mapper: str = ""
    problem: str | None = None  # why there is no job range: every job is the supervisor's user

    def zygote_argument(self) -> str:
        """How the zygote is told (``template.IdMaps.parse``)."""
        if self.jobs is None:
            return "single"
        return ":".join(str(value) for value in (
            self.mapper, self.owner_uid, self.owner_gid, self.jobs.uid, self.jobs.gid, self.jobs.count))


def plan_ids() -> IdPlan:
    """This process's plan: root's own range, the user's subordinate ids, or none."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        root_range = _granted_range("root", 0) or IdRange(ROOT_FIRST_ID, ROOT_FIRST_ID, ROOT_ID_COUNT)
        return IdPlan(uid, gid, root_range, "write")
    name = pwd.getpwuid(uid).pw_name
    missing = [tool for tool in ID_MAPPERS if not os.access(tool, os.X_OK)]
    if missing:
        return IdPlan(uid, gid, problem=f"{' and '.join(missing)} missing (Debian's uidmap package)")
    granted = _granted_range(name, uid)
    if granted is None:
        return IdPlan(uid, gid, problem=f"no subordinate id range of at least {BLOCK} in /etc/subuid and "
                                        f"/etc/subgid for {name}: run 'sudo sandbox setup-cgroups --user {name}'")
    if not (_mapped("/proc/self/uid_map", granted.uid, granted.count)
            and _mapped("/proc/self/gid_map", granted.gid, granted.count)):
        return IdPlan(uid, gid, problem="this process runs in a user namespace that does not map its subordinate ids "
                                        f"(a container, or a test's network world): {name}'s jobs cannot have them")
    return IdPlan(uid, gid, granted, "newidmap")


def _mapped(map_path: str, first: int, count: int) -> bool:
    """Whether ids ``first``.. (``count`` of them) all exist in this process's user
    namespace - always, in the host's own. In a nested one they do not, and newuidmap
    (whose set-uid root is not mapped there either) could not map them for the template."""
    with open(map_path) as handle:
        for line in handle.read().splitlines():
            inside, _, length = (int(field) for field in line.split())
            if inside <= first and first + count <= inside + length:
                return True
    return False


def _granted_range(name: str, uid: int) -> IdRange | None:
    """The first subordinate uid and gid ranges of the user, each at least a block."""
    uids = subordinate("/etc/subuid", name, uid)
    gids = subordinate("/etc/subgid", name, uid)
    if uids is None or gids is None:
        return None
    return IdRange(uids[0], gids[0], min(uids[1], gids[1]))


def subordinate(path: str, name: str, uid: int) -> tuple[int, int] | None:
    """(first, count) of the user's first range in a subid file, as shadow's tools read
    it: "NAME_OR_UID:FIRST:COUNT" lines."""
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        owner, _, rest = line.strip().partition(":")
        first, _, count = rest.partition(":")
        if owner in (name, str(uid)) and first.isdigit() and count.isdigit() and int(count) >= BLOCK:
            return int(first), int(count)
    return None


def lease_directory() -> str:
    """Where the block locks of this user live: root's under /run, a user's in its home
    (its own, so no other user can hold its locks; from the account, not the
    environment, so every supervisor of the user finds the same one)."""
    if os.geteuid() == 0:
        return "/run/sandbox/id-leases"
    return os.path.join(pwd.getpwuid(os.geteuid()).pw_dir, ".cache", "sandbox", "id-leases")


class JobIds:
    """One supervisor's job ids: ``take`` one per sandbox (an id inside the template
    user namespace), ``give_back`` once its processes are gone."""

    def __init__(self, plan: IdPlan) -> None:
        """Leases the first block now, so that a supervisor's fds do not change at its
        first job (if none is free, ``take`` tries again and says so)."""
        self.plan = plan
        self._free: list[int] = []
        self._locks: list[int] = []  # one fd per leased block
        self._next_block = 0
        try:
            self._lease_block()
        except SetupError:
            pass

    def take(self) -> int:
        """An id no other sandbox of this user runs as now; raises SetupError when the
        whole range is leased."""
        if not self._free:
            self._lease_block()
        return self._free.pop()

    def give_back(self, inside_id: int) -> None:
        self._free.append(inside_id)

    def close(self) -> None:
        """Give up the blocks (the sandboxes that ran as their ids are gone)."""
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()
        self._free.clear()

    def _lease_block(self) -> None:
        assert self.plan.jobs is not None, "only a range has ids to lease"
        jobs = self.plan.jobs
        directory = lease_directory()
        blocks = jobs.count // BLOCK
        for _ in range(blocks):
            block = self._next_block
            self._next_block = (self._next_block + 1) % blocks
            # Named by the host ids, so that another range never shares a lock.
            path = os.path.join(directory, f"{jobs.uid + block * BLOCK}-{jobs.gid + block * BLOCK}")
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                raise SetupError(f"cannot lease job ids in {directory}: {exc.strerror}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._locks.append(fd)
            first = JOB_IDS_INSIDE + block * BLOCK
            self._free.extend(reversed(range(first, first + BLOCK)))
            return
        raise SetupError(f"every job id of {jobs.uid}..{jobs.uid + jobs.count - 1} is in use by other supervisors")
