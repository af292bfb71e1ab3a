"""The one cgroup interface the runner sees; v1 and v2 backends implement it.

A job gets its own cgroup. The job's first process joins it by writing "0" into the
fds opened here (v1, each hierarchy's ``tasks``; so it can join after it left the host
mount namespace), or is created in it (v2), and everything it starts stays inside. The supervisor polls
``cpu_usage_ns`` to enforce the CPU limit promptly and reads ``usage`` at the end.
"""

from __future__ import annotations

import abc
import errno
import functools
import itertools
import os
import pwd
import signal
from collections.abc import Callable
from typing import Any

from sandbox.cgroup_files import CgroupUsage, Counters, parse_keyed, read_text
from sandbox.errors import CgroupError
from sandbox.models import Limits

JOB_PREFIX = "job-"
_JOB_NUMBERS = itertools.count(1)
_KILL_ROUNDS = 1000


class JobCgroup(abc.ABC):
    """One job's cgroup (one directory per hierarchy on v1, one on v2)."""

    # How a sandbox's program stage joins it (``native/program.c``): "files", writing
    # itself into each of ``attach_fds`` (v1: tasks files); "directory", created in the one
    # directory of ``attach_fds`` by clone3(CLONE_INTO_CGROUP), which skips the attach
    # and its stall (v2 only).
    JOIN = "files"
    # Whether a CPU quota (``Limits.cpus``) can be written: v1 makes the cpu controller's
    # directory only for the jobs that may need one (``CgroupBackend.create_job``).
    cpu_quota = True

    VERSION = 1  # which cgroup version's files (``Counters``)

    def __init__(
        self, directories: list[str], attach_paths: list[str], cpu_counter: tuple[str, str],
        counters: dict[str, str], writable_counters: frozenset[str] = frozenset(),
    ) -> None:
        """``cpu_counter``: (directory, file) of the CPU counter, a ``cpucounter`` kind.
        ``counters``: name -> path of the files ``usage`` reads (``Counters``), opened
        here (a missing one is a feature this kernel lacks). This runs where the cgroup
        is made: ahead of its job (``CgroupStock``)."""
        self.directories = directories
        self.attach_paths = attach_paths
        self._attach_fds: list[int] | None = None  # (``attach_fds``)
        directory, self.cpu_counter_kind = cpu_counter
        cpu_fd = os.open(os.path.join(directory, self.cpu_counter_kind), os.O_RDONLY | os.O_CLOEXEC)
        self.counters = Counters(self.VERSION, cpu_fd, {})
        try:
            for name, path in counters.items():
                mode = os.O_RDWR if name in writable_counters else os.O_RDONLY
                try:
                    self.counters.fds[name] = os.open(path, mode | os.O_CLOEXEC)
                except FileNotFoundError:
                    pass
        except BaseException:
            self._close_fds()
            raise
        # The counters when the job started (``start_accounting``): its usage is read against them.
        self.baseline = CgroupUsage(0, 0, 0, None, 0, None)
        self._applied: tuple[int, int, float | None] | None = None

    @property
    def attach_fds(self) -> list[int]:
        """What a process joins the job through (``JOIN``), opened at the first ask: a
        snippet of the interpreter mode joins on v1 through tasks files its zygote opens
        as the job's id instead (sandbox/interpreter.py), and never needs these."""
        if self._attach_fds is None:
            flags = os.O_PATH | os.O_DIRECTORY if self.JOIN == "directory" else os.O_WRONLY
            opened: list[int] = []
            try:
                for path in self.attach_paths:
                    opened.append(os.open(path, flags | os.O_CLOEXEC))
            except BaseException:
                for fd in opened:
                    os.close(fd)
                raise
            self._attach_fds = opened
        return self._attach_fds

    @property
    def cpu_counter_fd(self) -> int:
        return self.counters.cpu_fd

    def _rewrite_counter(self, name: str, value: str) -> None:
        fd = self.counters.fds.get(name)
        if fd is not None:
            os.pwrite(fd, value.encode(), 0)

    def apply_limits(self, limits: Limits) -> None:
        """Write the job's limits - unless they are the ones already written: a warm
        cgroup gets the default limits ahead of time, so most jobs write nothing here."""
        wanted = limits.cgroup_values
        if limits.cpus is not None and not self.cpu_quota:
            raise CgroupError("a CPU quota for a job cgroup made without the cpu controller")
        if wanted != self._applied:
            self._write_limits(limits)
            self._applied = wanted

    @abc.abstractmethod
    def _write_limits(self, limits: Limits) -> None:
        """Write memory, pids and CPU quota limits to the kernel."""

    @abc.abstractmethod
    def limit_files(self) -> dict[str, Any]:
        """Where this cgroup's limits are written, as plain data: what another process of
        this user needs to write a job's limits there (``cgroup_files.write_limits``:
        the worker's direct hand-over, worker/handover.py)."""

    def _reset_peak(self) -> None:  # noqa: B027 - optional: only v1 can reset its peak
        """Restart peak memory from the current usage, where the kernel allows it."""

    def start_accounting(self) -> None:
        """The job starts now: what the waiting sandbox used so far is not the job's."""
        self._reset_peak()
        self.baseline = self.counters.raw()

    def start_cpu_account_at(self, cpu_ns: int) -> None:
        """The job's CPU account starts at this reading of the counter (the sandbox
        init's, taken as it handed the job over), not at ``start_accounting``'s."""
        self.baseline.cpu_ns = cpu_ns

    def cpu_usage_ns(self) -> int:
        """CPU time of every process and thread of the job since it started, in ns."""
        return self.counters.cpu_ns() - self.baseline.cpu_ns

    def usage(self) -> CgroupUsage:
        """Everything measured since ``start_accounting``, read once the job ended."""
        return self.counters.since(self.baseline)

    def empty(self) -> bool:
        """Whether no task of the job is left (``Counters.empty``)."""
        return self.counters.empty() if self.counters.fds else not self.pids()

    def pids(self) -> list[int]:
        """Processes still in the job (read from the first hierarchy)."""
        if "procs" in self.counters.fds:
            return self.counters.pids()
        return cgroup_pids(self.directories[0]) if self.directories else []  # after destroy closed it

    def kill_all(self) -> None:
        """SIGKILL every process until the cgroup is empty.

        The pid namespace already takes the job down with its init; this loop is the
        belt to that pair of braces, for processes that raced into the cgroup.
        """
        for _ in range(_KILL_ROUNDS):
            if not kill_cgroup_processes(self.directories[0]):
                return
            os.sched_yield()
        raise CgroupError(f"processes survive SIGKILL in {self.directories[0]}: {self.pids()}")

    def keep_reusable(self) -> str | None:
        """Before ``destroy``: take out of this cgroup the directory a later job's cgroup
        can take over as it is, if there is one (v1, ``V1JobCgroup``); its path, which
        ``destroy`` then leaves alone."""
        return None

    def join(self) -> None:
        """Move the calling process - single-threaded, as a forked child is - into the
        job: for work that is not started by a sandbox init (a build's RUN step), whose
        children then inherit the cgroup. v1 writes the thread into each tasks file."""
        for fd in self.attach_fds:
            os.write(fd, b"0")

    def close_attach_fds(self) -> None:
        for fd in self._attach_fds or []:
            os.close(fd)
        self._attach_fds = []

    def _close_fds(self) -> None:
        self.close_attach_fds()
        if self.counters.cpu_fd >= 0:
            self.counters.close()

    def destroy(self) -> None:
        """Kill what is left, remove the directories, close the fds. Idempotent."""
        self._close_fds()
        remaining = []
        for directory in self.directories:
            if not remove_cgroup_dir(directory, self.kill_all):
                remaining.append(directory)
        self.directories = remaining
        if remaining:
            raise CgroupError(f"could not remove cgroup(s) {remaining}")


