"""The ``judge`` request: a submission judged against a problem package sent with it,
inside the worker - compiled once, every test a job of this worker's pool, a
``test_finished`` event per test as it is decided, the report last.

The judging layer (``sandbox/judge``) is synchronous and knows nothing of trio: it runs
on a thread of its own and reaches the pool through ``PoolStages``, whose ``run`` hands
each job back to the trio thread and waits for its result. So a judge holds no launcher
slot while it waits: its jobs queue with everyone else's, one at a time.

The package arrives as a map of relative paths to bytes, or to the ids of files put in
the worker's cache before (a big input sent once for many judges), and is written to a
private directory (0700) for ``load_problem``, which reads it as it reads one on disk;
the names are checked before anything is written, cached files are leased until they
are copied, and the directory is removed when the judge ends. The jobs' files travel as
bytes, as every job of the protocol does.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from sandbox.errors import JobError
from sandbox.judge.problem import is_package_file_name, load_problem
from sandbox.judge.report import JudgeReport, TestReport
from sandbox.judge.run import Submission, judge
from sandbox.models import Group, Job, Pipe, Result, check_file_id
from sandbox.profile_names import builtin_limits, builtin_profiles
from worker.admission import admit
from worker.client import with_file_contents
from worker.filecache import JUDGES_DIR, cached_path
from worker.pool import Pool
from worker.protocol import ProtocolError, event_message

_MAX_PACKAGE_FILES = 10_000
_SUBMISSION_KEYS = {"lang", "source", "compile_options", "args", "image", "interpreter"}
_FINAL = ("finished", "cancelled")
MAX_PARALLEL = 256


class JudgeCancelled(Exception):
    """The client cancelled the judge or went away: no report is owed."""


@dataclass
class JudgeRequest:
    """A validated ``judge`` message."""

    id: str
    package: dict[str, bytes | str]  # a file's bytes, or its id in the file cache
    submission: Submission
    stop_on_failure: bool
    parallel: int  # tests at once: jobs of the pool in flight for this judge


def judge_from_wire(message: dict[str, Any], judge_id: str) -> JudgeRequest:
    """Check a ``judge`` message's fields (the package's names before any is written);
    an error names the field, as for jobs."""
    package = message.get("problem")
    if not isinstance(package, dict) or not package:
        raise ProtocolError("invalid_job", "problem must be a map of file names to bytes", field="problem")
    if len(package) > _MAX_PACKAGE_FILES:
        raise ProtocolError("invalid_job", f"problem has over {_MAX_PACKAGE_FILES} files", field="problem")
    for name, data in package.items():
        if not isinstance(name, str) or not is_package_file_name(name):
            raise ProtocolError("invalid_job", f"{name!r} is not a package file name (NAME or tests/NAME)",
                                field="problem")
        if isinstance(data, dict) and set(data) == {"file_id"}:
            try:
                package[name] = check_file_id(data["file_id"], f"problem.{name}.file_id")
            except JobError as exc:
                raise ProtocolError("invalid_job", exc.message, field=exc.field) from None
        elif not isinstance(data, bytes):
            raise ProtocolError("invalid_job", f"{name}: expected bytes or {{\"file_id\": ID}}",
                                field=f"problem.{name}")
    wire = message.get("submission")
    if not isinstance(wire, dict) or set(wire) - _SUBMISSION_KEYS:
        raise ProtocolError("invalid_job", f"submission must be a map of {sorted(_SUBMISSION_KEYS)}",
                            field="submission")
    lang, source = wire.get("lang"), wire.get("source")
    options, args = wire.get("compile_options", []), wire.get("args", [])
    if not isinstance(lang, str) or not isinstance(source, bytes):
        raise ProtocolError("invalid_job", "submission needs lang (a string) and source (bytes)", field="submission")
    for name, values in (("compile_options", options), ("args", args)):
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ProtocolError("invalid_job", f"{name} must be a list of strings", field=f"submission.{name}")
    image = wire.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise ProtocolError("invalid_job", "image must be an image reference", field="submission.image")
    interpreter = wire.get("interpreter")
    if interpreter is not None and (not isinstance(interpreter, list)
                                    or not all(isinstance(name, str) for name in interpreter)):
        raise ProtocolError("invalid_job", "interpreter must be a list of module names",
                            field="submission.interpreter")
    stop = message.get("stop_on_failure", False)
    if not isinstance(stop, bool):
        raise ProtocolError("invalid_job", "stop_on_failure must be true or false", field="stop_on_failure")
    parallel = message.get("parallel", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= MAX_PARALLEL:
        raise ProtocolError("invalid_job", f"parallel must be a number of tests from 1 to {MAX_PARALLEL}",
                            field="parallel")
    submission = Submission(lang, source, tuple(options), tuple(args), image,
                            None if interpreter is None else tuple(interpreter))
    return JudgeRequest(judge_id, package, submission, stop, parallel)


@dataclass
class PoolStages:
    """``languages.Stages`` over this worker's pool, for a judge on its own thread."""

    pool: Pool
    owner: object
    token: trio.lowlevel.TrioToken
    parallelism: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    cancelled: bool = False
    prefix: str = field(default_factory=lambda: f"judge-{uuid.uuid4().hex}")
    running: set[str] = field(default_factory=set)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def profile_limits(self, name: str) -> dict[str, Any]:
        return builtin_limits(name) if name in builtin_profiles() else {}

    def run(self, job: Job, trace: list[Any] | None) -> Result:
        if trace is not None:
            raise JobError("a worker does not trace", field="trace")
        result = trio.from_thread.run(self._run_job, with_file_contents(job), trio_token=self.token)
        assert isinstance(result, Result)
        return result

    async def _run_job(self, job: Job) -> Result | list[Result]:
        """One job of the judge, in the trio thread: to the pool (a queued judge's go to
        the queue: worker/queue_stages.py)."""
        return await self._run(job)

    def run_group(self, jobs: list[Job], pipes: list[Pipe]) -> list[Result]:
        group = Group([with_file_contents(job) for job in jobs], pipes)
        results = trio.from_thread.run(self._run, group, trio_token=self.token)
        assert isinstance(results, list)
        return results

    async def _run(self, work: Job | Group) -> Result | list[Result]:
        """Submit to the pool (from the judge's thread, through ``trio.from_thread``: any
        number of its threads at once) and wait for the outcome."""
        if self.cancelled:
            raise JudgeCancelled
        for index, job in enumerate(work.jobs if isinstance(work, Group) else [work]):
            admit(job, field_prefix=f"jobs.{index}." if isinstance(work, Group) else "")
        job_id = f"{self.prefix}/{next(self._numbers)}"
        done = trio.Event()
        replies: list[dict[str, Any]] = []

        def hear(message: dict[str, Any]) -> None:
            if message.get("type") == "error" or message.get("event") in _FINAL:
                replies.append(message)
                done.set()

        record = self.pool.submit(job_id, work, self.owner, hear)
        self.running.add(job_id)
        try:
            await done.wait()
        finally:
            self.running.discard(job_id)
        if replies[0].get("type") == "error":
            raise JobError(str(replies[0].get("message")), field=replies[0].get("field"))
        if record.result is None or self.cancelled:
            raise JudgeCancelled
        return record.result

    async def cancel(self) -> None:
        """Stop: no more jobs, and the ones running are cancelled."""
        self.cancelled = True
        for job_id in list(self.running):
            await self.pool.cancel(job_id)


