"""The data every layer shares: Job, Limits, Usage, Result and the status vocabulary.

One job means the same thing to the CLI, the worker protocol and the runner because all
of them build these objects and nothing else. Validation happens here, once, so the
runner can trust what it is handed.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import posixpath
import re
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypedDict, Unpack

from sandbox.errors import JobError
from sandbox.units import is_no_limit, parse_duration_ms, parse_size

WORKDIR = "/work"
WRITABLE_ROOTS = (WORKDIR, "/tmp")
MAX_ARGS = 4096
MAX_ENV = 1024
# A job's files travel to its sandbox as fds of one message, beside stdin, stdout and
# stderr, and the kernel passes at most 253 fds in one message (SCM_MAX_FD).
MAX_FILES = 250
# Paths a job may name to collect (the sandbox init's table, native/collect.c), and the
# most entries one directory's walk takes (its max_files).
MAX_COLLECT = 64
MAX_COLLECT_ENTRIES = 100_000

# A file a worker caches is named by its content (``worker/filecache.py``): the SHA-256
# of its bytes, with the algorithm in front so that another one can come later.
FILE_ID_PREFIX = "sha256:"
_FILE_ID = re.compile(r"sha256:[0-9a-f]{64}")
# A directory tree a worker caches (``put_file`` with ``tree``) is named by the SHA-256
# of the tar it came as, under a prefix of its own: a tree is mounted, never copied in as
# a file, and a file id can never be taken for one (nor the other way round), even for
# the same bytes.
TREE_ID_PREFIX = "tree:sha256:"
_TREE_ID = re.compile(r"tree:sha256:[0-9a-f]{64}")
# Trees a job mounts (each an fd of its job message, as input files are), and where: in
# its writable area, where the sandbox init can make the mount point whatever the image.
MAX_MOUNTS = 16
MAX_ALLOWED_NETS = 64  # an egress job's allowed ranges: a route each in its namespace
MAX_PRELOADED = 64  # the modules an interpreter-mode template imports ahead


class Status(str, enum.Enum):
    """The verdict of a job. Judges map these one-to-one onto their own verdicts."""

    OK = "ok"
    RUNTIME_ERROR = "runtime_error"
    SIGNALED = "signaled"
    TIME_LIMIT = "time_limit"
    WALL_TIME_LIMIT = "wall_time_limit"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    SYSCALL_VIOLATION = "syscall_violation"
    COMPILE_ERROR = "compile_error"  # only from a language run's compile stage
    INTERNAL_ERROR = "internal_error"
    CANCELLED = "cancelled"  # only through the worker: its client (or its disconnect) cancelled it


class LimitArgs(TypedDict, total=False):
    """The limits as a caller writes them, each optional: text with a unit ("256M",
    "1.5s"), a number (bytes; seconds for a duration) and, where a limit may be absent,
    None or one of the words for it (``units.NO_LIMIT_WORDS``: a flag or a TOML file has
    no nil to write)."""

    cpu_time: int | float | str | None
    wall_time: int | float | str
    memory: int | str
    pids: int
    output: int | str
    disk: int | str
    open_files: int
    stack: int | str
    file_size: int | str
    cpus: int | float | str | None


@dataclass(frozen=True, init=False)
class Limits:
    """Per-job limits, in their canonical units: times in milliseconds, sizes in bytes,
    ``cpus`` in CPUs; ``None`` is "no limit" where that is allowed (cpu_time, cpus).

    Built from what a flag, a profile's [limits] or the wire's "limits" say, by their
    names (``LimitArgs``): ``Limits(memory="256M", cpu_time="2s")``. Each is checked
    here, once, and its error names it (``limits.memory``), so the CLI can name its flag
    and a protocol client its key.

    A Limits remembers which limits its caller gave (``given``): the others come from
    the job's profile ([limits], docs/profiles.md) and only then from the defaults here
    - the same for ``sandbox run`` flags, a worker job's partial ``limits`` map and a
    Python caller (``over``). Two Limits are equal when their values are, whoever gave
    them.
    """

    cpu_time_ms: int | None
    wall_time_ms: int
    memory_bytes: int
    pids: int
    output_bytes: int
    disk_bytes: int
    open_files: int
    stack_bytes: int
    file_size_bytes: int
    cpus: float | None
    given: frozenset[str] = field(compare=False, repr=False)  # the names the caller set, whatever the value

    def __init__(self, **args: Unpack[LimitArgs]) -> None:
        unknown = args.keys() - LimitArgs.__annotations__.keys()
        if unknown:
            raise TypeError(f"Limits() got unknown limits: {', '.join(sorted(unknown))}")
        cpu_time, cpus = args.get("cpu_time", "10s"), args.get("cpus")
        values = {  # checked in this order: the first wrong one is the error
            "cpu_time_ms": None if cpu_time is None or is_no_limit(cpu_time)
            else _parsed(parse_duration_ms, "cpu_time", cpu_time),
            "wall_time_ms": _parsed(parse_duration_ms, "wall_time", args.get("wall_time", "30s")),
            "memory_bytes": _parsed(parse_size, "memory", args.get("memory", "512M")),
            "output_bytes": _parsed(parse_size, "output", args.get("output", "64M")),
            "disk_bytes": _parsed(parse_size, "disk", args.get("disk", "64M")),
            "stack_bytes": _parsed(parse_size, "stack", args.get("stack", "8M")),
            "file_size_bytes": _parsed(parse_size, "file_size", args.get("file_size", "64M")),
            "pids": _bounded_int("limits.pids", args.get("pids", 64), 1, 1 << 22),
            "open_files": _bounded_int("limits.open_files", args.get("open_files", 256), 4, 1 << 20),
            "cpus": None if cpus is None or is_no_limit(cpus) else _cpus(cpus),
            "given": frozenset(args),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    def given_values(self) -> dict[str, Any]:
        """The limits the caller set, in a form ``Limits(...)`` accepts back (durations
        as text in ms: a bare number would mean seconds)."""
        every: dict[str, Any] = {
            "cpu_time": None if self.cpu_time_ms is None else f"{self.cpu_time_ms}ms",
            "wall_time": f"{self.wall_time_ms}ms",
            "memory": self.memory_bytes,
            "pids": self.pids,
            "output": self.output_bytes,
            "disk": self.disk_bytes,
            "open_files": self.open_files,
            "stack": self.stack_bytes,
            "file_size": self.file_size_bytes,
            "cpus": self.cpus,
        }
        return {name: every[name] for name in sorted(self.given)}

    def over(self, base: dict[str, Any]) -> Limits:
        """These limits where given, ``base``'s (a profile's [limits]) for the rest, the
        defaults for what neither names. (Most profiles have no [limits]: then these.)"""
        return Limits(**{**base, **self.given_values()}) if base else self

    @property
    def cgroup_values(self) -> tuple[int, int, float | None]:
        """The limits only a cgroup enforces for a whole job tree (``CGROUP_LIMITS``), as a
        job cgroup is written with them: a warm sandbox's cgroup fits a job whose values
        are the same."""
        return (self.memory_bytes, self.pids, self.cpus)


# Every limit a job may set (flags, profiles' [limits], the wire's "limits"), and the
# ones only a cgroup enforces for a whole job tree (``Limits.cgroup_values``).
LIMIT_NAMES = tuple(LimitArgs.__annotations__)
CGROUP_LIMITS = ("memory", "pids", "cpus")


@dataclass
class Blob:
    """Bytes for the job: inline ``data``, a host ``path`` read by the runner, or the
    ``file_id`` of a file a worker holds in its cache (put there once with ``put_file``,
    used by many jobs without travelling in each)."""

    data: bytes | None = None
    path: str | None = None
    file_id: str | None = None

    def __post_init__(self) -> None:
        if sum(value is not None for value in (self.data, self.path, self.file_id)) != 1:
            raise JobError("give exactly one of data, path or file_id", field="blob")
        if self.file_id is not None:
            check_file_id(self.file_id, "file_id")


def check_file_id(value: object, field_name: str) -> str:
    """A cached file's id as a worker gives it (``sha256:`` and 64 lower-case hex digits)."""
    if not isinstance(value, str) or not _FILE_ID.fullmatch(value):
        raise JobError(f"a file id is {FILE_ID_PREFIX} and 64 lower-case hex digits", field=field_name)
    return value


