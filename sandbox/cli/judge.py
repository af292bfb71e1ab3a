"""``sandbox judge PROBLEM_DIR --lang L --source FILE``: a submission against a problem
package, in this process or, with ``--socket``/``--tcp``, as jobs of a worker, or with
``--redis``/``--stream`` by whichever worker of a queue takes it.

Exit status: 0 accepted, 1 any other verdict of the solution's, 125 a judge error (the
checker failed) or an error of the package or the flags."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.cli.output import EXIT_SANDBOX_ERROR

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox.judge.report import TestReport
    from sandbox.judge.run import Submission

EXIT_ACCEPTED, EXIT_REJECTED, EXIT_JUDGE_ERROR = 0, 1, EXIT_SANDBOX_ERROR


def add_commands(commands: Any) -> None:
    judge = commands.add_parser("judge", help="judge a submission against a problem package (tests and a checker)")
    judge.add_argument("problem", metavar="PROBLEM_DIR", help="problem.toml and tests/NAME.in + NAME.out (or .ans)")
    judge.add_argument("--lang", required=True, help="the submission's language preset (sandbox languages)")
    judge.add_argument("--source", required=True, help="the submission's source file")
    judge.add_argument("--json", action="store_true", help="print the whole report as JSON")
    judge.add_argument("--stop-on-failure", action="store_true", help="skip the tests after the first failed one")
    judge.add_argument("--compile-option", action="append", default=[], metavar="OPTION",
                       help="a compiler option from the preset's allow-list (repeatable; --compile-option=-O0)")
    judge.add_argument("--parallel", type=_positive, default=1, metavar="N",
                       help="run N tests at once (here, or in the worker); the report is the same")
    judge.add_argument("--image", help="compile and run the submission on this stored image (one built on the "
                                       "language image: sandbox build) instead of the language image")
    judge.add_argument("--interpreter", nargs="?", const="", metavar="MODULE,...",
                       help="run a python3 submission's tests in the interpreter mode: each a clone of a waiting "
                            "python3 that imported these modules, in a sandbox of its own")
    judge.add_argument("args", nargs="*", metavar="-- ARG", help="arguments for the solution, after --")
    where = judge.add_argument_group("through a worker (default: in this process)")
    where.add_argument("--socket", help="the worker's unix socket")
    where.add_argument("--tcp", metavar="HOST:PORT", help="the worker's TCP address")
    where.add_argument("--token-file", help="token for TCP")
    where.add_argument("--redis", metavar="URL", help="queue the judge on a Redis stream instead (with --stream)")
    where.add_argument("--stream", default="sandbox", help="the stream, with --redis (default 'sandbox')")
    judge.set_defaults(handler=_judge)


def _judge(args: argparse.Namespace) -> int:
    from sandbox.cli.job_flags import interpreter_from_args
    from sandbox.judge.problem import load_problem, read_package
    from sandbox.judge.run import Submission, judge

    submission = Submission.from_file(args.lang, Path(args.source), compile_options=args.compile_option,
                                      args=args.args, image=args.image, interpreter=interpreter_from_args(args))
    on_test = None if args.json else _print_test
    report: dict[str, Any]
    if args.redis:  # one queued request: any worker of the stream judges it
        report = _judge_through_queue(args, submission, on_test)
    elif args.socket or args.tcp:  # one request: the worker compiles once and runs every test
        from sandbox.cli.worker import worker_calls

        package = read_package(Path(args.problem))
        with worker_calls(args) as client:
            report = client.judge(package, submission.lang, submission.source,
                                  compile_options=submission.compile_options, args=submission.args,
                                  stop_on_failure=args.stop_on_failure, on_test=on_test,
                                  parallel=args.parallel, image=submission.image,
                                  interpreter=submission.interpreter)
    else:
        from sandbox.languages import RunnerStages
        from sandbox.runner import Runner

        def print_test(test: TestReport) -> None:
            _print_test(test.to_json_dict())

        problem = load_problem(Path(args.problem))
        runner = Runner()
        try:
            report = judge(RunnerStages(runner), problem, submission, stop_on_failure=args.stop_on_failure,
                           on_test=None if args.json else print_test, parallel=args.parallel).to_json_dict()
        finally:
            runner.close()
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        compiled = report["compile"]
        if compiled is not None and compiled["stderr"] and report["verdict"] == "compile_error":
            sys.stderr.write(f"== compile ({args.lang}) ==\n{compiled['stderr']}")
            sys.stderr.flush()
        print(f"{report['verdict']}  {report['score']:g}/{report['max_score']:g}")
    if report["verdict"] == "accepted":
        return EXIT_ACCEPTED
    return EXIT_JUDGE_ERROR if report["verdict"] == "judge_error" else EXIT_REJECTED


def _judge_through_queue(args: argparse.Namespace, submission: Submission,
                         on_test: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    from sandbox.cli.queued import queue_errors
    from sandbox.judge.problem import read_package
    from worker.queue_client import QueueClient

    package = read_package(Path(args.problem))
    with queue_errors(args.redis, args.stream):
        return QueueClient(args.redis, args.stream).judge(
            package, submission.lang, submission.source, compile_options=submission.compile_options,
            args=submission.args, stop_on_failure=args.stop_on_failure, parallel=args.parallel, on_test=on_test,
            image=submission.image, interpreter=submission.interpreter)


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"expected a number of tests from 1 to 256, got {text!r}")
    return int(text)


def _print_test(test: dict[str, Any]) -> None:
    usage = test["usage"]
    spent = "" if usage is None else f"{usage['cpu_ms']:8.1f} ms {(usage['memory_peak_bytes'] or 0) / 2**20:7.1f} MiB"
    detail = " / ".join((test["error"] or test["checker_message"] or test["signal_name"] or "").splitlines())
    print(f"{test['name']:>8}  {test['status']:18} {spent}  {detail}".rstrip(), flush=True)
