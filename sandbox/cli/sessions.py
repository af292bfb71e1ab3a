"""``sandbox session ...``: sandboxes that live between commands, through a worker
(Docker's create / exec / cp / logs / stop / pause / unpause / ps / rm / commit, and
``sandbox commit`` as Docker's top-level one). The CLI exits between commands: a session
is the worker's, named by the id ``create`` prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sandbox.cli.job_flags import add_job_arguments, collect_target, job_from_args
from sandbox.cli.output import report
from sandbox.cli.worker import worker_calls
from sandbox.errors import JobError, SandboxError

# The exit status of an exec is its job's, as for run; a session command's own failure is 125.
SESSION_LIMITS = ("memory", "pids", "disk", "cpus")


def add_commands(commands: Any) -> None:
    session = commands.add_parser("session", help="sandboxes that live between commands, through a worker")
    actions = session.add_subparsers(dest="action", required=True, parser_class=type(session))

    create = _with_worker(actions.add_parser("create", help="make a session; prints its id"))
    create.add_argument("--image", default="host", help="root filesystem image (default: the built-in 'host')")
    create.add_argument("--profile", default="default", help="seccomp profile and defaults of every exec")
    create.add_argument("--ttl", default="10m",
                        help="delete the session once idle (no exec running) this long (default 10m)")
    limits = create.add_argument_group("limits of the whole session (every exec together)")
    limits.add_argument("--memory", help="memory incl. tmpfs writes (e.g. 512M)")
    limits.add_argument("--pids", type=int, help="processes and threads at once")
    limits.add_argument("--disk", help="size of the writable area /work + /tmp + /dev/shm, kept between execs")
    limits.add_argument("--cpus", help="CPU quota in CPUs (e.g. 0.5; none)")
    create.set_defaults(handler=_cmd_create)

    run = _with_worker(actions.add_parser("exec", help="run a command in a session (the flags of run, its own "
                                                       "limits; the exit status is the command's)"))
    run.add_argument("session", help="the session's id")
    add_job_arguments(run, placement=False)
    run.set_defaults(handler=_cmd_exec)

    copy = _with_worker(actions.add_parser("cp", help="copy a file in (HOST SESSION:PATH) or out (SESSION:PATH HOST, "
                                                      "'-' for stdout)"))
    copy.add_argument("source")
    copy.add_argument("target")
    copy.set_defaults(handler=_cmd_cp)

    logs = _with_worker(actions.add_parser("logs", help="the session's recent execs: commands, statuses, outputs"))
    logs.add_argument("session")
    logs.add_argument("--json", action="store_true", help="print them as JSON")
    logs.set_defaults(handler=_cmd_logs)

    stop = _with_worker(actions.add_parser("stop", help="SIGTERM to what runs, SIGKILL after --grace; the "
                                                        "session and its files stay"))
    stop.add_argument("session")
    stop.add_argument("--grace", default="10s", help="from SIGTERM to SIGKILL (default 10s)")
    stop.set_defaults(handler=_cmd_control, request="session_stop")

    for action, text in (("pause", "freeze every process of the session (no CPU) until resume"),
                         ("resume", "thaw a paused session"), ("rm", "end the session: processes, files, cgroups")):
        parser = _with_worker(actions.add_parser(action, help=text))
        parser.add_argument("session")
        request = {"pause": "session_pause", "resume": "session_resume", "rm": "session_delete"}[action]
        parser.set_defaults(handler=_cmd_control, request=request)

    listing = _with_worker(actions.add_parser("ls", help="the worker's sessions"))
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(handler=_cmd_ls)

    for parsers in (actions, commands):  # `sandbox session commit` and `sandbox commit`
        _add_commit(parsers)


def _add_commit(parsers: Any) -> None:
    commit = _with_worker(parsers.add_parser(
        "commit", help="store an image session's root (its image plus what its execs changed outside /work, /tmp "
                       "and /dev/shm) as an image in the worker's store; prints its reference and id"))
    commit.add_argument("session")
    commit.add_argument("reference", help="the new image's name:tag")
    commit.set_defaults(handler=_cmd_commit)


def _with_worker(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from sandbox.cli.worker import SOCKET_VARIABLE

    parser.add_argument("--socket", help=f"the worker's unix socket (default ${SOCKET_VARIABLE})")
    parser.add_argument("--tcp", metavar="HOST:PORT", help="the worker's TCP address")
    parser.add_argument("--token-file", help="token for TCP")
    return parser


def _cmd_create(args: argparse.Namespace) -> int:
    from sandbox.models import Limits, SessionSpec
    from sandbox.units import parse_duration_ms

    try:
        ttl_s = parse_duration_ms(args.ttl) / 1000
    except ValueError as exc:
        raise JobError(str(exc), field="ttl") from None
    given = {name: getattr(args, name) for name in SESSION_LIMITS if getattr(args, name) is not None}
    spec = SessionSpec(image=args.image, profile=args.profile, limits=Limits(**given), ttl_s=ttl_s)
    with worker_calls(args) as client:
        print(client.session_create(spec))
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    from sandbox.cli.output import LiveOutput

    job = job_from_args(args)
    collect_to = collect_target(args)
    live = None if args.json else LiveOutput()
    with worker_calls(args) as client:
        result = client.session_exec(args.session, job, on_output=live)
    return report(result, as_json=args.json, written=live.written if live else None, collect_to=collect_to)


def _cmd_cp(args: argparse.Namespace) -> int:
    """A copy is an exec: in, ``true`` with the file as an input file; out, ``true``
    collecting it - so it meets the rules every job's files meet."""
    from sandbox.models import Blob, Collect, InputFile, Job, Status

    inside = [":" in side and not side.startswith(("/", ".")) for side in (args.source, args.target)]
    if inside == [False, True]:
        session, path = args.target.split(":", 1)
        try:
            mode = os.stat(args.source).st_mode & 0o777
        except OSError as exc:
            raise JobError(f"cannot read {args.source}: {exc.strerror}", field="source") from None
        job = Job(cmd=["true"], files=[InputFile(path, Blob(path=args.source), mode)])
    elif inside == [True, False]:
        session, path = args.source.split(":", 1)
        collect = Collect(path)
        if collect.directory:
            raise JobError("cp copies one file, not a directory", field="source")
        path = collect.path  # (the result names it as the collect entry does: normalised)
        job = Job(cmd=["true"], collect=[collect])
    else:
        raise JobError("one side is SESSION:PATH, the other a host path", field="source")
    with worker_calls(args) as client:
        result = client.session_exec(session, job)
    if result.status is not Status.OK:
        raise SandboxError(f"the copy failed: {result.error or result.status.value}")
    if inside[1]:
        return 0
    if path not in result.files:
        raise SandboxError(f"{path}: {result.file_errors.get(path, 'not collected')}")
    data = result.files[path]
    if args.target == "-":
        sys.stdout.buffer.write(data)
    else:
        with open(args.target, "wb") as handle:
            handle.write(data)
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    with worker_calls(args) as client:
        logs = client.session_logs(args.session)
    if args.json:
        print(json.dumps([_printable(entry) for entry in logs], indent=2))
        return 0
    for entry in logs:
        outcome = entry.get("status") or entry.get("state")
        print(f"== {entry['id']}: {' '.join(entry['cmd'])} ({outcome}, exit {entry.get('exit_code')})")
        for stream in ("stdout", "stderr"):
            sys.stdout.write(entry.get(stream, b"").decode(errors="replace"))
    return 0