def check_tree_id(value: object, field_name: str) -> str:
    """A cached tree's id as a worker gives it (``tree:sha256:`` and 64 lower-case hex digits)."""
    if not isinstance(value, str) or not _TREE_ID.fullmatch(value):
        raise JobError(f"a tree id is {TREE_ID_PREFIX} and 64 lower-case hex digits", field=field_name)
    return value


@dataclass
class Mount:
    """A directory tree mounted at ``path`` in the sandbox, from exactly one source:
    through a worker, a tree it caches (``tree_id``, put once with ``put_file``); inside
    a worker's launcher, the cached tree's directory (``host_dir``, never on the wire: a
    client cannot name a path on the worker's host); a host directory (``bind``: through
    a worker, only below a path its operator allowed); or a named volume (``volume``),
    kept under the data directory between jobs. Checked by the Job that holds it, which
    can name the entry (``mounts.0.path``).

    ``writable``: None is the source's default - read-only for a tree and a bind, read
    and write for a volume (what volumes are for); a tree is never writable. ``size``:
    a read-write volume's cap (``DEFAULT_VOLUME_SIZE`` if not given), settled to bytes:
    what it may hold after the job, past which the job's writes fail with ENOSPC."""

    DEFAULT_VOLUME_SIZE: ClassVar[str] = "1G"

    path: str
    tree_id: str | None = None
    host_dir: str | None = None
    bind: str | None = None
    volume: str | None = None
    writable: bool | None = None
    size: int | str | None = None

    def check_source(self, where: str) -> None:
        """Exactly one source, well formed; ``writable`` settled to a bool."""
        sources = [self.tree_id, self.host_dir, self.bind, self.volume]
        if sum(source is not None for source in sources) != 1:
            raise JobError("give exactly one of tree_id, bind or volume", field=f"{where}.tree_id")
        if self.writable is not None and not isinstance(self.writable, bool):
            raise JobError("writable must be true or false", field=f"{where}.writable")
        if self.tree_id is not None:
            check_tree_id(self.tree_id, f"{where}.tree_id")
        elif self.host_dir is not None:
            _check_text(f"{where}.host_dir", self.host_dir)
        elif self.bind is not None:
            self.bind = check_bind_source(self.bind, f"{where}.bind")
        else:
            check_volume_name(self.volume, f"{where}.volume")
        if self.writable is None:
            self.writable = self.volume is not None
        if self.writable and (self.tree_id is not None or self.host_dir is not None):
            raise JobError("a cached tree is mounted read-only", field=f"{where}.writable")
        if self.volume is None or not self.writable:
            if self.size is not None:
                raise JobError("only a read-write volume has a size cap", field=f"{where}.size")
        else:
            try:
                size = parse_size(self.DEFAULT_VOLUME_SIZE if self.size is None else self.size)
            except ValueError as exc:
                raise JobError(f"{exc} (examples: 512M, 1G)", field=f"{where}.size") from None
            self.size = _bounded_int(f"{where}.size", size, 1, 1 << 50)


