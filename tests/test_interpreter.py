"""The interpreter mode (``sandbox/interpreter.py``): snippets forked from a python3 that
waits with its imports done, each in a sandbox of its own - its own pid namespace,
scratch, cgroup (limits and usage), filter - and nothing left behind when it ends."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import zipfile
from collections.abc import Iterator

import pytest
from workerutil import SANDBOX_CLI

from sandbox.cgroups.base import JOB_PREFIX
from sandbox.errors import JobError
from sandbox.interpreter import Interpreters
from sandbox.models import Blob, InputFile, Job, Limits, Status
from sandbox.runner import Runner
from sandbox.supply import MAX_RETIRED
from worker.client import Client, WorkerError

pytestmark = pytest.mark.cgroup

MIB = 1 << 20


@pytest.fixture
def interpreters(runner: Runner) -> Iterator[Interpreters]:
    made = Interpreters(runner)
    try:
        yield made
    finally:
        made.close()
        runner.tidy()


def snippet(code: str, *args: str, preload: list[str] | None = None, **fields: object) -> Job:
    return Job(cmd=["python3", "-c", code, *args], interpreter=preload or [], **fields)  # type: ignore[arg-type]


# What a program sees of its own start: __main__'s names, its loader, its annotations
# (evaluated, as without a future import), argv and its name.
MAIN_NAMESPACE = """import __main__, sys
def f(x: int): pass
loader = __loader__ if isinstance(__loader__, type) else type(__loader__)
print(sorted(globals()), loader.__name__, globals() is __main__.__dict__, f.__annotations__, __spec__, __doc__,
      globals().get("__file__") == sys.argv[0], sys.argv[1:], __name__)
