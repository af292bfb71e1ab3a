"""The command line: exit statuses, JSON, flags into the job model, doctor, and
20 jobs at once through separate CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from workerutil import SANDBOX_CLI


def sandbox(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SANDBOX_CLI, *args], input=stdin, capture_output=True, timeout=60)


def test_run_passes_output_and_exit_code_through():
    done = sandbox("run", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert done.returncode == 7
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"


def test_run_killed_job_exits_128_plus_signal():
    done = sandbox("run", "--wall-time", "200ms", "--", "sleep", "10")
    assert done.returncode == 128 + 9
    assert b"wall_time_limit" in done.stderr


def test_run_json_has_the_documented_shape(tmp_path):
    source = tmp_path / "sol.py"
    source.write_text("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n")
    data = tmp_path / "input.txt"
    data.write_text("1 2 3 4\n")
    done = sandbox(
        "run", "--json", "--memory", "256M", "--cpu-time", "2s", "--wall-time", "5s", "--pids", "64",
        "--stdin", str(data), "--file", f"{source}:/work/sol.py", "--", "python3", "/work/sol.py",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok"
    assert result["stdout"] == "10\n"
    assert set(result) == {
        "status", "exit_code", "signal", "signal_name", "stdout", "stderr", "stdout_truncated",
        "stderr_truncated", "usage", "violation", "limits_not_enforced", "warnings", "error",
    }
    assert set(result["usage"]) == {
        "cpu_ms", "cpu_user_ms", "cpu_sys_ms", "wall_ms", "memory_peak_bytes", "max_rss_bytes",
        "oom_killed", "pids_peak",
    }
    assert result["limits_not_enforced"] == []
    assert result["usage"]["memory_peak_bytes"] > 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--memory", "lots"], "invalid size"),
        (["--cpu-time=-1s"], "invalid duration"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--pids", "0"], "limits.pids"),
        (["--file", "/etc/hostname:/etc/x"], "must lie under"),
        (["--file", "/nonexistent:/work/x"], "cannot read /nonexistent"),
        (["--env", "NOEQUALS"], "NAME=VALUE"),
    ],
)
def test_bad_flags_are_typed_errors_with_status_125(flags, message):
    done = sandbox("run", *flags, "--", "true")
    assert done.returncode == 125
    assert message in done.stderr.decode()


def test_require_cgroups_fails_clearly_without_delegation():
    env = {**os.environ, "SANDBOX_CGROUP_PARENT": "no/such/subtree"}
    done = subprocess.run(
        [*SANDBOX_CLI, "run", "--require-cgroups", "--", "true"], capture_output=True, env=env, timeout=60
    )
    assert done.returncode == 125
    assert b"cgroups required but unavailable" in done.stderr


def test_without_cgroups_the_result_says_what_was_not_enforced():
    env = {**os.environ, "SANDBOX_CGROUP_PARENT": "no/such/subtree"}
    done = subprocess.run(
        [*SANDBOX_CLI, "run", "--json", "--", "true"], capture_output=True, env=env, timeout=60
    )
    result = json.loads(done.stdout)
    assert result["status"] == "ok"
    assert result["limits_not_enforced"] == ["memory", "pids", "cpus"]
    assert any("no delegated cgroup" in w for w in result["warnings"])


def test_doctor_passes_on_a_prepared_host():
    done = subprocess.run([*SANDBOX_CLI, "doctor"], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout.decode()
    assert b"a real job ran" in done.stdout
    assert b"FAIL" not in done.stdout
    assert b"each running job is a host user of its own" in done.stdout  # scripts/test grants the range


def test_doctor_fails_without_delegation():
    env = {**os.environ, "SANDBOX_CGROUP_PARENT": "no/such/subtree"}
    done = subprocess.run([*SANDBOX_CLI, "doctor"], capture_output=True, env=env, timeout=60)
    assert done.returncode == 1
    assert b"no delegated subtree" in done.stdout


def test_twenty_jobs_in_parallel_are_all_correct():
    def one(number: int) -> tuple[int, subprocess.CompletedProcess[bytes]]:
        return number, sandbox("run", "--json", "--", "python3", "-c", f"print({number} * {number})")

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    for number, done in results:
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["status"] == "ok"
        assert result["stdout"] == f"{number * number}\n"


def test_help_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "sandbox.cli", "--help"], capture_output=True, timeout=30)
    for command in (b"run", b"doctor", b"setup-cgroups"):
        assert command in done.stdout


def test_setup_cgroups_refuses_without_root():
    done = sandbox("setup-cgroups", "--user", "nobody")
    assert done.returncode == 125
    assert b"must run as root" in done.stderr