_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_volume_name(value: object, field_name: str) -> str:
    """A volume's name: also its directory's name under the data directory, so one path
    component of safe characters, never "." or ".." (it starts with a letter or digit)."""
    if not isinstance(value, str) or not _VOLUME_NAME.fullmatch(value):
        raise JobError("a volume name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
                       field=field_name)
    return value


def check_bind_source(value: object, field_name: str) -> str:
    """A host directory to bind: absolute and normal (no "." or ".." components, no
    doubled or trailing "/"), so that a worker's allow list compares it as it is."""
    _check_text(field_name, value)
    assert isinstance(value, str)
    if not posixpath.isabs(value) or value.startswith("//") or posixpath.normpath(value) != value:
        raise JobError(f"{value!r} must be an absolute, normal path (no '.', '..' or doubled '/')",
                       field=field_name)
    return value


@dataclass
class InputFile:
    """A file placed in the sandbox's writable area before the program starts."""

    dest: str
    content: Blob
    mode: int = 0o644

    def __post_init__(self) -> None:
        self.dest = sandbox_path(self.dest, field_name="files.dest")
        if isinstance(self.mode, bool) or not isinstance(self.mode, int) or not 0 <= self.mode <= 0o777:
            raise JobError("mode must be a permission number (0..0o777)", field="files.mode")


