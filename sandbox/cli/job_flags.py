"""The flags of a job, made in one place (run, submit, profile trace take the same), and
the Job, limits, files and environment they give. A file the job will read is checked
here, so a missing one is the flag's error, not a failure in the sandbox later."""

from __future__ import annotations

import argparse
import os
import stat
from typing import TYPE_CHECKING, Any

from sandbox.errors import JobError
from sandbox.models import LIMIT_NAMES

if TYPE_CHECKING:
    from sandbox.models import Blob, Collect, InputFile, Job, Limits, Mount


def add_job_arguments(parser: argparse.ArgumentParser, *, languages: bool = False, placement: bool = True) -> None:
    """The flags of a job, the one place they are made: run, submit and profile trace
    take the same (``languages``: and the --lang form, run and submit; without
    ``placement``, none of the flags that choose where it runs - image, profile, cgroups
    required: a session's exec runs in its session)."""
    limits = parser.add_argument_group("limits")
    limits.add_argument("--cpu-time", help="CPU time over all processes and threads (e.g. 2s, 500ms, 2m; none)")
    limits.add_argument("--wall-time", help="wall-clock time (e.g. 5s, 2m, 1h, 1m30s)")
    limits.add_argument("--memory", help="memory incl. tmpfs writes, swap off (e.g. 256M, 1G)")
    limits.add_argument("--pids", type=int, help="processes and threads at once")
    limits.add_argument("--output", help="bytes kept of stdout and of stderr, each (e.g. 64M)")
    limits.add_argument("--disk", help="size of the writable area /work + /tmp + /dev/shm (e.g. 64M)")
    limits.add_argument("--open-files", type=int, help="open file descriptors per process")
    limits.add_argument("--stack", help="stack size per process (e.g. 8M)")
    limits.add_argument("--file-size", help="largest file a process may write (e.g. 64M)")
    limits.add_argument("--cpus", help="CPU quota in CPUs (e.g. 0.5; none)")
    if placement:
        parser.add_argument("--require-cgroups", action="store_true",
                            help="fail instead of falling back to rlimits")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set a variable (repeatable)")
    parser.add_argument("--stdin", metavar="PATH", help="file fed to the program's stdin (default: empty)")
    parser.add_argument(
        "--file", action="append", default=[], metavar="SRC:DEST", help="copy host file SRC to DEST under /work or /tmp"
    )
    parser.add_argument(
        "--collect", action="append", default=[], metavar="PATH[:MAX]",
        help="read PATH under /work or /tmp out of the sandbox once the job is over, at most MAX bytes "
             "(default 64M); a trailing / collects a directory's files, MAX their total (repeatable)",
    )
    parser.add_argument("--collect-to", metavar="DIR",
                        help="write the collected files beneath DIR (DIR/work/...), never through a symlink")
    parser.add_argument("--bind", action="append", default=[], metavar="HOST:INSIDE[:ro|rw]",
                        help="mount the host directory HOST at INSIDE under /work or /tmp, read-only unless rw; "
                             "no symlink is followed in HOST (repeatable)")
    parser.add_argument("--volume", action="append", default=[], metavar="NAME:INSIDE[:ro|rw][:size=N]",
                        help="mount the named volume NAME at INSIDE under /work or /tmp, made on first use and "
                             "kept for later jobs; read-write unless ro, holding at most N (default "
                             "1G: ENOSPC inside past it) (repeatable; sandbox volume ls)")
    parser.add_argument("--cwd", help="working directory inside (default: the image's WorkingDir, else /work)")
    if placement:
        parser.add_argument("--image", help="root filesystem image (default: the built-in 'host')")
        parser.add_argument("--profile", default="default",
                            help="seccomp profile and defaults: a name (sandbox profile list) or a profile file")
        parser.add_argument("--network", choices=["egress"],
                            help="egress: reach the outside through a user-space stack (private ranges and the "
                                 "host stay unreachable; default: the profile's mode)")
        parser.add_argument("--allow-net", action="append", default=[], metavar="CIDR",
                            help="with egress: let a blocked range through (e.g. 10.0.0.0/8; repeatable)")
        parser.add_argument("--interpreter", nargs="?", const="", metavar="MODULE,...",
                            help="the interpreter mode, for python3 FILE or python3 -c CODE: a clone of a waiting "
                                 "python3 that imported these modules, in a sandbox of its own (pays off through "
                                 "a worker, over many jobs)")
    if languages:
        parser.add_argument("--lang", help="compile --source with this language preset, then run it "
                                           "(sandbox languages); --file and --env reach both stages")
        parser.add_argument("--source", help="the source file for --lang")
        parser.add_argument("--compile-option", action="append", default=[], metavar="OPTION",
                            help="a compiler option for --lang, from the preset's allow-list (repeatable; "
                                 "--compile-option=-O0: the value starts with a dash)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("cmd", nargs=argparse.REMAINDER,
                        help="-- COMMAND [ARG...]" + (" (with --lang: -- ARG... for the program)" if languages else ""))


def job_from_args(args: argparse.Namespace) -> Job:
    from sandbox.models import Job

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    image = getattr(args, "image", None) or "host"
    if not cmd and image == "host":
        raise JobError("no command given (sandbox run [OPTIONS] -- COMMAND [ARG...])", field="cmd")
    return Job(
        cmd=cmd,
        limits=limits_from_args(args),
        env=env_from_args(args),
        stdin=stdin_from_args(args),
        files=files_from_args(args),
        image=image,
        cwd=args.cwd,
        require_cgroups=getattr(args, "require_cgroups", False),
        profile=getattr(args, "profile", "default"),
        collect=collect_from_args(args),
        mounts=mounts_from_args(args),
        network=getattr(args, "network", None),
        allow_net=getattr(args, "allow_net", []),
        interpreter=interpreter_from_args(args),
    )


