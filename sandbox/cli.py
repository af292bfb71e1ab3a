"""``sandbox``: the command line. Thin by design - it parses flags into the same Job
model the worker protocol uses and prints the same Result.

Exit status of ``sandbox run`` (docker's convention): the job's exit code, 128+signal
when it was killed, 125 when the sandbox itself failed. With ``--json`` the result is
printed as JSON and the exit status is 0 unless the sandbox failed (125).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from sandbox.errors import JobError, SandboxError
from sandbox.judge import cli as judge_cli

if TYPE_CHECKING:
    from sandbox.models import Blob, InputFile, Job, Limits, Result, WarmSpec
    from worker.client import Client, WorkerError

EXIT_SANDBOX_ERROR = 125
DISTRIBUTION = "sandbox-executor"  # pyproject.toml's name
# The worker socket that serve and submit use when given no --socket (nor --tcp).
SOCKET_VARIABLE = "SANDBOX_SOCKET"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except JobError as exc:
        print(f"sandbox: {describe_job_error(exc)}", file=sys.stderr)
        return EXIT_SANDBOX_ERROR
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return EXIT_SANDBOX_ERROR


# The flag that sets each part of a job (the model's and the protocol's field names),
# so that an error names what to change on the command line.
_FLAG_OF_FIELD = {
    "cmd": "COMMAND", "env": "--env", "stdin": "--stdin", "image": "--image", "cwd": "--cwd",
    "profile": "--profile", "require_cgroups": "--require-cgroups", "lang": "--lang", "source": "--source",
    "files": "--file", "files.dest": "--file", "files.path": "--file", "files.mode": "--file", "files.data": "--file",
    "socket": "--socket", "tcp": "--tcp", "metrics": "--metrics",
}


def describe_job_error(exc: JobError) -> str:
    """"--memory: invalid size '12XB' ...": the flag to fix, then what is wrong."""
    if exc.field is None:
        return f"invalid job: {exc.message}"
    if exc.field.startswith("limits."):
        return f"--{exc.field.removeprefix('limits.').replace('_', '-')}: {exc.message}"
    return f"{_FLAG_OF_FIELD.get(exc.field, exc.field)}: {exc.message}"


class _VersionAction(argparse.Action):
    """``--version``: the installed package's version, read only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version(DISTRIBUTION)
        except PackageNotFoundError:
            text = "(not installed: pip install -e .)"
        print(f"sandbox {text}")
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 125 like every other error of the sandbox itself."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_SANDBOX_ERROR, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sandbox", description="Rootless sandbox executor for untrusted code.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run one command in a sandbox")
    add_job_arguments(run, languages=True)
    run.set_defaults(handler=_cmd_run)

    serve = commands.add_parser("serve", help="run the worker: a pool serving jobs over a socket")
    serve.add_argument("--socket", help=f"unix socket path (created 0600; default ${SOCKET_VARIABLE} without --tcp)")
    serve.add_argument("--socket-group", metavar="GROUP",
                       help="let this group's members connect too (socket 0660, owned by GROUP)")
    serve.add_argument("--tcp", metavar="HOST:PORT", help="also listen on TCP (requires --token-file)")
    serve.add_argument("--token-file", help="file holding the token TCP clients must present")
    serve.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="jobs run at once (default: CPUs)")
    serve.add_argument("--queue", type=int, default=1024, help="jobs waiting at most; more get 'busy'")
    serve.add_argument("--warm", type=int, default=0,
                       help="sandboxes kept prepared ahead of jobs in the default profile on the host image "
                            "(default 0)")
    serve.add_argument("--warm-for", action="append", default=[], type=_warm_spec,
                       metavar="count=N[,profile=P][,image=I]",
                       help="also keep N sandboxes prepared for jobs in profile P and/or on stored image I "
                            "(repeatable)")
    serve.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics")
    serve.add_argument("--retention", type=float, default=300.0, metavar="SECONDS",
                       help="keep finished jobs' results this long for resubmitted ids (default 300)")
    serve.add_argument("--max-frame", type=_frame_size, default="16M", metavar="SIZE",
                       help="largest request taken (a job with its stdin and files), e.g. 64M (default 16M)")
    serve.set_defaults(handler=_cmd_serve)

    submit = commands.add_parser("submit", help="run one command through a worker (same flags as run)")
    submit.add_argument("--socket", help=f"the worker's unix socket (default ${SOCKET_VARIABLE})")
    submit.add_argument("--tcp", metavar="HOST:PORT", help="the worker's TCP address")
    submit.add_argument("--token-file", help="token for TCP")
    add_job_arguments(submit, languages=True)
    submit.set_defaults(handler=_cmd_submit)

    _image_commands(commands)
    _profile_commands(commands)
    judge_cli.add_commands(commands)

    doctor = commands.add_parser("doctor", help="check what this host supports and what is missing")
    doctor.set_defaults(handler=_cmd_doctor)

    setup = commands.add_parser("setup-cgroups", help="(root) delegate a cgroup subtree to a user")
    setup.add_argument("--user", required=True, help="the user who will run sandboxes")
    setup.set_defaults(handler=_cmd_setup_cgroups)
    return parser


