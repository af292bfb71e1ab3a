"""Every built-in profile against the calls a submission must never make: each gets its
designed outcome - a named violation or an errno - and the name is the right one."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from workerutil import SANDBOX_CLI

from sandbox.errors import JobError, ProfileError
from sandbox.models import Blob, InputFile, Job, Result, Status
from sandbox.profile import load_profile
from sandbox.profile_names import builtin_profiles
from worker.admission import admit
from worker.protocol import ProtocolError, job_from_wire

PROFILES = ["default", "strict", "compile", "ci"]
NR = {"ptrace": 101, "bpf": 321, "io_uring_setup": 425, "perf_event_open": 298, "keyctl": 250,
      "unshare": 272, "socket": 41, "ioctl": 16, "fork": 57, "flock": 73, "clone3": 435, "personality": 135,
      "syncfs": 306}
CLONE_NEWUSER = 0x10000000
EPERM, ENOLCK, ENOSYS = 1, 37, 38
AF_INET, AF_NETLINK, AF_VSOCK = 2, 16, 40
TIOCSTI = 0x5412


@pytest.fixture
def run_in(runner, programs):
    """run_in(profile, program, *args) or run_in(profile, None, *cmd)."""

    def _run(profile: str, program: str | None, *args: str) -> Result:
        files = [] if program is None else [InputFile(f"/work/{program}", Blob(path=str(programs[program])), 0o755)]
        cmd = list(args) if program is None else [f"/work/{program}", *args]
        job = Job(cmd=cmd, files=files, profile=profile, require_cgroups=True)
        try:
            return runner.run(job)
        finally:
            runner.tidy()

    return _run


def errno_line(number: int) -> bytes:
    return f"ret=-1 errno={number}\n".encode()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", ["ptrace", "bpf", "io_uring_setup", "perf_event_open", "keyctl"])
def test_kill_listed_calls_are_named_violations(run_in, profile, name):
    result = run_in(profile, "syscall", str(NR[name]))
    assert result.status is Status.SYSCALL_VIOLATION, (profile, name, result)
    assert result.violation == {"syscall": name, "number": NR[name], "arch": "x86_64"}
    assert result.stdout == b""  # the call never returned


@pytest.mark.parametrize("profile", PROFILES)
def test_int80_is_a_named_violation(run_in, profile):
    result = run_in(profile, "int80")
    assert result.status is Status.SYSCALL_VIOLATION
    assert result.violation == {"syscall": "getpid", "number": 20, "arch": "x86"}


@pytest.mark.parametrize("profile", PROFILES)
def test_nested_user_namespace_is_eperm(run_in, profile):
    result = run_in(profile, "syscall", str(NR["unshare"]), hex(CLONE_NEWUSER))
    assert result.status is Status.OK
    assert result.stdout == errno_line(EPERM)


@pytest.mark.parametrize("profile", PROFILES)
def test_socket_families_outside_the_allow_list(run_in, profile):
    # strict refuses socket() outright (EPERM); the others allow-list families (ENOSYS).
    expected = errno_line(EPERM if profile == "strict" else ENOSYS)
    for family in (AF_NETLINK, AF_VSOCK, (1 << 32) | AF_NETLINK, (0xFFFFFFFF << 32) | AF_INET):
        result = run_in(profile, "syscall", str(NR["socket"]), hex(family), "1")
        if family == (0xFFFFFFFF << 32) | AF_INET and profile in ("default", "ci"):
            assert result.stdout.startswith(b"ret=") and b"errno=0" in result.stdout  # truncated to AF_INET
            continue
        assert result.stdout == expected, (profile, hex(family), result.stdout)


@pytest.mark.parametrize("profile", PROFILES)
def test_tiocsti_is_refused_even_with_upper_bits(run_in, profile):
    for cmd in (TIOCSTI, (1 << 32) | TIOCSTI):
        result = run_in(profile, "syscall", str(NR["ioctl"]), "0", hex(cmd), "0")
        assert result.stdout == errno_line(EPERM), (profile, hex(cmd), result.stdout)


@pytest.mark.parametrize("profile", ["default", "compile", "ci"])
def test_threads_work_through_the_clone3_fallback(run_in, profile):
    assert run_in(profile, "syscall", str(NR["clone3"]), "0", "88").stdout == errno_line(ENOSYS)
    result = run_in(profile, "threads")
    assert result.status is Status.OK, result
    assert result.stdout == b"threads ok 28\n"


def test_strict_refuses_threads_fork_and_inet(run_in):
    threads = run_in("strict", "threads")
    assert threads.status is Status.RUNTIME_ERROR
    assert b"pthread_create" in threads.stderr
    assert run_in("strict", "syscall", str(NR["fork"])).stdout == errno_line(EPERM)
    assert run_in("strict", "syscall", str(NR["socket"]), str(AF_INET), "1").stdout == errno_line(EPERM)


def test_strict_allows_its_own_exec_but_no_second(run_in):
    once = run_in("strict", None, "/bin/true")
    assert once.status is Status.OK, once
    again = run_in("strict", None, "/bin/sh", "-c", "exec /bin/true")
    assert again.status is Status.SYSCALL_VIOLATION
    assert again.violation == {"syscall": "execve", "number": 59, "arch": "x86_64"}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_starts_the_program_in_the_jobs_directory(runner, profile):
    # The filter is installed before the job arrives: the sandbox's own chdir into the
    # job's directory must get through it, whether the profile lists chdir or not.
    try:
        result = runner.run(Job(cmd=["/bin/pwd"], cwd="/tmp", profile=profile, require_cgroups=True))
    finally:
        runner.tidy()
    assert result.status is Status.OK, result
    assert result.stdout == b"/tmp\n"


def test_compile_network_none_refuses_inet(run_in):
    assert run_in("compile", "syscall", str(NR["socket"]), str(AF_INET), "1").stdout == errno_line(ENOSYS)


def test_file_locks_refused_for_judged_runs_allowed_for_builds(run_in):
    assert run_in("default", "syscall", str(NR["flock"]), "0", "2").stdout == errno_line(ENOLCK)
    locked = run_in("compile", None, "python3", "-c",
                    "import fcntl; f = open('/tmp/l', 'w'); fcntl.flock(f, fcntl.LOCK_EX); print('locked')")
    assert locked.stdout == b"locked\n", locked


def test_address_randomisation_stays_on_for_judged_runs_and_may_go_off_for_builds(run_in):
    """Sanitizers and debuggers need personality(ADDR_NO_RANDOMIZE); a judged run gets
    only the query and plain Linux."""
    no_randomize = "0x0040000"
    assert run_in("default", "syscall", str(NR["personality"]), no_randomize).stdout == errno_line(ENOSYS)
    for profile in ("compile", "ci"):
        assert run_in(profile, "syscall", str(NR["personality"]), no_randomize).stdout == b"ret=0 errno=0\n", profile
        assert run_in(profile, "syscall", str(NR["personality"]), "0x0400000").stdout == errno_line(ENOSYS), profile


@pytest.mark.parametrize("profile", PROFILES)
def test_syncfs_is_skipped_in_every_profile(run_in, profile):
    """syncfs(-1) would fail with EBADF if the kernel ran it: 0 shows it never did."""
    assert run_in(profile, "syscall", str(NR["syncfs"]), "-1").stdout == b"ret=0 errno=0\n"


def test_every_builtin_profile_loads_and_its_evidence_is_kept():
    assert set(PROFILES) <= set(builtin_profiles())
    for name in builtin_profiles():
        profile = load_profile(name)
        assert profile.description
        assert (profile.path.parent / "evidence" / f"{name}.txt").is_file(), name


def test_unknown_syscall_is_a_load_error_with_file_and_line(tmp_path: Path):
    path = tmp_path / "typo.toml"
    path.write_text('extends = "default"\n\n[seccomp]\nallow = ["read", "wirte"]\n')
    with pytest.raises(ProfileError, match=rf"{path}:4: unknown syscall 'wirte'"):
        load_profile(str(path))


def test_unknown_key_is_a_load_error_with_file_and_line(tmp_path: Path):
    path = tmp_path / "typo.toml"
    path.write_text('[seccomp]\ndefault = "errno:ENOSYS"\nalow = ["read"]\n')
    with pytest.raises(ProfileError, match=rf"{path}:3: unknown key 'alow' in \[seccomp\]"):
        load_profile(str(path))
    path.write_text('[limits]\nmemroy = "1G"\n')
    with pytest.raises(ProfileError, match=rf"{path}:2: unknown key 'memroy' in \[limits\]"):
        load_profile(str(path))


def test_extends_replaces_what_the_child_names(tmp_path: Path):
    path = tmp_path / "child.toml"
    path.write_text(f'extends = "{Path(load_profile("default").path)}"\n[seccomp.errno]\nEPERM = ["getpid"]\n')
    child, parent = load_profile(str(path)), load_profile("default")
    assert parent.seccomp.actions["getpid"] == "allow"
    assert child.seccomp.actions["getpid"] == "errno:EPERM"
    assert child.seccomp.actions["ptrace"] == "kill"


def test_a_job_names_its_profile_on_the_wire_and_the_worker_knows_it():
    assert job_from_wire({"cmd": ["true"], "profile": "strict"}).profile == "strict"
    assert job_from_wire({"cmd": ["true"]}).profile == "default"
    with pytest.raises(ProtocolError, match=r"no profile named 'nosuch' \(known: ci, compile, default, strict\)"):
        admit(job_from_wire({"cmd": ["true"], "profile": "nosuch"}))
    with pytest.raises(JobError):
        Job(cmd=["true"], profile="Not A Name")
    # A file is read by a runner in the caller's own process, never on a client's word.
    for path in ("../etc/passwd", "/etc/passwd", "mine.toml", str(load_profile("default").path)):
        with pytest.raises(ProtocolError, match="works with sandbox run only") as caught:
            admit(job_from_wire({"cmd": ["true"], "profile": path}))
        assert caught.value.field == "profile"


def test_unknown_profile_is_the_jobs_error(runner):
    with pytest.raises(JobError, match=r"no profile named 'nosuch' \(known: ci, compile, default, strict; or a path"):
        runner.run(Job(cmd=["true"], profile="nosuch"))


def test_a_profile_file_is_a_jobs_profile(runner, tmp_path):
    """docs/profiles.md's format, in a file of the caller's: a name with a "/" or ending in
    .toml is a file; one that does not load is the job's error, naming file and line."""
    mine = tmp_path / "mine.toml"
    mine.write_text('extends = "default"\n[seccomp.errno]\nEPERM = ["getpid"]\n')
    getpid = ["python3", "-c", "import os; print(os.getpid())"]
    try:
        result = runner.run(Job(cmd=getpid, profile=str(mine)))
    finally:
        runner.tidy()
    assert (result.status, result.stdout) == (Status.OK, b"-1\n")
    broken = tmp_path / "broken.toml"
    broken.write_text('extends = "default"\n[seccomp]\nallow = ["wirte"]\n')
    with pytest.raises(JobError, match=f"{broken}:3: unknown syscall 'wirte'") as caught:
        runner.run(Job(cmd=["true"], profile=str(broken)))
    assert caught.value.field == "profile"
    with pytest.raises(JobError, match="no profile file"):
        runner.run(Job(cmd=["true"], profile=str(tmp_path / "missing.toml")))