@dataclass
class Collect:
    """A file, or with a trailing "/" a directory (its tree, regular files only), to
    read out of the sandbox once every process of the job is dead.

    ``max`` caps a file's size, or a directory's total; ``max_files`` caps the entries a
    directory's walk takes (every entry of its tree counts: files, directories, the
    rest), and is a directory's only. What breaks a rule is refused per path in the
    result's ``file_errors``, never followed (native/collect.c, sandbox/collect.py)."""

    path: str
    max: int | str = "64M"
    max_files: int | None = None  # a directory's: DEFAULT_MAX_FILES if not given
    cache: bool = False  # through a worker: kept in its file cache, the result naming it by id

    DEFAULT_MAX_FILES: ClassVar[int] = 1000

    def __post_init__(self) -> None:
        _check_text("collect.path", self.path)
        self.path = _collect_path(self.path)
        if isinstance(self.max, bool) or not isinstance(self.max, (str, int)):
            raise JobError("expected a size: a number of bytes or a string with a unit", field="collect.max")
        try:
            self.max = parse_size(self.max)
        except (ValueError, TypeError) as exc:
            raise JobError(str(exc), field="collect.max") from None
        if not isinstance(self.cache, bool):
            raise JobError("expected true or false", field="collect.cache")
        if self.max_files is not None:
            if not self.directory:
                raise JobError("max_files is a directory's (a path ending in /)", field="collect.max_files")
            self.max_files = _bounded_int("collect.max_files", self.max_files, 1, MAX_COLLECT_ENTRIES)

    @property
    def directory(self) -> bool:
        return self.path.endswith("/")

    @property
    def max_bytes(self) -> int:
        return int(self.max)

    @property
    def max_entries(self) -> int:
        """How many entries a directory's walk takes (0 for a file: no walk)."""
        if not self.directory:
            return 0
        return self.DEFAULT_MAX_FILES if self.max_files is None else self.max_files


def runs_python(cmd: list[str]) -> bool:
    """Whether a command is python3's: what the interpreter mode (``Job.interpreter``) runs."""
    return bool(cmd) and posixpath.basename(cmd[0]) in ("python3", "python")


