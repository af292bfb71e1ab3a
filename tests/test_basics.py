"""Exit codes, signals, stdio, files and environment."""

from __future__ import annotations

import json
import signal

import pytest

from sandbox.models import Job, Status

pytestmark = pytest.mark.cgroup


def test_ok_with_output(run):
    result = run(["python3", "-c", "print(6*7)"])
    assert result.status is Status.OK
    assert result.exit_code == 0
    assert result.stdout == b"42\n"


def test_exit_code_is_runtime_error(run):
    result = run(["sh", "-c", "echo oops >&2; exit 3"])
    assert result.status is Status.RUNTIME_ERROR
    assert result.exit_code == 3
    assert result.stderr == b"oops\n"


def test_signal_is_reported_by_number_and_name(run):
    result = run(["sh", "-c", "kill -SEGV $$"])
    assert result.status is Status.SIGNALED
    assert result.signal == signal.SIGSEGV
    assert result.signal_name == "SIGSEGV"
    assert result.exit_code is None


def test_missing_command_is_runtime_error_127(run):
    result = run(["no-such-program-here"])
    assert result.status is Status.RUNTIME_ERROR
    assert result.exit_code == 127
    assert "no-such-program-here" in result.error


def test_stdin_and_input_files(run):
    result = run(
        ["sh", "-c", "cat; cat /work/in/data.txt; cat /tmp/t.txt"],
        stdin=b"from stdin\n",
        files={"/work/in/data.txt": b"from a file\n", "/tmp/t.txt": b"in tmp\n"},
    )
    assert result.status is Status.OK, result
    assert result.stdout == b"from stdin\nfrom a file\nin tmp\n"


def test_environment_is_clean_and_explicit(run):
    result = run(["env"], env={"ANSWER": "42"})
    lines = sorted(result.stdout.decode().splitlines())
    assert lines == ["ANSWER=42", "PATH=/usr/local/bin:/usr/bin:/bin"]


def test_identity_inside(run):
    result = run(["sh", "-c", "id -u; id -g; hostname; pwd"])
    assert result.stdout.decode().split() == ["1000", "1000", "sandbox", "/work"]


def test_hostile_output_bytes_survive_json(run):
    result = run(["printf", "\\033[2J\\377\\376 ok"])
    data = result.to_json_dict()
    assert result.stdout == b"\x1b[2J\xff\xfe ok"
    assert data["stdout"].endswith(" ok")



def test_exec_error_quotes_the_command_verbatim(run):
    # The program stage reports it as JSON it writes itself: quotes, backslashes,
    # control characters and non-ASCII must arrive unchanged.
    name = '/no such/"dir"\\\n\tü/prog'
    result = run([name])
    assert result.status is Status.RUNTIME_ERROR
    assert result.exit_code == 127
    assert result.error == f"{name}: No such file or directory"


def test_exec_error_of_a_hostile_name_is_cut_not_overrun(run):
    # Each control character takes six bytes quoted: the report is cut to fit its line.
    name = "\x01" * 3000
    result = run([name])
    assert result.exit_code == 127
    assert result.error.startswith("\x01" * 100)
    assert len(result.error) < 1000


def test_missing_working_directory_is_the_programs_error(runner):
    try:
        result = runner.run(Job(cmd=["/bin/true"], cwd="/no/such/dir", require_cgroups=True))
    finally:
        runner.tidy()
    assert result.status is Status.RUNTIME_ERROR
    assert result.exit_code == 126
    assert result.error == "cannot enter /no/such/dir: No such file or directory"


def test_environment_and_arguments_arrive_exactly(run):
    arguments = ["", "two words", "=", "ü", "x" * 5000]
    result = run(["python3", "-c", "import os, sys, json; print(json.dumps([sys.argv[1:], dict(os.environ)]))",
                  *arguments], env={"EMPTY": "", "EQUALS": "a=b=c"})
    argv, environment = json.loads(result.stdout)
    assert argv == arguments
    assert environment["EMPTY"] == "" and environment["EQUALS"] == "a=b=c"


def test_the_job_runs_at_the_normal_scheduling_policy(run):
    # Sandboxes are prepared at SCHED_BATCH (zygote.py); the job itself must not be.
    result = run(["python3", "-c", "import os; print(os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))"])
    assert result.stdout == b"0 0\n"


def test_max_rss_is_the_programs_not_the_sandboxs(run):
    # The program's process is a fork of the small C init, not of a Python process.
    result = run(["/bin/true"])
    assert 0 < result.usage.max_rss_bytes < 4 << 20
