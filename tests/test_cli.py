"""The command line: exit statuses, JSON, flags into the job model (and errors that
name the flag), submit's flags and socket, doctor, and 20 jobs at once through separate
CLI processes."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from workerutil import SANDBOX_CLI

from worker.client import accepting


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
        "stderr_truncated", "usage", "violation", "limits_not_enforced", "warnings", "error", "files", "file_errors",
        "file_ids",
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
        (["--memory", "lots"], "sandbox: --memory: invalid size 'lots'"),
        (["--memory", "12XB"], "sandbox: --memory: invalid size '12XB'"),
        (["--cpu-time=-1s"], "sandbox: --cpu-time: invalid duration"),
        (["--wall-time", "1 fortnight"], "sandbox: --wall-time: invalid duration"),
        (["--cpus", "lots"], "sandbox: --cpus: invalid CPU count 'lots'"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--pids", "0"], "sandbox: --pids: must be an integer"),
        (["--file", "/etc/hostname:/etc/x"], "sandbox: --file: '/etc/x' must lie under"),
        (["--file", "/nonexistent:/work/x"], "sandbox: --file: cannot read /nonexistent"),
        (["--file", "/etc:/work/d"], "sandbox: --file: /etc is a directory, not a file"),
        (["--stdin", "nope.txt"], "sandbox: --stdin: cannot read nope.txt: No such file or directory"),
        (["--stdin", "/etc"], "sandbox: --stdin: /etc is a directory"),
        (["--env", "NOEQUALS"], "sandbox: --env: expects NAME=VALUE"),
        (["--image", "UPPER/Case"], "sandbox: --image: invalid repository name 'UPPER/Case'"),
        (["--profile", "nope"], "sandbox: --profile: no profile named 'nope' (known: ci, compile, default, strict"),
        (["--profile", "./nope.toml"], "sandbox: --profile: no profile file './nope.toml'"),
        (["--lang", "cpp"], "sandbox: --lang: --lang and --source go together"),
        (["--network", "egress", "--allow-net", "ten"], "sandbox: --allow-net: 'ten' is not an address range"),
        (["--allow-net", "10.0.0.0/8"], "sandbox: --allow-net: allowed ranges are for an egress job"),
        (["--network", "egress", "--profile", "strict"], "sandbox: --network: profile strict has network 'none'"),
        (["--lang", "python3", "--source", "/etc/hostname", "--cwd", "/tmp"], "sandbox: --lang: --lang runs in /work"),
    ],
)
def test_bad_flags_are_typed_errors_with_status_125(flags, message):
    """Whatever the user can fix names the flag to fix, never "internal error"."""
    done = sandbox("run", *flags, "--", "true") if "--lang" not in flags else sandbox("run", *flags)
    assert done.returncode == 125, done.stderr
    assert message in done.stderr.decode()
    assert b"internal error" not in done.stderr and b"Traceback" not in done.stderr


def test_the_units_a_user_types_are_accepted():
    # 1h was refused while 2m worked; "none" is the protocol's nil for cpu_time and cpus.
    done = sandbox("run", "--json", "--wall-time", "1h", "--cpu-time", "none", "--cpus", "unlimited", "--", "true")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok"
    assert sandbox("run", "--wall-time", "1m30s", "--cpu-time", "2m", "--", "true").returncode == 0


def test_version_is_the_packages():
    done = sandbox("--version")
    assert done.returncode == 0
    assert done.stdout.decode() == f"sandbox {importlib.metadata.version('sandbox-executor')}\n"


def test_submit_names_the_socket_it_cannot_reach(tmp_path):
    missing = tmp_path / "no-worker.sock"
    done = sandbox("submit", "--socket", str(missing), "--", "true")
    assert done.returncode == 125
    assert f"cannot reach a worker at {missing}: No such file or directory" in done.stderr.decode()
    nothing = subprocess.run([*SANDBOX_CLI, "submit", "--", "true"], capture_output=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "SANDBOX_SOCKET"})
    assert nothing.returncode == 125 and b"--socket: give --socket PATH or --tcp" in nothing.stderr
    deaf = subprocess.run([*SANDBOX_CLI, "serve"], capture_output=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "SANDBOX_SOCKET"})
    assert deaf.returncode == 125 and b"--socket: nothing to listen on" in deaf.stderr


def test_serve_and_submit_default_to_the_socket_in_the_environment(tmp_path):
    path = str(tmp_path / "env.sock")
    env = {**os.environ, "SANDBOX_SOCKET": path}
    with open(tmp_path / "worker.log", "wb") as log:
        server = subprocess.Popen([*SANDBOX_CLI, "serve", "--slots", "1"], env=env, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not accepting(path):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.01)
        done = subprocess.run([*SANDBOX_CLI, "submit", "--", "echo", "via env"], env=env, capture_output=True,
                              timeout=60)
        assert (done.returncode, done.stdout) == (0, b"via env\n"), done.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()


def test_submit_takes_the_flags_of_run_and_refuses_what_a_worker_cannot_do(worker, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("from a file\n")
    done = sandbox("submit", "--socket", worker.socket_path, "--require-cgroups", "--cpu-time", "none",
                   "--env", "WHO=env", "--file", f"{data}:/work/data.txt", "--stdin", str(data), "--",
                   "sh", "-c", 'echo "$WHO"; cat /work/data.txt; cat')
    assert (done.returncode, done.stdout) == (0, b"env\nfrom a file\nfrom a file\n"), done.stderr
    refused = sandbox("submit", "--socket", worker.socket_path, "--profile", str(tmp_path / "mine.toml"), "--", "true")
    assert refused.returncode == 125
    assert b"--profile: a profile file" in refused.stderr and b"works with sandbox run only" in refused.stderr
    directory = sandbox("submit", "--socket", worker.socket_path, "--file", f"{tmp_path}:/work/d", "--", "true")
    assert directory.returncode == 125 and b"--file: " in directory.stderr and b"is a directory" in directory.stderr


def test_a_submit_loads_only_the_blocking_client(worker):
    """`sandbox submit` once per test of a judge: the flags, the job model and the blocking
    client - not trio (the async client's), nor anything that starts sandboxes, nor the
    hash, tar, uuid and JSON code that only uploads, ids and --json would need."""
    code = ("import sys; from sandbox.cli import main; "
            f"status = main(['submit', '--socket', {worker.socket_path!r}, '--', 'echo', 'hi']); "
            "print(repr(sorted(sys.modules)), file=sys.__stderr__); sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True)
    assert done.stdout == b"hi\n"
    loaded = set(ast.literal_eval(done.stderr.decode().splitlines()[-1]))
    assert {"worker.client", "sandbox.models"} <= loaded
    unneeded = {"trio", "worker.async_client", "sandbox.runner", "sandbox.zygote", "sandbox.profile_names",
                "hashlib", "tarfile", "uuid", "json", "subprocess", "sandbox.cli.run"}
    assert loaded & unneeded == set()


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


def test_a_cached_filter_is_used_only_when_valid(tmp_path):
    """`sandbox run` keeps its compiled filter in the user's cache, and the built-in
    profile as loaded with it; a file of either whose program was swapped for one that
    allows everything is not installed: the job still meets the profile's filter, and
    the file is written anew."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    ptrace = {"x86_64": 101, "aarch64": 117}[os.uname().machine]
    argv = [*SANDBOX_CLI, "run", "--json", "--", "python3", "-c", f"import ctypes; ctypes.CDLL(None).syscall({ptrace}, 0)"]
    allow_all = bytes.fromhex("060000000000ff7f")  # return SECCOMP_RET_ALLOW

    def violation() -> str:
        done = subprocess.run(argv, capture_output=True, timeout=60, env=env)
        result = json.loads(done.stdout)
        assert result["status"] == "syscall_violation", result
        return str(result["violation"]["syscall"])

    assert violation() == "ptrace"
    [cached] = (tmp_path / "sandbox" / "seccomp").glob("*.bpf")
    stored = tmp_path / "sandbox" / "seccomp" / "profile-default.json"
    written, stored_written = cached.read_bytes(), stored.read_bytes()
    header, _, program = written.partition(b"\n")
    cached.write_bytes(header + b"\n" + allow_all * (len(program) // 8))
    stored.unlink()  # (else the run takes the profile and its program from there)
    assert violation() == "ptrace"
    assert cached.read_bytes() == written
    assert stored.read_bytes() == stored_written
    start = stored_written.index(b'"program": "') + len(b'"program": "')
    end = stored_written.index(b'"', start)
    stored.write_bytes(stored_written[:start] + allow_all.hex().encode() * ((end - start) // 16) + stored_written[end:])
    assert violation() == "ptrace"
    assert stored.read_bytes() == stored_written


def test_a_run_on_the_host_image_loads_only_what_the_job_needs(tmp_path):
    """The command line's cold path: `sandbox run` of a command on the host image, its
    profile and filter in the cache, imports neither the seccomp compiler nor the image
    store nor the other commands' code - nor subprocess: its zygote is a fork, not a
    second interpreter; nor TOML, hash or volume code."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    code = ("import json, sys; from sandbox.cli import main; status = main(['run', '--', 'true']); "
            "print(json.dumps(sorted(sys.modules)), file=sys.__stderr__); sys.exit(status)")
    for _ in range(2):  # the first run compiles the filter and fills the cache
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=env, check=True)
    loaded = set(json.loads(done.stderr.splitlines()[-1]))
    assert "sandbox.runner" in loaded
    unneeded = {"pyseccomp", "sandbox.seccomp", "sandbox.images.runtime", "sandbox.images.store", "subprocess",
                "importlib.resources", "tomllib", "hashlib", "shutil", "sandbox.volumes", "sandbox.judge", "sandbox.languages", "worker.client",
                *(f"sandbox.cli.{group}" for group in ("group", "worker", "images", "volumes", "profiles", "languages", "judge"))}
    assert loaded & unneeded == set()