@dataclass
class Job:
    """One command to run, with everything it may see and use."""

    cmd: list[str]
    limits: Limits = field(default_factory=Limits)
    env: dict[str, str] = field(default_factory=dict)
    stdin: Blob | None = None
    files: list[InputFile] = field(default_factory=list)
    image: str = "host"  # or a stored image: name[:tag], name@digest, id
    cwd: str | None = None  # None: the image's WorkingDir, else /work
    require_cgroups: bool = False
    # A profile under profiles/ (seccomp policy, env; docs/profiles.md), or - for the
    # runner in this process only, never on the wire - a profile file (is_profile_file).
    profile: str = "default"
    # Read out once every process of the job is dead: Result.files and file_errors.
    collect: list[Collect] = field(default_factory=list)
    # Cached trees mounted read-only, shared by every job that names them; host
    # directories bound and named volumes (Mount).
    mounts: list[Mount] = field(default_factory=list)
    # "egress": the outside through a user-space stack (sandbox/egress.py); None: the
    # profile's network mode. ``allow_net``: blocked ranges an egress job may reach.
    network: str | None = None
    allow_net: list[str] = field(default_factory=list)
    # The interpreter mode (sandbox/interpreter.py): a python3 with these modules
    # imported waits in a prepared sandbox and forks a sandbox of its own per job. None:
    # a fresh process, as every other job.
    interpreter: list[str] | None = None

    def __post_init__(self) -> None:
        _check_text("profile", self.profile)
        if not is_profile_file(self.profile) and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", self.profile):
            raise JobError(f"invalid profile name {self.profile!r}", field="profile")
        _check_text("image", self.image)
        if not self.image:
            raise JobError("image must not be empty", field="image")
        if self.image != "host":
            _check_image_reference(self.image)
        # An image may supply the command (Entrypoint/Cmd); the host image cannot.
        if not isinstance(self.cmd, list) or (not self.cmd and self.image == "host"):
            raise JobError("cmd must be a non-empty list of strings", field="cmd")
        if len(self.cmd) > MAX_ARGS:
            raise JobError(f"cmd has more than {MAX_ARGS} arguments", field="cmd")
        for arg in self.cmd:
            _check_text("cmd", arg)
        if len(self.env) > MAX_ENV:
            raise JobError(f"env has more than {MAX_ENV} entries", field="env")
        for key, value in self.env.items():
            _check_text("env", key)
            _check_text("env", value)
            if not key or "=" in key:
                raise JobError(f"invalid environment variable name {key!r}", field="env")
        if self.stdin is not None and self.stdin.file_id is not None:
            raise JobError("a cached file goes in as an input file, not as stdin", field="stdin")
        if len(self.files) > MAX_FILES:
            raise JobError(f"more than {MAX_FILES} input files", field="files")
        if self.cwd is not None and (not posixpath.isabs(self.cwd) or ".." in self.cwd.split("/")):
            raise JobError("cwd must be an absolute path without '..'", field="cwd")
        if not isinstance(self.collect, list) or not all(isinstance(entry, Collect) for entry in self.collect):
            raise JobError("collect must be a list of entries", field="collect")
        if len(self.collect) > MAX_COLLECT:
            raise JobError(f"more than {MAX_COLLECT} paths to collect", field="collect")
        self._check_mounts()
        self._check_network()
        self._check_interpreter()

    def _check_interpreter(self) -> None:
        if self.interpreter is None:
            return
        if not isinstance(self.interpreter, list) or len(self.interpreter) > MAX_PRELOADED:
            raise JobError(f"interpreter must be a list of at most {MAX_PRELOADED} module names", field="interpreter")
        for name in self.interpreter:
            if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
                raise JobError(f"{name!r} is not a module name", field="interpreter")

    def _check_network(self) -> None:
        """Only egress can be asked for: the other modes are the profile's seccomp
        policy, fixed when the profile's filter is compiled. The allowed ranges are
        written canonically here."""
        if self.network not in (None, "egress"):
            raise JobError(f"network must be 'egress' or absent (the profile's), not {self.network!r}",
                           field="network")
        if not isinstance(self.allow_net, list) or not all(isinstance(text, str) for text in self.allow_net):
            raise JobError("allow_net must be a list of address ranges", field="allow_net")
        if len(self.allow_net) > MAX_ALLOWED_NETS:
            raise JobError(f"more than {MAX_ALLOWED_NETS} ranges", field="allow_net")
        networks = []
        for text in self.allow_net:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise JobError(f"{text!r} is not an address range (CIDR, e.g. 10.0.0.0/8)", field="allow_net") from None
            if network.version != 4:
                raise JobError(f"{text}: egress carries IPv4 only", field="allow_net")
            networks.append(str(network))
        self.allow_net = networks

    def _check_mounts(self) -> None:
        """Each mount names one tree and a mount point of its own in the writable area:
        not the same as another's, not beneath another's (the sandbox makes mount points,
        and cannot in a read-only tree), and holding no input file (which it would hide)."""
        if not isinstance(self.mounts, list) or not all(isinstance(entry, Mount) for entry in self.mounts):
            raise JobError("mounts must be a list of mounts", field="mounts")
        if len(self.mounts) > MAX_MOUNTS:
            raise JobError(f"more than {MAX_MOUNTS} mounts", field="mounts")
        if len(self.files) + len(self.mounts) > MAX_FILES:
            raise JobError(f"more than {MAX_FILES} input files and mounts together", field="mounts")
        points: list[str] = []
        for index, entry in enumerate(self.mounts):
            where = f"mounts.{index}"
            entry.path = sandbox_path(entry.path, field_name=f"{where}.path")
            entry.check_source(where)
            for other in points:
                if _beneath(entry.path, other) or _beneath(other, entry.path):
                    raise JobError(f"{entry.path} is, or is beneath, another mount's path {other}",
                                   field=f"{where}.path")
            for item in self.files:
                if _beneath(item.dest, entry.path):
                    raise JobError(f"the input file {item.dest} would be hidden by this mount", field=f"{where}.path")
            points.append(entry.path)