def _cmd_control(args: argparse.Namespace) -> int:
    grace_s = None
    if args.request == "session_stop":
        from sandbox.units import parse_duration_ms

        try:
            grace_s = parse_duration_ms(args.grace) / 1000
        except ValueError as exc:
            raise JobError(str(exc), field="grace") from None
    with worker_calls(args) as client:
        if args.request == "session_stop":
            client.session_stop(args.session, grace_s if grace_s is not None else 0.0)
        elif args.request == "session_pause":
            client.session_pause(args.session)
        elif args.request == "session_resume":
            client.session_resume(args.session)
        else:
            client.session_delete(args.session)
    print(args.session)
    return 0


def _cmd_commit(args: argparse.Namespace) -> int:
    with worker_calls(args) as client:
        answer = client.session_commit(args.session, args.reference)
    print(answer["reference"], answer["image_id"])
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    with worker_calls(args) as client:
        sessions = client.session_list()
    if args.json:
        print(json.dumps(sessions, indent=2))
        return 0
    print(f"{'SESSION':<20} {'STATE':<8} {'IMAGE':<24} {'PROFILE':<10} {'EXECS':>5} {'IDLE':>8} {'TTL':>8}")
    for entry in sessions:
        print(f"{entry['session']:<20} {entry['state']:<8} {entry['image']:<24} {entry['profile']:<10} "
              f"{entry['execs']:>5} {entry['idle_s']:>7.0f}s {entry['ttl']:>7.0f}s")
    return 0


def _printable(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value.decode(errors="replace") if isinstance(value, bytes) else value for key, value in entry.items()}