def test_cli_run_with_a_profile_file(tmp_path):
    (tmp_path / "mine.toml").write_text('extends = "default"\n[seccomp.errno]\nEPERM = ["getpid"]\n')
    for name in ("./mine.toml", "mine.toml"):
        done = subprocess.run([*SANDBOX_CLI, "run", "--profile", name, "--", "python3", "-c",
                               "import os; print(os.getpid())"], capture_output=True, timeout=60, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        assert (done.returncode, done.stdout) == (0, b"-1\n"), done.stderr
    shown = subprocess.run([*SANDBOX_CLI, "profile", "show", "./mine.toml"], capture_output=True, timeout=60,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert json.loads(shown.stdout)["seccomp"]["actions"]["getpid"] == "errno:EPERM"


def test_trace_records_calls_and_allows_them(runner, programs):
    seen: list[dict[str, object]] = []
    job = Job(cmd=["/work/syscall", str(NR["ptrace"]), "0"], require_cgroups=True,
              files=[InputFile("/work/syscall", Blob(path=str(programs["syscall"])), 0o755)])
    try:
        result = runner.run(job, trace=seen)
    finally:
        runner.tidy()
    assert result.status is Status.OK and result.violation is None  # tracing refuses nothing
    names = {call["syscall"] for call in seen}
    assert {"execve", "ptrace", "write", "exit_group"} <= names


def test_profile_trace_cli_prints_calls_with_the_profiles_disposition():
    done = subprocess.run([*SANDBOX_CLI, "profile", "trace", "--against", "strict", "--", "sh", "-c", "true"],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = dict(line.split()[:2] for line in done.stdout.decode().splitlines() if not line.startswith("#"))
    assert rows["execve"] == "once" and rows["exit_group"] == "allow"


def test_cli_run_with_a_profile(tmp_path):
    done = subprocess.run([*SANDBOX_CLI, "run", "--json", "--profile", "strict", "--", "sh", "-c", "exec true"],
                          capture_output=True, timeout=60)
    result = json.loads(done.stdout)
    assert result["status"] == "syscall_violation"
    assert result["violation"] == {"syscall": "execve", "number": 59, "arch": "x86_64"}
