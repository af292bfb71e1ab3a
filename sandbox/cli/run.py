"""``sandbox run``: one job in a sandbox of this process, the Job from the flags."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from sandbox.cli import collector_on
from sandbox.cli.job_flags import add_job_arguments, collect_target, job_from_args, language_form, language_inputs
from sandbox.cli.output import report

if TYPE_CHECKING:
    from sandbox.zygote import StartedZygote


def add_commands(commands: Any) -> None:
    run = commands.add_parser("run", help="run one command in a sandbox")
    add_job_arguments(run, languages=True)
    run.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    # The zygote was started before the flags were parsed (``sandbox.cli``): it builds the
    # sandbox template while this process checks them and imports the rest of the engine.
    # A flag's error closes it unused.
    started: StartedZygote = args.started_zygote
    try:
        job = None if language_form(args) else job_from_args(args)
        inputs = language_inputs(args) if job is None else {}
        collect_to = collect_target(args)
        from sandbox.runner import Runner

        runner = Runner(one_shot=True, started=started)
    except BaseException:
        started.zygote.close()
        raise
    collector_on()
    try:
        if job is None:
            from sandbox.cli.languages import run_language
            from sandbox.languages import RunnerStages

            return run_language(RunnerStages(runner), **inputs)
        result = runner.run(job)
    finally:
        runner.close()
    return report(result, as_json=args.json, collect_to=collect_to)