PIPE_SOURCES = ("stdout", "stderr")
PIPE_TARGETS = ("stdin",)
MAX_GROUP = 16  # members of one group: each is a sandbox of its own, started at once


@dataclass(frozen=True)
class Pipe:
    """One stream of a group member wired to another's stdin (go-judge's pipeMapping):
    ``source`` is (member index, "stdout" or "stderr"), ``target`` (member index, "stdin").
    A member may feed itself (its stdout back into its own stdin) - odd, but harmless."""

    source: tuple[int, str]
    target: tuple[int, str]

    @classmethod
    def of(cls, source: object, target: object) -> Pipe:
        """From the loose forms a caller writes: [0, "stdout"] lists or tuples."""
        return cls(_endpoint(source, PIPE_SOURCES, "pipes.from"), _endpoint(target, PIPE_TARGETS, "pipes.to"))


@dataclass
class Group:
    """Jobs that run at once, each in a sandbox of its own with its own limits and
    Result, wired by ``pipes``. Checked as a whole here, once: every index names a
    member, a stream feeds at most one stdin, a stdin is fed at most once, and a member
    whose stdin is piped gives no ``stdin`` data of its own."""

    jobs: list[Job]
    pipes: list[Pipe] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.jobs, list) or not self.jobs:
            raise JobError("a group needs at least one job", field="jobs")
        if len(self.jobs) > MAX_GROUP:
            raise JobError(f"a group has at most {MAX_GROUP} jobs", field="jobs")
        if not isinstance(self.pipes, list) or not all(isinstance(p, Pipe) for p in self.pipes):
            raise JobError("pipes must be a list of pipes", field="pipes")
        sources: set[tuple[int, str]] = set()
        targets: set[int] = set()
        for pipe in self.pipes:
            for index, name in ((pipe.source[0], "pipes.from"), (pipe.target[0], "pipes.to")):
                if not 0 <= index < len(self.jobs):
                    raise JobError(f"member {index} does not exist (the group has {len(self.jobs)})", field=name)
            if pipe.source in sources:
                raise JobError(f"member {pipe.source[0]}'s {pipe.source[1]} is piped twice", field="pipes.from")
            if pipe.target[0] in targets:
                raise JobError(f"member {pipe.target[0]}'s stdin is fed twice", field="pipes.to")
            if self.jobs[pipe.target[0]].stdin is not None:
                raise JobError(f"member {pipe.target[0]}'s stdin is piped: it cannot also be given", field="pipes.to")
            sources.add(pipe.source)
            targets.add(pipe.target[0])