def interpreter_from_args(args: argparse.Namespace) -> list[str] | None:
    """``--interpreter`` (no modules) or ``--interpreter math,typing``; None without it."""
    given: str | None = getattr(args, "interpreter", None)
    if given is None:
        return None
    return [name.strip() for name in given.split(",") if name.strip()]


def mounts_from_args(args: argparse.Namespace) -> list[Mount]:
    """``--bind HOST:INSIDE[:ro|rw]`` and ``--volume NAME:INSIDE[:ro|rw][:size=N]``: the
    last fields that are "ro", "rw" or "size=N" are options (a host path may hold a ":"
    otherwise)."""
    from sandbox.models import Mount

    mounts = []
    for flag, items in (("bind", args.bind), ("volume", args.volume)):
        for item in items:
            fields = item.split(":")
            options: dict[str, str] = {}
            while len(fields) > 2 and (fields[-1] in ("ro", "rw") or fields[-1].startswith("size=")):
                option = fields.pop()
                key, _, value = option.partition("=") if option.startswith("size=") else ("access", "", option)
                if key in options:
                    raise JobError(f"{key} given twice in {item!r}", field=flag)
                options[key] = value
            source, sep, inside = ":".join(fields).rpartition(":")
            if not sep or not source or not inside:
                raise JobError(f"expects SOURCE:INSIDE[:ro|rw]{'[:size=N]' if flag == 'volume' else ''}, "
                               f"got {item!r}", field=flag)
            writable = None if "access" not in options else options["access"] == "rw"
            if flag == "bind":
                if "size" in options:
                    raise JobError("a bind has no size cap (a volume has)", field=flag)
                mounts.append(Mount(inside, bind=source, writable=writable))
            else:
                mounts.append(Mount(inside, volume=source, writable=writable, size=options.get("size")))
    return mounts


def collect_from_args(args: argparse.Namespace) -> list[Collect]:
    """``--collect PATH[:MAX]``: MAX is what follows the last ":" when that holds no "/"
    (a path may have a ":" in it; a size never has a "/")."""
    from sandbox.models import Collect

    entries = []
    for item in args.collect:
        path, sep, size = item.rpartition(":")
        if not sep or not size or "/" in size:
            entries.append(Collect(item))
        else:
            entries.append(Collect(path, max=size))
    return entries


def collect_target(args: argparse.Namespace) -> int | None:
    """``--collect-to DIR``, opened (the caller's to close with the process)."""
    if args.collect_to is None:
        return None
    if not args.collect:
        raise JobError("--collect-to writes what --collect names: give --collect too", field="collect_to")
    from sandbox.cli.collected import open_target

    return open_target(args.collect_to)


def language_form(args: argparse.Namespace) -> bool:
    """True for ``--lang L --source FILE`` (checked: no cwd, collect, mounts, network or
    interpreter; ``--image`` names one built on the language image; what follows ``--``
    is the program's arguments)."""
    if not (args.lang or args.source):
        if args.compile_option:
            raise JobError("--compile-option goes with --lang", field="compile_options")
        return False
    if args.collect:
        raise JobError("--collect reads what a command leaves: not with --lang", field="collect")
    if args.bind or args.volume:
        raise JobError("--bind and --volume mount for a command: not with --lang", field="mounts")
    if args.network or args.allow_net:
        raise JobError("--network and --allow-net give a command the outside: not with --lang", field="network")
    if args.interpreter is not None:
        raise JobError("--interpreter runs a python3 command: not with --lang", field="interpreter")
    if not (args.lang and args.source):
        raise JobError("--lang and --source go together", field="lang")
    if args.cwd is not None:
        raise JobError("--lang runs in /work: --cwd does not apply", field="lang")
    return True


def language_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """What the flags say of a --lang run, as ``cli.languages.run_language`` takes it."""
    return {"lang": args.lang, "source": args.source, "profile": args.profile, "require_cgroups": args.require_cgroups,
            "as_json": args.json, "limits": limits_from_args(args), "env": env_from_args(args),
            "files": files_from_args(args), "stdin": stdin_from_args(args), "options": args.compile_option,
            "args": args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd, "image": args.image}


def env_from_args(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise JobError(f"expects NAME=VALUE, got {item!r}", field="env")
        env[name] = value
    return env


def files_from_args(args: argparse.Namespace) -> list[InputFile]:
    from sandbox.models import Blob, InputFile

    files = []
    for item in args.file:
        source, sep, dest = item.rpartition(":")
        if not sep or not source:
            raise JobError(f"expects SRC:DEST, got {item!r}", field="files")
        mode = _readable_file(source, "files") & 0o755
        files.append(InputFile(dest=dest, content=Blob(path=source), mode=mode))
    return files


def stdin_from_args(args: argparse.Namespace) -> Blob | None:
    from sandbox.models import Blob

    if args.stdin is None:
        return None
    _readable_file(args.stdin, "stdin")
    return Blob(path=args.stdin)


def _readable_file(path: str, field: str) -> int:
    """The mode of a host file the job will read, checked here so that a missing or
    unreadable file, or a directory, is the flag's error - not a failure in the sandbox
    or the worker later. (Non-blocking: a FIFO is fine and is not waited for here.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise JobError(f"cannot read {path}: {exc.strerror}", field=field) from None
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if stat.S_ISDIR(mode):
        raise JobError(f"{path} is a directory, not a file", field=field)
    return mode


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The limits the flags give; the runner takes the others from the profile's
    [limits], then from the defaults."""
    from sandbox.models import Limits

    given = {name: getattr(args, name) for name in LIMIT_NAMES}  # --cpu-time is cpu_time, ...
    return Limits(**{name: value for name, value in given.items() if value is not None})