class Freezer(abc.ABC):
    """A session's freezer (``Session.pause``): every process of its execs stopped by
    the kernel, using no CPU, until thawed."""

    # What an exec's program stage also joins, beside its own cgroup (v1: the freezer
    # hierarchy's tasks file; v2: nothing - the freezer is the session's cgroup itself).
    attach_fds: list[int]
    directory: str  # its cgroup directory (v2: the session's own)

    @abc.abstractmethod
    def set(self, frozen: bool) -> None:
        """Freeze or thaw, and return once the kernel has done it."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """Thaw and remove what was made for it. Idempotent."""


class CgroupBackend(abc.ABC):
    """Creates job cgroups under a delegated parent."""

    version: int

    @abc.abstractmethod
    def create_job(self, cpu_quota: bool = True, reuse: str | None = None) -> JobCgroup:
        """A fresh cgroup, ready to be joined; limits come with ``apply_limits``. Without
        ``cpu_quota`` the job cannot be given a ``cpus`` limit: on v1 that spares a job
        the cpu hierarchy's directory - its mkdir, rmdir and the attach to it. ``reuse``:
        a directory an earlier job's cgroup left (``JobCgroup.keep_reusable``), taken
        over instead of made where the backend can."""

    @abc.abstractmethod
    def parents(self) -> list[str]:
        """The delegated directories job cgroups are created in."""

    @abc.abstractmethod
    def features(self) -> dict[str, bool]:
        """Optional kernel features and whether this host has them (for doctor)."""

    @abc.abstractmethod
    def nested(self, cgroup: JobCgroup) -> CgroupBackend:
        """A backend whose job cgroups are made below ``cgroup``: a session's execs, each
        with its own limits and usage, under the session's limits (``sandbox/session.py``).
        ``cgroup`` must hold no process (v2 gives a cgroup with processes no children
        with controllers)."""

    @abc.abstractmethod
    def freezer(self, cgroup: JobCgroup) -> Freezer:
        """The freezer of a session whose cgroup is ``cgroup``; raises CgroupError where
        the host delegates none (v1 without the freezer hierarchy)."""

    @staticmethod
    def job_name() -> str:
        """Unique per host; carries the creator's pid so a successor can reap it."""
        return f"{JOB_PREFIX}{os.getpid()}-{next(_JOB_NUMBERS)}-{os.urandom(3).hex()}"

    def reap_stale(self) -> int:
        """Remove job cgroups whose creating process is gone (a crashed predecessor).

        Returns how many were removed. A cgroup whose creator still runs is left alone.
        """
        removed = 0
        for parent in self.parents():
            for name in _listdir(parent):
                creator = _creator_pid(name)
                if creator is None or _alive(creator):
                    continue
                if remove_cgroup_tree(os.path.join(parent, name)):
                    removed += 1
        return removed


