"""How the command line speaks: a job's error named by the flag that fixes it, a result
printed (and the exit status it gives) the same way by every command that runs jobs,
and a worker's refusal said as ``sandbox run`` would say it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from sandbox.errors import JobError, SandboxError

if TYPE_CHECKING:
    from sandbox.models import Result
    from worker.client import WorkerError

EXIT_SANDBOX_ERROR = 125  # docker's: the sandbox itself failed, or a flag or the job is wrong


# The flag that sets each part of a job (the model's and the protocol's field names),
# so that an error names what to change on the command line.
_FLAG_OF_FIELD = {
    "cmd": "COMMAND", "env": "--env", "stdin": "--stdin", "image": "--image", "cwd": "--cwd",
    "profile": "--profile", "require_cgroups": "--require-cgroups", "lang": "--lang", "source": "--source",
    "files": "--file", "files.dest": "--file", "files.path": "--file", "files.mode": "--file", "files.data": "--file",
    "socket": "--socket", "tcp": "--tcp", "metrics": "--metrics",
    "collect": "--collect", "collect.path": "--collect", "collect.max": "--collect",
    "collect.max_files": "--collect", "collect_to": "--collect-to",
    "network": "--network", "allow_net": "--allow-net", "interpreter": "--interpreter",
}


def describe_job_error(exc: JobError) -> str:
    """"--memory: invalid size '12XB' ...": the flag to fix, then what is wrong."""
    if exc.field is None:
        return f"invalid job: {exc.message}"
    if exc.field.startswith("limits."):
        return f"--{exc.field.removeprefix('limits.').replace('_', '-')}: {exc.message}"
    return f"{_FLAG_OF_FIELD.get(exc.field, exc.field)}: {exc.message}"


def report(result: Result, *, as_json: bool, written: dict[str, int] | None = None,
           collect_to: int | None = None) -> int:
    """Print a result the way both run and submit do; returns the exit status.
    ``written``: how much of each stream was printed already, as it came;
    ``collect_to``: the directory (``--collect-to``, open) to write the collected files to."""
    from sandbox.models import Status

    if collect_to is not None:
        from sandbox.cli.collected import write_all

        write_all(collect_to, result.files)
    if as_json:
        import json  # here: only --json prints it, and a one-job command's start-up is most of its run

        json.dump(result.to_json_dict(), sys.stdout)
        sys.stdout.write("\n")
        return EXIT_SANDBOX_ERROR if result.status is Status.INTERNAL_ERROR else 0
    written = written or {"stdout": 0, "stderr": 0}
    sys.stdout.buffer.write(result.stdout[written["stdout"]:])
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr[written["stderr"]:])
    if result.status is Status.INTERNAL_ERROR:
        print(f"sandbox: internal error: {result.error}", file=sys.stderr)
        return EXIT_SANDBOX_ERROR
    if result.status not in (Status.OK, Status.RUNTIME_ERROR, Status.SIGNALED) or result.error:
        detail = result.error or f"cpu {result.usage.cpu_ms:.0f} ms, wall {result.usage.wall_ms:.0f} ms"
        print(f"sandbox: {result.status.value} ({detail})", file=sys.stderr)
    for path, reason in result.file_errors.items():
        print(f"sandbox: not collected: {path}: {reason}", file=sys.stderr)
    for warning in result.warnings:
        print(f"sandbox: warning: {warning}", file=sys.stderr)
    if result.signal:
        return 128 + result.signal
    return result.exit_code or 0


def worker_error(exc: WorkerError) -> SandboxError:
    """The worker's refusal as ``sandbox run`` would say it: a job the worker finds
    invalid (what the checks here cannot know: the worker's profiles, the images in its
    store) is an invalid job, naming the flag's field; one too large says what to do."""
    message = exc.reply.get("message")
    if exc.code == "invalid_job":
        return JobError(str(message), field=exc.field)
    if exc.code == "frame_too_large":
        return SandboxError(f"the job is too large for the worker ({message}): send less stdin or fewer files, "
                            "or start the worker with a larger sandbox serve --max-frame")
    return SandboxError(f"worker: {exc}")


class LiveOutput:
    """``sandbox submit`` prints the job's output as it comes, like ``docker run``, as
    long as it comes without a gap; from a dropped piece on, that stream's rest comes
    from the result (``report``), so nothing is printed twice or out of order."""

    def __init__(self) -> None:
        self.written = {"stdout": 0, "stderr": 0}

    def __call__(self, stream: str, offset: int, data: bytes) -> None:
        if offset != self.written[stream]:
            return
        target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        target.write(data)
        target.flush()
        self.written[stream] += len(data)
