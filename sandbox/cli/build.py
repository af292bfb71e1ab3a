"""``sandbox build``: an image from a Sandboxfile (docs/architecture.md, "Building an
image"). Each step is printed on stderr as it starts (``cached`` below a step whose
layer came from the cache), the counts last; stdout gets one line, the reference and
the image id, as ``sandbox pull`` prints them."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sandbox.errors import SandboxError


def add_commands(commands: Any) -> None:
    build = commands.add_parser("build", help="build an image from a Sandboxfile (a Dockerfile subset) into the store")
    build.add_argument("context", help="the build context: the directory COPY and ADD read from")
    build.add_argument("-f", "--file", help="the Sandboxfile (default: CONTEXT/Sandboxfile, else CONTEXT/Dockerfile)")
    build.add_argument("-t", "--tag", required=True, help="the reference to store the image under, e.g. grader:1")
    build.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                       help="a value for an ARG (repeatable)")
    build.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from sandbox.build.builder import build
    from sandbox.build.run_step import run_step
    from sandbox.images import config as images_config
    from sandbox.images.store import Store

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
    config = images_config.load()
    report = build(Store(config.store), config, text, args.context, args.tag, build_args,
                   lambda line: print(line, file=sys.stderr, flush=True), run_step)
    print(f"{report.steps} steps: {report.cached} cached, {report.written} written", file=sys.stderr)
    print(f"{report.reference} {report.image_id}")
    return 0


def _default_file(context: str) -> str:
    for name in ("Sandboxfile", "Dockerfile"):
        path = os.path.join(context, name)
        if os.path.exists(path):
            return path
    return os.path.join(context, "Sandboxfile")