def remove_cgroup_tree(directory: str) -> bool:
    """rmdir a job cgroup and the job cgroups below it (a session's execs), deepest
    first, killing what runs there. False if one stays."""
    removed = all([remove_cgroup_tree(os.path.join(directory, name)) for name in _listdir(directory)])
    return remove_cgroup_dir(directory, functools.partial(kill_cgroup_processes, directory)) and removed


def remove_cgroup_dir(directory: str, kill: Callable[[], object]) -> bool:
    """rmdir a cgroup, killing its processes if it is busy. False if it stays."""
    for _ in range(100):
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise CgroupError(f"rmdir {directory}: {exc.strerror}") from exc
            kill()
            os.sched_yield()
    return False


def cgroup_pids(directory: str) -> list[int]:
    try:
        return [int(line) for line in read_text(os.path.join(directory, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def kill_cgroup_processes(directory: str) -> int:
    """SIGKILL each process listed once; returns how many were listed."""
    pids = cgroup_pids(directory)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def read_keyed(path: str) -> dict[str, int]:
    return parse_keyed(read_text(path))


def remove_partial(directories: list[str]) -> None:
    """Undo a half-made job cgroup (they are empty: nothing joined yet)."""
    for directory in reversed(directories):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _listdir(path: str) -> list[str]:
    try:
        return [name for name in os.listdir(path) if name.startswith(JOB_PREFIX)]
    except FileNotFoundError:
        return []


def _creator_pid(name: str) -> int | None:
    parts = name[len(JOB_PREFIX):].split("-")
    return int(parts[0]) if parts and parts[0].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