def _endpoint(value: object, streams: tuple[str, ...], field_name: str) -> tuple[int, str]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise JobError(f"expected [member index, stream], got {value!r}", field=field_name)
    index, stream = value
    if isinstance(index, bool) or not isinstance(index, int):
        raise JobError(f"the member index must be an integer, got {index!r}", field=field_name)
    if stream not in streams:
        raise JobError(f"the stream must be {' or '.join(streams)}, got {stream!r}", field=field_name)
    return index, str(stream)


@dataclass
class Usage:
    """What the job consumed. ``None`` where the kernel (or missing cgroups) cannot say."""

    cpu_ms: float = 0.0
    cpu_user_ms: float = 0.0
    cpu_sys_ms: float = 0.0
    wall_ms: float = 0.0
    memory_peak_bytes: int | None = None
    max_rss_bytes: int = 0
    oom_killed: bool = False
    pids_peak: int | None = None


@dataclass
class Result:
    """What a job came to: its verdict, output, usage and collected files - the same
    whichever way it ran (``sandbox run``, a worker, a judge's test)."""

    status: Status
    exit_code: int | None = None
    signal: int | None = None
    signal_name: str | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    usage: Usage = field(default_factory=Usage)
    violation: dict[str, Any] | None = None
    limits_not_enforced: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # The job's collect list: each file read (by its path in the sandbox, a directory's
    # files beneath the directory's path), and each path refused, with why
    # ("word: detail": missing, not_regular, not_directory, too_large, too_many_files,
    # changed, ...).
    files: dict[str, bytes] = field(default_factory=dict)
    file_errors: dict[str, str] = field(default_factory=dict)
    # Collected files a worker kept in its file cache (a collect entry's ``cache``): path
    # -> file id, for later jobs' files, instead of their bytes in ``files``.
    file_ids: dict[str, str] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain types only; output bytes decoded so hostile bytes cannot break JSON,
        collected files as base64 (they are whatever the job wrote)."""
        data = asdict(self)
        data["status"] = self.status.value
        data["stdout"] = self.stdout.decode("utf-8", errors="replace")
        data["stderr"] = self.stderr.decode("utf-8", errors="replace")
        data["files"] = {path: base64.b64encode(content).decode("ascii") for path, content in self.files.items()}
        return data


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def sandbox_path(path: str, *, field_name: str) -> str:
    """Normalise a path inside the sandbox; it must lie in a writable area."""
    _check_text(field_name, path)
    if not posixpath.isabs(path) or ".." in path.split("/"):
        raise JobError(f"{path!r} must be absolute and contain no '..'", field=field_name)
    normal = posixpath.normpath(path)
    if not any(normal.startswith(root + "/") for root in WRITABLE_ROOTS):
        raise JobError(f"{path!r} must lie under {' or '.join(WRITABLE_ROOTS)}", field=field_name)
    return normal


def _beneath(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or lies in it (both normalised)."""
    return path == directory or path.startswith(directory + "/")


def _collect_path(path: str) -> str:
    """A path to collect, normalised (a directory keeps its trailing "/"): like an input
    file's, in a writable area - a job's own files, never the image's or the host's -
    where a directory may be the area itself ("/work/")."""
    directory = path.endswith("/")
    if not posixpath.isabs(path) or ".." in path.split("/"):
        raise JobError(f"{path!r} must be absolute and contain no '..'", field="collect.path")
    normal = posixpath.normpath(path)
    if not any(normal.startswith(root + "/") or (directory and normal == root) for root in WRITABLE_ROOTS):
        raise JobError(f"{path!r} must lie under {' or '.join(WRITABLE_ROOTS)}", field="collect.path")
    return normal + "/" if directory else normal


def is_profile_file(name: str) -> bool:
    """A profile named by its file rather than by name: anything with a "/" or ending in
    ".toml" ("./mine.toml", "mine.toml", "/etc/sandbox/judge.toml")."""
    return "/" in name or name.endswith(".toml")


def _check_image_reference(text: str) -> None:
    """A stored image is named by a reference (Docker's rules) or an id; one that cannot
    name anything is the job's error here, not a failure in the sandbox later."""
    from sandbox.images.errors import BadReference
    from sandbox.images.reference import parse

    try:
        parse(text)
    except BadReference as exc:
        raise JobError(str(exc), field="image") from None


