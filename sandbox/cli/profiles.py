"""``sandbox profile list|show|trace``: look at profiles and record what a program calls.

``trace`` runs the command in a sandbox whose filter sends *every* call to the sandbox
init, which records it and lets it continue (SECCOMP_RET_USER_NOTIF with the CONTINUE
flag - unprivileged, unlike SECCOMP_RET_LOG, whose log only root can read). Nothing is
refused while tracing, so trace trusted programs only; the namespaces, dropped
capabilities and limits still apply. The output is the evidence kept beside each
built-in profile (profiles/evidence/).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from sandbox.cli.job_flags import add_job_arguments, job_from_args
from sandbox.errors import SandboxError
from sandbox.models import is_profile_file
from sandbox.profile_names import builtin_profiles, unknown_profile

if TYPE_CHECKING:  # the profile parser loads the seccomp compiler: only for these commands
    from sandbox.profile import Profile


def add_commands(commands: Any) -> None:
    profile = commands.add_parser("profile", help="list, show and trace seccomp profiles")
    sub = profile.add_subparsers(dest="profile_command", required=True, parser_class=type(profile))
    listing = sub.add_parser("list", help="the built-in profiles")
    listing.set_defaults(handler=_list)
    show = sub.add_parser("show", help="a profile after inheritance, as JSON")
    show.add_argument("name", help="a built-in profile's name or a profile file")
    show.set_defaults(handler=_show)
    trace = sub.add_parser("trace", help="run a trusted command with every call allowed; print the calls it made")
    trace.add_argument("--against", default="default", help="profile to compare with (default: default)")
    add_job_arguments(trace)
    trace.set_defaults(handler=_trace)


def _list(args: argparse.Namespace) -> int:
    from sandbox.profile import load_profile

    for name in builtin_profiles():
        profile = load_profile(name)
        print(f"{name:10} network={profile.network:9} {profile.description}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    profile = _named(args.name)
    json.dump(dataclasses.asdict(profile), sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0


def _named(name: str) -> Profile:
    """A built-in profile or a profile file; an unknown name lists the known ones."""
    from sandbox.profile import load_profile

    if not is_profile_file(name) and name not in builtin_profiles():
        raise SandboxError(unknown_profile(name, files_allowed=True).message)
    return load_profile(name)


def _trace(args: argparse.Namespace) -> int:
    from sandbox.profile import disposition
    from sandbox.runner import Runner

    against = _named(args.against)
    job = job_from_args(args)
    seen: list[dict[str, Any]] = []
    runner = Runner()
    try:
        result = runner.run(job, trace=seen)
    finally:
        runner.close()
    print(f"# sandbox profile trace --against {args.against} -- {' '.join(job.cmd)}")
    print(f"# status {result.status.value}, exit {result.exit_code}, image {job.image}")
    names = sorted({call["syscall"] or f"#{call['number']}" for call in seen if call["arch"] == "x86_64"} |
                   {f"{call['arch']}:{call['syscall']}" for call in seen if call["arch"] != "x86_64"})
    for name in names:
        print(f"{name:24} {disposition(against.seccomp, name)}")
    sys.stderr.buffer.write(result.stderr[-2000:])
    return 0 if result.status.value == "ok" else 1
