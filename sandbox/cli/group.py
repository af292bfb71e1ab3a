"""``sandbox group SPEC.json``: jobs that run at once, each in a sandbox of its own, wired
by pipes - in this process or, with ``--socket``/``--tcp``, as one request of a worker.

SPEC.json has the protocol's shape (docs/protocol.md, "Groups"): ``{"jobs": [JOB, ...],
"pipes": [{"from": [0, "stdout"], "to": [1, "stdin"]}, ...]}``, except that JSON has no
bytes: a job's ``stdin`` and its files' ``data`` are text there (UTF-8).

Exit status: 0 when every member exited 0, 125 when a sandbox failed (or the spec is
wrong), else 1."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.cli.output import EXIT_SANDBOX_ERROR

if TYPE_CHECKING:
    from sandbox.models import Group, Result


def add_commands(commands: Any) -> None:
    group = commands.add_parser("group", help="run jobs at once, each in its own sandbox, wired by pipes")
    group.add_argument("spec", metavar="SPEC.json", help='{"jobs": [...], "pipes": [{"from": [0, "stdout"], '
                                                         '"to": [1, "stdin"]}]} (docs/protocol.md)')
    group.add_argument("--json", action="store_true", help='print {"results": [...]}, one per member, in order')
    where = group.add_argument_group("through a worker (default: in this process)")
    where.add_argument("--socket", help="the worker's unix socket")
    where.add_argument("--tcp", metavar="HOST:PORT", help="the worker's TCP address")
    where.add_argument("--token-file", help="token for TCP")
    group.set_defaults(handler=_group)


def load_spec(path: Path) -> Group:
    """The group SPEC.json describes, checked whole (a JobError naming the field)."""
    from sandbox.errors import JobError
    from worker.protocol import ProtocolError, group_from_wire

    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise JobError(f"cannot read {path}: {exc}", field="spec") from None
    if not isinstance(spec, dict) or set(spec) - {"jobs", "pipes"}:
        raise JobError('expected {"jobs": [...], "pipes": [...]}', field="spec")
    jobs = spec.get("jobs")
    try:
        return group_from_wire([_with_bytes(job) for job in jobs] if isinstance(jobs, list) else jobs,
                               spec.get("pipes", []))
    except ProtocolError as exc:
        raise JobError(exc.message, field=exc.field) from None
    except UnicodeEncodeError:  # (a lone surrogate, "\ud800", in a stdin or a file's data)
        raise JobError("stdin and files' data must be text JSON can carry as UTF-8", field="spec") from None


def _with_bytes(job: Any) -> Any:
    """The job map with its text stdin and file data as the bytes the protocol carries."""
    if not isinstance(job, dict):
        return job
    job = dict(job)
    if isinstance(job.get("stdin"), str):
        job["stdin"] = job["stdin"].encode()
    if isinstance(job.get("files"), list):
        job["files"] = [{**entry, "data": entry["data"].encode()}
                        if isinstance(entry, dict) and isinstance(entry.get("data"), str) else entry
                        for entry in job["files"]]
    return job


def _group(args: argparse.Namespace) -> int:
    group = load_spec(Path(args.spec))
    if args.socket or args.tcp:
        from sandbox.cli.worker import worker_calls

        with worker_calls(args) as client:
            results = client.group(group.jobs, group.pipes)
    else:
        from sandbox.runner import Runner

        runner = Runner()
        try:
            results = runner.run_group(group.jobs, group.pipes)
        finally:
            runner.close()
    return _print(results, as_json=args.json)


def _print(results: list[Result], *, as_json: bool) -> int:
    from sandbox.models import Status

    if as_json:
        json.dump({"results": [result.to_json_dict() for result in results]}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for index, result in enumerate(results):
            ended = f"exit {result.exit_code}" if result.exit_code is not None else result.signal_name
            detail = result.error or ended or ""
            print(f"== member {index}: {result.status.value} ({detail}), cpu {result.usage.cpu_ms:.0f} ms, "
                  f"wall {result.usage.wall_ms:.0f} ms ==", flush=True)
            sys.stdout.buffer.write(result.stdout)
            sys.stdout.flush()
            sys.stderr.buffer.write(result.stderr)
            sys.stderr.flush()
    if any(result.status is Status.INTERNAL_ERROR for result in results):
        return EXIT_SANDBOX_ERROR
    return 0 if all(result.status is Status.OK for result in results) else 1