def add_job_arguments(parser: argparse.ArgumentParser, *, languages: bool = False) -> None:
    """The flags of a job, the one place they are made: run, submit and profile trace
    take the same (``languages``: and the --lang form, run and submit)."""
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
    parser.add_argument("--require-cgroups", action="store_true", help="fail instead of falling back to rlimits")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set a variable (repeatable)")
    parser.add_argument("--stdin", metavar="PATH", help="file fed to the program's stdin (default: empty)")
    parser.add_argument(
        "--file", action="append", default=[], metavar="SRC:DEST", help="copy host file SRC to DEST under /work or /tmp"
    )
    parser.add_argument("--cwd", help="working directory inside (default: the image's WorkingDir, else /work)")
    parser.add_argument("--image", help="root filesystem image (default: the built-in 'host')")
    parser.add_argument("--profile", default="default",
                        help="seccomp profile and defaults: a name (sandbox profile list) or a profile file")
    if languages:
        parser.add_argument("--lang", help="compile --source with this language preset, then run it "
                                           "(sandbox languages); --file and --env reach both stages")
        parser.add_argument("--source", help="the source file for --lang")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")


def _cmd_run(args: argparse.Namespace) -> int:
    from sandbox.runner import Runner

    # The flags are checked before any set-up.
    job = None if _language_form(args) else job_from_args(args)
    inputs = language_inputs(args) if job is None else {}
    runner = Runner()
    try:
        if job is None:
            from sandbox.languages import RunnerStages
            from sandbox.languages_cli import run_language

            return run_language(args, RunnerStages(runner), **inputs)
        result = runner.run(job)
    finally:
        runner.close()
    return report(result, as_json=args.json)


def _cmd_submit(args: argparse.Namespace) -> int:
    from sandbox.models import is_profile_file
    from sandbox.profile_names import unknown_profile
    from worker.client import WorkerError

    if is_profile_file(args.profile):
        raise unknown_profile(args.profile, files_allowed=False)
    # The flags are checked before connecting.
    job = None if _language_form(args) else job_from_args(args)
    inputs = language_inputs(args) if job is None else {}
    live = None if args.json or job is None else _LiveOutput()
    with _connect(args) as client:
        try:
            if job is None:
                from sandbox.languages_cli import WorkerStages, run_language

                return run_language(args, WorkerStages(client), **inputs)
            result = client.run(job, on_output=live)
        except WorkerError as exc:
            raise worker_error(exc) from exc
        except OSError as exc:
            raise SandboxError(f"worker: {exc}") from exc
    return report(result, as_json=args.json, written=live.written if live else None)


