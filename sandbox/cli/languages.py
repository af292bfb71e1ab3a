"""``sandbox languages [build]`` and the ``--lang`` form of ``sandbox run`` and
``sandbox submit``."""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.cli.output import EXIT_SANDBOX_ERROR

if TYPE_CHECKING:
    from sandbox.languages import Stages
    from sandbox.models import Blob, InputFile, Job, Limits, Pipe, Result
    from worker.client import Client


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
    else:
        for row in rows:
            print(f"{row['language']:12} {row['description']:28} {row['image']} {'present' if present else 'MISSING'}")
    if not present:
        print("sandbox: no language is usable: build the image with: sandbox languages build", file=sys.stderr)
    # Scripts and health checks ask "can this host run --lang?" by the status alone.
    return 0 if present else 1


def run_language(stages: Stages, *, lang: str, source: str, profile: str, require_cgroups: bool, as_json: bool,
                 limits: Limits, env: dict[str, str], files: list[InputFile], stdin: Blob | None,
                 options: list[str], args: list[str], image: str | None = None) -> int:
    """``sandbox run|submit --lang L --source FILE [--compile-option O] [-- ARG...]``:
    compile output on stderr, under a header; the program's output as usual. Exit
    status as for run, 1 for a compile error."""
    from sandbox.languages import load_preset, run_source
    from sandbox.models import Status

    outcome = run_source(stages, load_preset(lang), Path(source), stdin=stdin, limits=limits, profile=profile,
                         files=files, env=env, require_cgroups=require_cgroups, options=options, args=args,
                         image=image)
    if as_json:
        json.dump(outcome.to_json_dict(), sys.stdout)
        sys.stdout.write("\n")
        return EXIT_SANDBOX_ERROR if outcome.status is Status.INTERNAL_ERROR else 0
    if outcome.compile.stderr:
        sys.stderr.write(f"== compile ({lang}) ==\n")
        sys.stderr.buffer.write(outcome.compile.stderr)
        sys.stderr.flush()
    if outcome.run is None:
        detail = f": {outcome.compile.error}" if outcome.compile.error else ""
        print(f"sandbox: {outcome.status.value} (compile){detail}", file=sys.stderr)
        return EXIT_SANDBOX_ERROR if outcome.status is Status.INTERNAL_ERROR else 1
    from sandbox.cli.output import report

    return report(outcome.run, as_json=False)


class WorkerStages:
    """The two stages as two jobs of a worker (``sandbox submit --lang``): compiled and
    run there, on its language image. The run command is formatted here, with this
    installation's profiles' limits and this host's CPU count for {cpus} without
    --cpus - the worker's own when it runs this package on this host, as it usually
    does; the limits it was formatted with are sent along with the job.

    Given several clients (connections), as many threads may run jobs at once (``sandbox
    judge --parallel``): each job borrows a client of its own for its while."""

    def __init__(self, client: Client, *more: Client) -> None:
        self.clients: queue.SimpleQueue[Client] = queue.SimpleQueue()
        for each in (client, *more):
            self.clients.put(each)
        self.parallelism = len(os.sched_getaffinity(0))

    def profile_limits(self, name: str) -> dict[str, Any]:
        """This installation's profile's [limits]; none for a profile only the worker
        has (it applies them there; the run command is formatted with the defaults)."""
        from sandbox.profile_names import builtin_limits, builtin_profiles

        return builtin_limits(name) if name in builtin_profiles() else {}

    def run(self, job: Job, trace: list[Any] | None) -> Result:
        from sandbox.cli.output import worker_error
        from worker.client import WorkerError

        client = self.clients.get()
        try:
            return client.run(job)
        except WorkerError as exc:  # the job's fault (its image missing there) is named as such
            raise worker_error(exc) from None
        finally:
            self.clients.put(client)

    def run_group(self, jobs: list[Job], pipes: list[Pipe]) -> list[Result]:
        from sandbox.cli.output import worker_error
        from worker.client import WorkerError

        client = self.clients.get()
        try:
            return client.group(jobs, pipes)
        except WorkerError as exc:
            raise worker_error(exc) from None
        finally:
            self.clients.put(client)

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