async def run_judge(request: JudgeRequest, stages: PoolStages, deliver: Any) -> None:
    """Judge on a thread and deliver the events; every failure is a reply, never a
    crash of the worker."""
    token, cache = stages.token, stages.pool.cache

    def on_test(report: TestReport) -> None:
        trio.from_thread.run_sync(deliver, event_message(request.id, "test_finished", test=report.to_json_dict()),
                                  trio_token=token)

    def judge_on_thread(directory: Path) -> JudgeReport:
        return judge(stages, load_problem(directory), request.submission,
                     stop_on_failure=request.stop_on_failure, on_test=on_test, parallel=request.parallel)

    # In the worker's own cache directory when it has one (emptied at start: a worker
    # killed mid-judge leaves no package behind), else a private temporary directory.
    parent = None if cache is None else os.path.join(cache.directory, JUDGES_DIR)
    directory = Path(tempfile.mkdtemp(prefix="sandbox-judge-", dir=parent))
    try:
        cached = [(file_id, f"problem.{name}.file_id") for name, file_id in request.package.items()
                  if isinstance(file_id, str)]
        if cached and cache is None:
            raise JobError("this worker has no file cache", field=cached[0][1])
        leased = [] if cache is None else cache.lease_ids(cached)
        try:
            cache_dir = "" if cache is None else cache.directory
            await trio.to_thread.run_sync(_write_package, directory, request.package, cache_dir)
        finally:
            if cache is not None:
                cache.release(leased)
        # Never abandoned: a judge ends by ``PoolStages.cancel`` (the client cancelled it or
        # went away), after which the thread's next job raises and it unwinds before this
        # returns.
        report = await trio.to_thread.run_sync(judge_on_thread, directory)
    except JudgeCancelled:
        deliver(event_message(request.id, "cancelled"))
        return
    except JobError as exc:  # the package, the submission or a job of it (a language image missing)
        message = exc.message.replace(f"{directory}/", "")
        deliver(ProtocolError("invalid_job", message, field=exc.field).to_message(request.id))
        return
    except ProtocolError as exc:  # a job refused by the pool (busy)
        deliver(exc.to_message(request.id))
        return
    except Exception as exc:  # a fault of the worker's, not of the submission: this judge's alone
        deliver(ProtocolError("internal_error", f"{type(exc).__name__}: {exc}").to_message(request.id))
        return
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, directory, True)
    deliver(event_message(request.id, "judged", report=report.to_json_dict()))


def _write_package(directory: Path, package: dict[str, bytes | str], cache_dir: str) -> None:
    """The package's files, in a directory only this user can enter; names were checked
    (``judge_from_wire``), and each file is new (O_EXCL: nothing there to follow). A
    cached file is copied from the cache (leased by the caller meanwhile)."""
    (directory / "tests").mkdir()
    for name, data in package.items():
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                with open(cached_path(cache_dir, data), "rb") as source:
                    shutil.copyfileobj(source, handle, 1 << 20)