"""


def test_a_file_runs_as_python3_runs_it(interpreters, tmp_path):
    source = MAIN_NAMESPACE.encode() + b"raise SystemExit(int(sys.argv[1]))\n"
    result = interpreters.run(Job(cmd=["python3", "/work/main.py", "7"], interpreter=[],
                                  files=[InputFile("/work/main.py", Blob(data=source))]))
    assert result.status is Status.RUNTIME_ERROR, result
    assert result.exit_code == 7
    (tmp_path / "main.py").write_bytes(source)
    native = subprocess.run(["python3", str(tmp_path / "main.py"), "7"], capture_output=True, check=False)
    assert native.returncode == 7
    assert result.stdout == native.stdout, (result.stdout, native.stdout)
    assert b"'__file__'" in result.stdout and b"SourceFileLoader True {'x': <class 'int'>}" in result.stdout


def test_code_runs_in_main_as_python3_c_runs_it(interpreters):
    result = interpreters.run(snippet(MAIN_NAMESPACE, "a"))
    native = subprocess.run(["python3", "-c", MAIN_NAMESPACE, "a"], capture_output=True, check=True)
    assert (result.status, result.stdout) == (Status.OK, native.stdout), (result, native.stdout)


def test_a_zip_or_a_directory_runs_its_main_as_python3_runs_it(interpreters):
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("__main__.py", "import sys; print('zip', sys.argv[1:], __name__)")
    zipped = interpreters.run(Job(cmd=["python3", "/work/app.pyz", "x"], interpreter=[],
                                  files=[InputFile("/work/app.pyz", Blob(data=packed.getvalue()))]))
    assert (zipped.status, zipped.stdout) == (Status.OK, b"zip ['x'] __main__\n"), zipped
    directory = interpreters.run(Job(cmd=["python3", "/work/app"], interpreter=[],
                                     files=[InputFile("/work/app/__main__.py", Blob(data=b"print('dir', __name__)"))]))
    assert (directory.status, directory.stdout) == (Status.OK, b"dir __main__\n"), directory


def test_code_stdin_env_and_an_uncaught_exception(interpreters):
    result = interpreters.run(snippet("import os, sys; print(sys.stdin.read().upper(), os.environ['WHO'], sys.argv)",
                                      "a", stdin=Blob(data=b"in"), env={"WHO": "me"}))
    assert (result.status, result.stdout) == (Status.OK, b"IN me ['-c', 'a']\n"), result
    failed = interpreters.run(snippet("raise ValueError('boom')"))
    assert failed.status is Status.RUNTIME_ERROR and failed.exit_code == 1
    assert b"ValueError: boom" in failed.stderr


def test_a_snippet_ends_as_python3_ends(interpreters):
    # Its threads are waited for (the module is imported where the snippet imports it),
    # then its atexit functions run, and one that raises prints its traceback. The
    # thread prints only once the code is over (and a while after: an exit that did not
    # wait would end it first).
    code = ("import atexit, threading, time\n"
            "def fail(): raise RuntimeError('at exit')\n"
            "atexit.register(fail)\n"
            "atexit.register(print, 'atexit')\n"
            "over = threading.Event()\n"
            "threading.Thread(target=lambda: (over.wait(), time.sleep(0.2), print('thread'))).start()\n"
            "print('main')\n"
            "over.set()\n")
    result = interpreters.run(snippet(code))
    native = subprocess.run(["python3", "-c", code], capture_output=True, check=True)
    assert native.stdout == b"main\nthread\natexit\n"
    assert (result.status, result.stdout) == (Status.OK, native.stdout), result
    assert b"RuntimeError: at exit" in result.stderr and b"RuntimeError: at exit" in native.stderr, result


def test_what_fails_before_the_code_fails_as_python3_would(interpreters):
    missing = interpreters.run(Job(cmd=["python3", "/work/none.py"], interpreter=[]))
    assert (missing.status, missing.exit_code) == (Status.RUNTIME_ERROR, 2), missing
    assert missing.stderr == b"python3: can't open file '/work/none.py': [Errno 2] No such file or directory\n"
    nowhere = interpreters.run(snippet("pass", cwd="/nope"))
    assert (nowhere.status, nowhere.exit_code) == (Status.RUNTIME_ERROR, 126), nowhere
    assert nowhere.error == "cannot enter /nope: No such file or directory"


def test_preloaded_modules_are_there_before_the_snippet_imports_them(interpreters):
    result = interpreters.run(snippet("import sys; print('decimal' in sys.modules)", preload=["decimal"]))
    assert result.stdout == b"True\n", result
    plain = interpreters.run(snippet("import sys; print('decimal' in sys.modules)"))
    assert plain.stdout == b"False\n", plain


def test_each_snippet_is_pid_1_of_its_own_namespaces_with_a_scratch_of_its_own(interpreters):
    probe = ("import os, socket; print(os.getpid(), sorted(p for p in os.listdir('/proc') if p.isdigit()),"
             " os.listdir('/work'), os.listdir('/tmp'), os.getuid());"
             " open('/work/left', 'w').write('x'); socket.create_server(('127.0.0.1', 7000))")
    first, second = (interpreters.run(snippet(probe)) for _ in range(2))
    for result in (first, second):
        # pid 1 alone in its /proc, an empty /work and /tmp (the template's files are not
        # there, nor the first snippet's), the same port free for each: its own network
        assert (result.status, result.stdout) == (Status.OK, b"1 ['1'] [] [] 1000\n"), result


def test_the_cgroup_is_the_snippets_own_limits_and_usage(interpreters):
    memory = interpreters.run(snippet("x = bytearray(200 << 20)", limits=Limits(memory="64M")))
    assert memory.status is Status.MEMORY_LIMIT, memory
    cpu = interpreters.run(snippet("while True: pass", limits=Limits(cpu_time="300ms")))
    assert cpu.status is Status.TIME_LIMIT and 300 <= cpu.usage.cpu_ms < 1000, cpu
    wall = interpreters.run(snippet("import time; time.sleep(30)", limits=Limits(wall_time="300ms")))
    assert wall.status is Status.WALL_TIME_LIMIT, wall
    touched = interpreters.run(snippet("x = bytearray(40 << 20); x[::4096] = b'1' * len(x[::4096])"))
    assert touched.status is Status.OK and 40 * MIB <= touched.usage.memory_peak_bytes < 60 * MIB, touched
    forks = interpreters.run(snippet("import os\nfor _ in range(20):\n    os.fork()", limits=Limits(pids=8)))
    assert forks.usage.pids_peak == 8, forks


def test_a_kill_listed_call_is_a_violation_and_never_runs(interpreters):
    result = interpreters.run(snippet("import ctypes; ctypes.CDLL(None).syscall(101, 16, 1, 0, 0); print('ran')"))
    assert result.status is Status.SYSCALL_VIOLATION, result  # ptrace(PTRACE_ATTACH, 1)
    assert result.stdout == b""
    denied = interpreters.run(snippet("import os; os.unshare(0) if hasattr(os, 'unshare') else None\n"
                                      "import ctypes; print(ctypes.CDLL(None, use_errno=True).unshare(0x10000000),"
                                      " ctypes.get_errno())"))
    assert denied.stdout == b"-1 1\n", denied  # the profile's EPERM: the template's own allowance is not the snippet's


def test_snippets_run_at_once_and_a_killed_one_leaves_the_others(interpreters):
    results: dict[str, object] = {}
    done = threading.Barrier(3)

    def run(name: str, job: Job) -> None:
        results[name] = interpreters.run(job)
        done.wait(timeout=60)

    jobs = {"slow": snippet("import time; time.sleep(0.5); print('slow')"),
            "killed": snippet("while True: pass", limits=Limits(cpu_time="200ms"))}
    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    done.wait(timeout=60)
    for thread in threads:
        thread.join()
    assert results["slow"].stdout == b"slow\n"  # type: ignore[attr-defined]
    assert results["killed"].status is Status.TIME_LIMIT  # type: ignore[attr-defined]


def test_what_the_mode_cannot_run_is_refused(interpreters):
    with pytest.raises(JobError, match="python3 FILE"):
        interpreters.run(Job(cmd=["sh", "-c", "true"], interpreter=[]))
    with pytest.raises(JobError, match="no python3 option"):
        interpreters.run(Job(cmd=["python3", "-X", "dev", "x.py"], interpreter=[]))
    with pytest.raises(JobError, match="No module named 'no_such_module'"):
        interpreters.run(snippet("pass", preload=["no_such_module"]))
    with pytest.raises(JobError, match="not a module name"):
        snippet("pass", preload=["os; import x"])


def test_a_runner_runs_interpreter_jobs_and_ends_their_template(runner):
    result = runner.run(snippet("print(6 * 7)"))
    assert result.stdout == b"42\n", result
    runner.close_interpreters()
    runner.tidy()


def own_job_cgroups(runner: Runner) -> set[str]:
    """The job cgroups this process made that are still there, by name."""
    assert runner.backend is not None
    mine = f"{JOB_PREFIX}{os.getpid()}-"
    return {name for parent in runner.backend.parents() for name in os.listdir(parent) if name.startswith(mine)}


def test_the_snippets_cgroups_wait_for_their_removal_a_bounded_number_at_a_time(runner):
    # A snippet's cgroup is removed after its result, in the supply's idle steps (the
    # worker's launcher takes them): a runner that takes none removes them in batches.
    runner.run(snippet("pass"))
    runner.tidy()
    before = own_job_cgroups(runner)  # the template's, there until it ends
    waiting = []
    for _ in range(2 * MAX_RETIRED):
        assert runner.run(snippet("pass")).status is Status.OK
        waiting.append(len(own_job_cgroups(runner) - before))
    assert max(waiting) == MAX_RETIRED and min(waiting) == 0, waiting
    runner.tidy()
    assert own_job_cgroups(runner) == before
    runner.close_interpreters()
    runner.tidy()
    assert not own_job_cgroups(runner)


def test_a_worker_runs_interpreter_jobs_and_refuses_what_the_mode_cannot(worker):
    with Client(worker.socket_path) as client:
        results = [client.run(snippet("import sys; print(sum(map(int, sys.argv[1:])))", str(n), "1"))
                   for n in range(3)]
        assert [result.stdout for result in results] == [b"1\n", b"2\n", b"3\n"], results
        with pytest.raises(WorkerError, match="interpreter"):
            client.run(snippet("pass", preload=["no_such_module"]))


def test_a_template_that_ends_is_replaced_and_its_snippets_end_with_it(interpreters):
    assert interpreters.run(snippet("pass")).status is Status.OK

    def end_the_template() -> None:  # (its init: what an OOM kill or a crash ends)
        (template,) = interpreters._templates.values()
        os.kill(template._sandbox.prepared.init_pid, signal.SIGKILL)

    running = interpreters.run(snippet("import time; print('started', flush=True); time.sleep(30)"),
                               on_started=end_the_template)
    assert running.status is Status.INTERNAL_ERROR, running
    assert running.error == "the interpreter's sandbox ended during the job"
    after = interpreters.run(snippet("print('after')"))  # on a new template
    assert after.stdout == b"after\n", after
    end_the_template()  # between jobs: the next one finds it gone before it starts, and is run on a new one
    again = interpreters.run(snippet("print('again')"))
    assert again.stdout == b"again\n", again


def test_the_command_line_asks_for_the_mode():
    shown = subprocess.run([*SANDBOX_CLI, "run", "--interpreter", "decimal,fractions", "--", "python3", "-c",
                            "import os, sys; print(os.getpid(), 'fractions' in sys.modules)"],
                           capture_output=True, timeout=60)
    assert (shown.returncode, shown.stdout) == (0, b"1 True\n"), shown
    refused = subprocess.run([*SANDBOX_CLI, "run", "--interpreter", "--", "sh", "-c", "true"],
                             capture_output=True, timeout=60)
    assert refused.returncode == 125 and b"COMMAND: the interpreter mode runs" in refused.stderr, refused


def test_the_scratch_holds_the_jobs_disk_size(interpreters):
    fill = "open('/work/f', 'wb').write(b'x' * (3 << 20))"
    assert interpreters.run(snippet(fill)).status is Status.OK
    small = interpreters.run(snippet(fill, limits=Limits(disk="1M")))
    assert small.status is Status.RUNTIME_ERROR and b"No space left on device" in small.stderr, small
    again = interpreters.run(snippet(fill))  # the next snippet's scratch is the default size again
    assert again.status is Status.OK, again
