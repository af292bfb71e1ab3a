"""``sandbox languages [build]`` and the ``--lang`` form of ``sandbox run``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_commands(commands: Any) -> None:
    languages = commands.add_parser("languages", help="language presets, the image they need, whether it is here")
    languages.add_argument("--json", action="store_true")
    languages.add_argument("action", nargs="?", choices=["list", "build", "versions"], default="list",
                           help="build: make the language image with mmdebstrap and import it; "
                                "versions: run each preset's version command in the image")
    languages.set_defaults(handler=_languages)


def _languages(args: argparse.Namespace) -> int:
    from sandbox.languages import image_present, image_reference, load_preset, preset_names

    if args.action == "build":
        from sandbox.languages_image import build

        build(lambda line: print(line, file=sys.stderr))
        return 0
    if args.action == "versions":
        return _versions()
    image, present = image_reference(), image_present()
    rows = [{"language": name, "description": load_preset(name).description, "image": image, "present": present}
            for name in preset_names()]
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    for row in rows:
        print(f"{row['language']:12} {row['description']:28} {row['image']} {'present' if present else 'MISSING'}")
    if not present:
        print("build the image with: sandbox languages build", file=sys.stderr)
    return 0


def run_language(args: argparse.Namespace, limits: Any) -> int:
    """``sandbox run --lang L --source FILE``: compile output on stderr, under a header;
    the program's output as usual. Exit status as for run, 1 for a compile error."""
    from sandbox.languages import load_preset, run_source
    from sandbox.models import Blob, Status
    from sandbox.runner import Runner

    preset = load_preset(args.lang)
    runner = Runner()
    try:
        outcome = run_source(runner, preset, Path(args.source), stdin=Blob(path=args.stdin) if args.stdin else None,
                             limits=limits, profile=args.profile)
    finally:
        runner.close()
    if args.json:
        json.dump(outcome.to_json_dict(), sys.stdout)
        sys.stdout.write("\n")
        return 125 if outcome.status is Status.INTERNAL_ERROR else 0
    if outcome.compile.stderr:
        sys.stderr.write(f"== compile ({args.lang}) ==\n")
        sys.stderr.buffer.write(outcome.compile.stderr)
        sys.stderr.flush()
    if outcome.run is None:
        print(f"sandbox: {outcome.status.value} (compile)", file=sys.stderr)
        return 125 if outcome.status is Status.INTERNAL_ERROR else 1
    from sandbox.cli import report

    return report(outcome.run, as_json=False)


def _versions() -> int:
    """The first line each toolchain prints about itself, from inside the image."""
    from sandbox.languages import image_reference, load_preset, preset_names
    from sandbox.models import Job, Status
    from sandbox.runner import Runner

    runner = Runner()
    try:
        for name in preset_names():
            result = runner.run(Job(cmd=load_preset(name).version, image=image_reference(), profile="compile"))
            text = (result.stdout or result.stderr).decode(errors="replace").strip().splitlines()
            shown = text[0] if text and result.status is Status.OK else f"{result.status.value} {result.error or ''}"
            print(f"{name:12} {shown}")
            runner.tidy()
    finally:
        runner.close()
    return 0
