"""``sandbox build``: an image from a Sandboxfile (docs/architecture.md, "Building an
image"). Each step is printed on stderr as it starts (``cached`` below a step whose
layer came from the cache), the counts last; stdout gets one line, the reference and
the image id, as ``sandbox pull`` prints them."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import sys
from typing import Any

from sandbox.errors import JobError, SandboxError


def add_commands(commands: Any) -> None:
    build = commands.add_parser("build", help="build an image from a Sandboxfile (a Dockerfile subset) into the store")
    build.add_argument("context", help="the build context: the directory COPY and ADD read from")
    build.add_argument("-f", "--file", help="the Sandboxfile (default: CONTEXT/Sandboxfile, else CONTEXT/Dockerfile)")
    build.add_argument("-t", "--tag", required=True, help="the reference to store the image under, e.g. grader:1")
    build.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                       help="a value for an ARG (repeatable)")
    limits = build.add_argument_group("limits of each RUN step (its cgroup; the defaults bound a runaway step)")
    limits.add_argument("--memory", default="4G", help="memory, e.g. 2G (default 4G)")
    limits.add_argument("--pids", type=int, default=4096, help="processes and threads at once (default 4096)")
    limits.add_argument("--cpus", help="CPUs, e.g. 1.5 (default: no quota)")
    limits.add_argument("--timeout", default="30m", help="wall time, e.g. 10m (default 30m)")
    build.add_argument("--network", choices=["egress"],
                       help="egress: RUN steps reach the outside through a user-space stack, as an egress job "
                            "(private ranges and the host stay unreachable; default: no network)")
    build.add_argument("--allow-net", action="append", default=[], metavar="CIDR",
                       help="with egress: let a blocked range through (e.g. 10.0.0.0/8; repeatable)")
    build.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from sandbox.build.builder import build
    from sandbox.build.run_step import run_step
    from sandbox.images import config as images_config
    from sandbox.images.store import Store
    from sandbox.models import Limits

    try:
        limits = Limits(memory=args.memory, pids=args.pids, cpus=args.cpus, wall_time=args.timeout)
    except JobError as exc:
        flag = "--timeout" if exc.field == "limits.wall_time" else "--" + (exc.field or "").removeprefix("limits.")
        raise SandboxError(f"{flag}: {exc.message}") from None
    if args.allow_net and args.network != "egress":
        raise SandboxError("--allow-net: allowed ranges are for egress: add --network egress")
    for text in args.allow_net:
        try:
            ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            raise SandboxError(f"--allow-net: {text!r} is not an IPv4 range (CIDR, e.g. 10.0.0.0/8)") from None
    egress = list(args.allow_net) if args.network == "egress" else None

    build_args = {}
    for item in args.build_arg:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SandboxError(f"--build-arg: expected NAME=VALUE, got {item!r}")
        build_args[name] = value
    path = args.file or _default_file(args.context)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SandboxError(f"cannot read the Sandboxfile {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SandboxError(f"cannot read the Sandboxfile {path}: not UTF-8 text") from None
    config = images_config.load()
    report = build(Store(config.store), config, text, args.context, args.tag, build_args,
                   lambda line: print(line, file=sys.stderr, flush=True),
                   functools.partial(run_step, limits=limits, egress=egress))
    print(f"{report.steps} steps: {report.cached} cached, {report.written} written", file=sys.stderr)
    print(f"{report.reference} {report.image_id}")
    return 0


def _default_file(context: str) -> str:
    for name in ("Sandboxfile", "Dockerfile"):
        path = os.path.join(context, name)
        if os.path.exists(path):
            return path
    return os.path.join(context, "Sandboxfile")