def _parsed(parse: Callable[[Any], int], name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise JobError(f"expected a number or a string with a unit, got {type(value).__name__}", field=f"limits.{name}")
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        raise JobError(str(exc), field=f"limits.{name}") from None


def _cpus(value: object) -> float:
    """A CPU quota: a number, or its text ("0.5")."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise JobError(f"invalid CPU count {value!r} (examples: 0.5, 2, none)", field="limits.cpus") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobError("cpus must be a number", field="limits.cpus")
    if not 0.01 <= value <= 1024:  # (compared as it is: a TOML int may be past any float)
        raise JobError("cpus must be between 0.01 and 1024", field="limits.cpus")
    return float(value)


def _check_text(field_name: str, value: object) -> None:
    if not isinstance(value, str):
        raise JobError(f"expected a string, got {type(value).__name__}", field=field_name)
    if "\x00" in value:
        raise JobError("NUL byte in string", field=field_name)


def _bounded_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JobError(f"must be an integer between {low} and {high}", field=name)
    return value


@dataclass(frozen=True)
class WarmSpec:
    """``count`` sandboxes kept prepared for jobs in ``profile`` on ``image`` ("host", or
    a stored image's reference as jobs write it: "python:3.12")."""

    count: int
    profile: str = "default"
    image: str = "host"

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 0 <= self.count <= 4096:
            raise JobError("count must be a whole number from 0 to 4096", field="warm")
        Job(cmd=["true"], profile=self.profile, image=self.image)  # the same names a job may use

    @classmethod
    def parse(cls, text: str) -> WarmSpec:
        """From "count=N[,profile=P][,image=I]" (``sandbox serve --warm-for``)."""
        parts: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or key not in ("count", "profile", "image") or key in parts:
                raise JobError(f"expected count=N[,profile=P][,image=I], got {text!r}", field="warm")
            parts[key] = value
        if not parts.get("count", "").isdigit():
            raise JobError(f"count=N is required, got {text!r}", field="warm")
        return cls(int(parts.pop("count")), **parts)

    def to_wire(self) -> dict[str, Any]:
        return {"count": self.count, "profile": self.profile, "image": self.image}

    @staticmethod
    def merged(specs: list[WarmSpec]) -> list[WarmSpec]:
        """One spec per kind, counts added up; kinds of count 0 left out."""
        counts: dict[tuple[str, str], int] = {}
        for spec in specs:
            counts[spec.profile, spec.image] = counts.get((spec.profile, spec.image), 0) + spec.count
        return [WarmSpec(count, profile, image) for (profile, image), count in counts.items() if count]


# Sessions (sandbox/session.py): a sandbox that lives between commands.
DEFAULT_SESSION_TTL_S = 600.0
MAX_SESSION_TTL_S = 7 * 24 * 3600.0
DEFAULT_STOP_GRACE_S = 10.0  # from SIGTERM to SIGKILL (docker stop's default)


@dataclass(frozen=True)
class SessionSpec:
    """A session to create: its image and profile, the limits of the session as a whole
    (memory, pids and cpus for every exec together; ``disk``, its one scratch) and how
    long it may stay idle - no exec running - before it is deleted (``ttl_s``)."""

    image: str = "host"
    profile: str = "default"
    limits: Limits = field(default_factory=Limits)
    ttl_s: float = DEFAULT_SESSION_TTL_S

    def __post_init__(self) -> None:
        Job(cmd=["true"], profile=self.profile, image=self.image)  # the same names a job may use
        if not isinstance(self.limits, Limits):
            raise JobError("limits must be a map of limits", field="limits")
        ttl = self.ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= MAX_SESSION_TTL_S:
            raise JobError(f"ttl must be more than 0 and at most {MAX_SESSION_TTL_S:.0f} seconds", field="ttl")
