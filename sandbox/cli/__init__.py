"""``sandbox``: the command line. Thin by design - it parses flags into the same Job
model the worker protocol uses and prints the same Result.

Exit status of ``sandbox run`` (docker's convention): the job's exit code, 128+signal
when it was killed, 125 when the sandbox itself failed. With ``--json`` the result is
printed as JSON and the exit status is 0 unless the sandbox failed (125).

One module per command group (``run``, ``group``, ``worker``: serve and submit,
``sessions``: ``session`` and its subcommands, ``images``, ``build``, ``volumes``,
``profiles``, ``languages``, ``judge``, ``host``: doctor and setup-cgroups); the job
flags in ``job_flags``, and how results and errors are printed in ``output``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from sandbox.cli.output import EXIT_SANDBOX_ERROR, describe_job_error
from sandbox.errors import JobError, SandboxError

if TYPE_CHECKING:
    from sandbox.zygote import StartedZygote

DISTRIBUTION = "sandbox-executor"  # pyproject.toml's name
# The modules of the command groups, in the order help lists them; and the one that
# makes each command's flags. Only that one is imported for a command: a `sandbox run`
# per test of a judge must not pay for loading the image, worker and judge code.
COMMAND_GROUPS = ("run", "group", "worker", "sessions", "images", "build", "volumes", "profiles", "languages", "judge",
                  "host")
MODULE_OF_COMMAND = {
    "run": "run", "group": "group", "serve": "worker", "submit": "worker", "session": "sessions", "commit": "sessions",
    "pull": "images", "images": "images",
    "import": "images", "load": "images", "push": "images", "save": "images", "inspect": "images", "rmi": "images",
    "gc": "images", "build": "build", "volume": "volumes", "profile": "profiles",
    "languages": "languages", "judge": "judge", "doctor": "host", "setup-cgroups": "host",
}
# The commands a judge may call once per test: each runs one job and ends its process.
ONE_JOB_COMMANDS = ("run", "submit")
# Commands whose positional may be followed by flags and then by ``-- ARG...`` for the
# program (``judge PROBLEM_DIR --lang ... -- ARG``): argparse fills a positional and the
# trailing ``nargs="*"`` one together, at the first, so what follows "--" is split off
# before parsing and given as ``args``.
TRAILING_ARGUMENTS_COMMANDS = ("judge",)


def main(argv: list[str] | None = None) -> int:
    """The ``sandbox`` command; its exit status. As the process's own command line
    (``argv`` None), ``sandbox run`` and ``submit`` end the process themselves once their
    output is out (``os._exit``): the interpreter's teardown - every module and object
    freed one by one - costs a one-job command milliseconds and does nothing it needs
    (a run's sandbox is cleaned up by then, ``Runner.close``; a submit's connection closes
    with the process)."""
    one_shot = argv is None and _command_named(sys.argv[1:]) in ONE_JOB_COMMANDS
    if one_shot:
        # The cyclic collector's passes over the objects the imports make cost a one-job
        # command milliseconds and find next to nothing: off until its job is about to go
        # (``collector_on``).
        gc.disable()
    status = _run_command(sys.argv[1:] if argv is None else argv)
    if one_shot:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:
            status = 120  # what the interpreter exits with when its final flush fails
        os._exit(status)
    return status


def collector_on() -> None:
    """Back on, once a one-job command has loaded what it needs, with what is loaded
    frozen (the collector need not walk it again); a no-op where it was never off."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _run_command(argv: list[str]) -> int:
    """The exit status of the command ``argv`` names."""
    named = _command_named(argv)
    try:
        # ``sandbox run``'s zygote first, a fork of this process, before the parser and the
        # job model are even imported: it builds the sandbox template meanwhile. The run's
        # handler owns it from here (``run.py``); until then, a usage error closes it.
        zygote = _started_zygote() if named == "run" else None
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return EXIT_SANDBOX_ERROR
    trailing = None
    if named in TRAILING_ARGUMENTS_COMMANDS and "--" in argv:
        cut = argv.index("--")
        argv, trailing = argv[:cut], argv[cut + 1:]
    try:
        parser = make_parser(argv)
        args = parser.parse_args(argv, argparse.Namespace(started_zygote=zygote))
        if trailing is not None:
            args.args = trailing
    except BaseException:
        if zygote is not None:
            zygote.zygote.close()
        raise
    try:
        return int(args.handler(args))
    except JobError as exc:
        print(f"sandbox: {describe_job_error(exc)}", file=sys.stderr)
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
    return EXIT_SANDBOX_ERROR


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


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, with the terminal's width found as ``shutil`` finds it
    (``$COLUMNS``, else the terminal's, else 80) but without importing ``shutil``:
    argparse makes a formatter for every flag it is given (to check its metavar), and
    ``shutil``, with the compression modules it loads, cost ``sandbox run`` over a
    millisecond of a start-up that is most of its run."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _terminal_columns())


def _terminal_columns() -> int:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size().columns  # stdout's
    except OSError:  # not a terminal
        return 80


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 125 like every other error of the sandbox itself; help is
    formatted by ``_Formatter``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_SANDBOX_ERROR, f"{self.prog}: error: {message}\n")


def _started_zygote() -> StartedZygote:
    from sandbox.zygote import StartedZygote

    return StartedZygote()


def _command_named(argv: list[str]) -> str | None:
    """The command ``argv`` names: its first word not an option (the top level has
    options only before it)."""
    return next((word for word in argv if not word.startswith("-")), None)


def make_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: with only its command's group when it names a known one
    (``_command_named``), else with every group (help, or an unknown command's error,
    lists them all)."""
    named = _command_named(argv)
    groups = [MODULE_OF_COMMAND[named]] if named in MODULE_OF_COMMAND else COMMAND_GROUPS
    parser = _Parser(prog="sandbox", description="Rootless sandbox executor for untrusted code.")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for group in groups:
        importlib.import_module(f"sandbox.cli.{group}").add_commands(commands)
    return parser