def _connect(args: argparse.Namespace) -> Client:
    """A client of the worker the flags (or $SANDBOX_SOCKET) name; failing to reach it
    names where it was looked for."""
    from worker.client import Client, WorkerError

    tcp = _host_port(args.tcp) if args.tcp else None
    token = _read_token(args.token_file)
    path = args.socket or (None if tcp else os.environ.get(SOCKET_VARIABLE))
    if not path and not tcp:
        raise JobError(f"give --socket PATH or --tcp HOST:PORT (or set {SOCKET_VARIABLE})", field="socket")
    where = f"{tcp[0]}:{tcp[1]}" if tcp else path
    try:
        return Client(path, tcp=tcp, token=token)
    except OSError as exc:
        raise SandboxError(f"cannot reach a worker at {where}: {exc.strerror or exc}") from exc
    except WorkerError as exc:
        raise SandboxError(f"the worker at {where} refused the connection: {exc}") from exc


def _language_form(args: argparse.Namespace) -> bool:
    """True for ``--lang L --source FILE`` (checked: no command, no image, no cwd)."""
    if not (args.lang or args.source):
        return False
    if not (args.lang and args.source):
        raise JobError("--lang and --source go together", field="lang")
    if args.cmd:
        raise JobError("--lang runs the compiled --source: give no command", field="lang")
    if args.image is not None or args.cwd is not None:
        raise JobError("--lang runs in the language image, in /work: --image and --cwd do not apply", field="lang")
    return True


def language_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The job flags that a --lang run passes on (``languages_cli.run_language``)."""
    return {"limits": _limits_from_args(args), "env": _env_from_args(args), "files": _files_from_args(args),
            "stdin": _stdin_from_args(args)}


def worker_error(exc: WorkerError) -> SandboxError:
    """The worker's refusal as ``sandbox run`` would say it: a job the worker finds
    invalid (what the checks here cannot know: the worker's profiles, the images in its
    store) is an invalid job, naming the flag's field; one too large says what to do."""
    message = exc.reply.get("message")
    if exc.code == "invalid_job":
        return JobError(str(message), field=exc.field)
    if exc.code == "frame_too_large":
        return SandboxError(f"the job is too large for the worker ({message}): send less stdin or fewer files, "
                            "or start the worker with a larger sandbox serve --max-frame")
    return SandboxError(f"worker: {exc}")


class _LiveOutput:
    """``sandbox submit`` prints the job's output as it comes, like ``docker run``, as
    long as it comes without a gap; from a dropped piece on, that stream's rest comes
    from the result (``report``), so nothing is printed twice or out of order."""

    def __init__(self) -> None:
        self.written = {"stdout": 0, "stderr": 0}

    def __call__(self, stream: str, offset: int, data: bytes) -> None:
        if offset != self.written[stream]:
            return
        target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        target.write(data)
        target.flush()
        self.written[stream] += len(data)


def _cmd_serve(args: argparse.Namespace) -> int:
    from worker.server import ServerConfig, serve_forever

    socket_path = args.socket or (None if args.tcp else os.environ.get(SOCKET_VARIABLE))
    if not socket_path and not args.tcp:
        raise JobError(f"nothing to listen on: give --socket PATH and/or --tcp HOST:PORT (or set {SOCKET_VARIABLE})",
                       field="socket")
    config = ServerConfig(
        socket_path=socket_path,
        socket_group=args.socket_group,
        tcp=_host_port(args.tcp) if args.tcp else None,
        token=_read_token(args.token_file),
        slots=args.slots,
        max_queue=args.queue,
        warm=args.warm,
        warm_for=args.warm_for,
        retention_s=args.retention,
        metrics=_host_port(args.metrics, "metrics") if args.metrics else None,
        max_frame=args.max_frame,
    )
    try:
        serve_forever(config)
    except ValueError as exc:
        raise SandboxError(str(exc)) from exc
    return 0


def _frame_size(text: str) -> int:
    """``--max-frame``: a size as limits are written ("64M")."""
    from sandbox.units import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_port(text: str, option: str = "tcp") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise JobError(f"expected HOST:PORT, got {text!r}", field=option)
    return host, int(port)


def _read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError as exc:
        raise SandboxError(f"cannot read token file {path}: {exc.strerror}") from exc


