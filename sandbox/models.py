"""The data every layer shares: Job, Limits, Usage, Result and the status vocabulary.

One job means the same thing to the CLI, the worker protocol and the runner because all
of them build these objects and nothing else. Validation happens here, once, so the
runner can trust what it is handed.
"""

from __future__ import annotations

import enum
import math
import posixpath
import re
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from sandbox.errors import JobError
from sandbox.units import is_no_limit, parse_duration_ms, parse_size

WORKDIR = "/work"
WRITABLE_ROOTS = (WORKDIR, "/tmp")
MAX_ARGS = 4096
MAX_ENV = 1024
# A job's files travel to its sandbox as fds of one message, beside stdin, stdout and
# stderr, and the kernel passes at most 253 fds in one message (SCM_MAX_FD).
MAX_FILES = 250
# A file a worker caches is named by its content (``worker/filecache.py``): the SHA-256
# of its bytes, with the algorithm in front so that another one can come later.
FILE_ID_PREFIX = "sha256:"
_FILE_ID = re.compile(r"sha256:[0-9a-f]{64}")


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


@dataclass
class Limits:
    """Per-job limits. Text such as "256M" or "2s" is accepted and stored as int.

    Units once normalised: times in milliseconds, sizes in bytes, ``cpus`` in CPUs.
    ``None`` means "no limit" where that is allowed (cpu_time, cpus); so do the words
    "none" and "unlimited" there (``units.NO_LIMIT_WORDS``: a flag or a TOML file has
    no nil to write).

    A Limits remembers which limits its caller gave (``given``): the others come from
    the job's profile ([limits], docs/profiles.md) and only then from the defaults here
    - the same for ``sandbox run`` flags, a worker job's partial ``limits`` map and a
    Python caller (``over``).
    """

    cpu_time: int | str | None = "10s"
    wall_time: int | str = "30s"
    memory: int | str = "512M"
    pids: int = 64
    output: int | str = "64M"
    disk: int | str = "64M"
    open_files: int = 256
    stack: int | str = "8M"
    file_size: int | str = "64M"
    cpus: float | None = None
    _given: ClassVar[frozenset[str]]  # set per instance in __new__

    def __new__(cls, *args: Any, **kwargs: Any) -> Limits:
        # __new__ sees the arguments exactly as the caller gave them; the generated
        # __init__ fills in the defaults and would hide which ones those were.
        instance = super().__new__(cls)
        given = frozenset(kwargs) | {f.name for f in fields(cls)[: len(args)]} if args else frozenset(kwargs)
        object.__setattr__(instance, "_given", given)  # per instance; declared on the class, not a field
        return instance

    @property
    def given(self) -> frozenset[str]:
        """The names of the limits the caller set, whatever the value."""
        return self._given

    def given_values(self) -> dict[str, Any]:
        """The limits the caller set, in a form ``Limits(...)`` accepts back (durations
        are stored in ms, and a bare number would mean seconds)."""
        values = {}
        for name in sorted(self._given):
            value = getattr(self, name)
            if name in ("cpu_time", "wall_time") and value is not None:
                value = f"{value}ms"
            values[name] = value
        return values

    def over(self, base: dict[str, Any]) -> Limits:
        """These limits where given, ``base``'s (a profile's [limits]) for the rest, the
        defaults for what neither names. (Most profiles have no [limits]: then these.)"""
        return Limits(**{**base, **self.given_values()}) if base else self

    def __post_init__(self) -> None:
        # Each limit's error names that limit (``limits.memory``), so the CLI can name
        # its flag and a protocol client its key.
        if is_no_limit(self.cpu_time):
            self.cpu_time = None
        self.cpu_time = None if self.cpu_time is None else _parsed(parse_duration_ms, "cpu_time", self.cpu_time)
        self.wall_time = _parsed(parse_duration_ms, "wall_time", self.wall_time)
        self.memory = _parsed(parse_size, "memory", self.memory)
        self.output = _parsed(parse_size, "output", self.output)
        self.disk = _parsed(parse_size, "disk", self.disk)
        self.stack = _parsed(parse_size, "stack", self.stack)
        self.file_size = _parsed(parse_size, "file_size", self.file_size)
        self.pids = _bounded_int("limits.pids", self.pids, 1, 1 << 22)
        self.open_files = _bounded_int("limits.open_files", self.open_files, 4, 1 << 20)
        if is_no_limit(self.cpus):
            self.cpus = None
        if self.cpus is not None:
            self.cpus = _cpus(self.cpus)

    @property
    def cgroup_values(self) -> tuple[int, int, float | None]:
        """The limits only a cgroup enforces for a whole job tree (``CGROUP_LIMITS``), as a
        job cgroup is written with them: a warm sandbox's cgroup fits a job whose values
        are the same."""
        return (self.memory_bytes, self.pids, self.cpus)

    # Typed views, for code that runs after validation.
    @property
    def cpu_time_ms(self) -> int | None:
        return None if self.cpu_time is None else int(self.cpu_time)

    @property
    def wall_time_ms(self) -> int:
        return int(self.wall_time)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory)

    @property
    def output_bytes(self) -> int:
        return int(self.output)

    @property
    def disk_bytes(self) -> int:
        return int(self.disk)

    @property
    def stack_bytes(self) -> int:
        return int(self.stack)

    @property
    def file_size_bytes(self) -> int:
        return int(self.file_size)


# Every limit a job may set (flags, profiles' [limits], the wire's "limits"), and the
# ones only a cgroup enforces for a whole job tree (``Limits.cgroup_values``).
LIMIT_NAMES = tuple(f.name for f in fields(Limits))
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

    def to_json_dict(self) -> dict[str, Any]:
        """Plain types only; output bytes decoded so hostile bytes cannot break JSON."""
        data = asdict(self)
        data["status"] = self.status.value
        data["stdout"] = self.stdout.decode("utf-8", errors="replace")
        data["stderr"] = self.stderr.decode("utf-8", errors="replace")
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
    if not math.isfinite(value) or not 0.01 <= value <= 1024:
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