def report(result: Result, *, as_json: bool, written: dict[str, int] | None = None) -> int:
    """Print a result the way both run and submit do; returns the exit status.
    ``written``: how much of each stream was printed already, as it came."""
    from sandbox.models import Status

    if as_json:
        json.dump(result.to_json_dict(), sys.stdout)
        sys.stdout.write("\n")
        return EXIT_SANDBOX_ERROR if result.status is Status.INTERNAL_ERROR else 0
    written = written or {"stdout": 0, "stderr": 0}
    sys.stdout.buffer.write(result.stdout[written["stdout"]:])
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr[written["stderr"]:])
    if result.status is Status.INTERNAL_ERROR:
        print(f"sandbox: internal error: {result.error}", file=sys.stderr)
        return EXIT_SANDBOX_ERROR
    if result.status not in (Status.OK, Status.RUNTIME_ERROR, Status.SIGNALED) or result.error:
        detail = result.error or f"cpu {result.usage.cpu_ms:.0f} ms, wall {result.usage.wall_ms:.0f} ms"
        print(f"sandbox: {result.status.value} ({detail})", file=sys.stderr)
    for warning in result.warnings:
        print(f"sandbox: warning: {warning}", file=sys.stderr)
    if result.signal:
        return 128 + result.signal
    return result.exit_code or 0


def job_from_args(args: argparse.Namespace) -> Job:
    from sandbox.models import Job

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    image = args.image or "host"
    if not cmd and image == "host":
        raise JobError("no command given (sandbox run [OPTIONS] -- COMMAND [ARG...])", field="cmd")
    return Job(
        cmd=cmd,
        limits=_limits_from_args(args),
        env=_env_from_args(args),
        stdin=_stdin_from_args(args),
        files=_files_from_args(args),
        image=image,
        cwd=args.cwd,
        require_cgroups=args.require_cgroups,
        profile=args.profile,
    )


def _env_from_args(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            raise JobError(f"expects NAME=VALUE, got {item!r}", field="env")
        env[name] = value
    return env


def _files_from_args(args: argparse.Namespace) -> list[InputFile]:
    from sandbox.models import Blob, InputFile

    files = []
    for item in args.file:
        source, sep, dest = item.rpartition(":")
        if not sep or not source:
            raise JobError(f"expects SRC:DEST, got {item!r}", field="files")
        mode = _readable_file(source, "files") & 0o755
        files.append(InputFile(dest=dest, content=Blob(path=source), mode=mode))
    return files


def _stdin_from_args(args: argparse.Namespace) -> Blob | None:
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


def _warm_spec(text: str) -> WarmSpec:
    from sandbox.models import WarmSpec

    try:
        return WarmSpec.parse(text)
    except JobError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _limits_from_args(args: argparse.Namespace) -> Limits:
    """The limits the flags give; the runner takes the others from the profile's
    [limits], then from the defaults."""
    from sandbox.models import Limits

    limit_flags = {
        "cpu_time": args.cpu_time,
        "wall_time": args.wall_time,
        "memory": args.memory,
        "pids": args.pids,
        "output": args.output,
        "disk": args.disk,
        "open_files": args.open_files,
        "stack": args.stack,
        "file_size": args.file_size,
        "cpus": args.cpus,
    }
    return Limits(**{name: value for name, value in limit_flags.items() if value is not None})


def _image_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """pull, images, import, inspect, rmi, gc: handlers live in sandbox/images/cli.py."""
    from sandbox.images import cli as images_cli

    images_cli.add_commands(commands)


def _profile_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """profile list/show/trace (sandbox/profile_cli.py), languages (sandbox/languages_cli.py)."""
    from sandbox import languages_cli, profile_cli

    profile_cli.add_commands(commands, add_job_arguments)
    languages_cli.add_commands(commands)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from sandbox.doctor import run_checks

    return run_checks(sys.stdout)


def _cmd_setup_cgroups(args: argparse.Namespace) -> int:
    from sandbox.cgroups.setup import setup_cgroups

    for line in setup_cgroups(args.user):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
