"""What the job can see and do: nothing of the host, no privilege, no escape."""

from __future__ import annotations

import os
import pwd
import socket
import threading

import pytest

from sandbox.models import Status
from sandbox.runner import Runner

pytestmark = pytest.mark.kernel

CLONE_NEWUSER = 0x10000000
NR = {"ptrace": 101, "bpf": 321, "io_uring_setup": 425, "perf_event_open": 298, "keyctl": 250,
      "unshare": 272, "setns": 308, "mount": 165, "clone": 56, "clone3": 435, "socket": 41,
      "ioctl": 16, "getpid": 39}
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97


@pytest.fixture(params=["interpreter zygote", "forked zygote"])
def runner(request: pytest.FixtureRequest, runner: Runner, forked_runner: Runner) -> Runner:
    """Every test here runs under both kinds of zygote: a fresh interpreter (a worker's,
    a library's Runner) and a fork of the supervisor (``sandbox run``)."""
    return runner if request.param == "interpreter zygote" else forked_runner


def test_host_processes_are_invisible(run):
    result = run(["sh", "-c", "ls /proc | grep -E '^[0-9]+$'"])
    pids = {int(p) for p in result.stdout.split()}
    # pid 1 is the sandbox init, 2 the shell, the rest its own children (ls, grep).
    assert pids <= {1, 2, 3, 4, 5}, pids


def test_host_files_are_not_writable(run, tmp_path):
    canary = tmp_path / "canary"
    canary.write_text("untouched")
    script = (
        "for f in /usr/x /etc/x /bin/x /x /proc/sys/kernel/hostname; do "
        "  (echo hi > $f) 2>/dev/null && echo WROTE $f; done; "
        f"ls {tmp_path} 2>/dev/null && echo SEES_HOST_TMP; ls /home /root 2>/dev/null && echo SEES_HOME; "
        "echo done"
    )
    result = run(["sh", "-c", script])
    assert result.stdout == b"done\n", result.stdout
    assert canary.read_text() == "untouched"


def test_etc_is_a_safe_subset(run):
    result = run(["sh", "-c", "ls /etc; cat /etc/passwd"])
    listing = result.stdout.decode()
    assert "shadow" not in listing and "sudoers" not in listing
    assert "sandbox:x:1000:1000" in listing
    assert pwd.getpwuid(os.getuid()).pw_name + ":x:" not in listing  # the host's users stay out


def test_host_loopback_services_are_unreachable(run):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[object] = []
    server.settimeout(0.05)

    def accept_once() -> None:
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    code = (
        "import socket\n"
        "s = socket.socket()\n"
        f"try:\n    s.connect(('127.0.0.1', {port})); print('connected')\n"
        "except OSError as e: print('refused', e.errno)\n"
    )
    result = run(["python3", "-c", code])
    watcher = threading.Thread(target=accept_once)
    watcher.start()
    watcher.join()
    server.close()
    assert result.stdout.startswith(b"refused"), result.stdout
    assert not accepted


def test_only_loopback_exists_and_is_up(run):
    result = run(["sh", "-c", "ls /sys/class/net 2>/dev/null; cat /proc/net/dev | tail -n +3 | cut -d: -f1"])
    assert result.stdout.split() == [b"lo"]
    up = run(["python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
              "c=socket.create_connection(s.getsockname()); print('lo works')"])
    assert up.stdout == b"lo works\n"


def test_no_capabilities_and_no_new_privs(run):
    result = run(["grep", "-E", "^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):", "/proc/self/status"])
    fields = dict(line.split(":\t") for line in result.stdout.decode().splitlines())
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[name], 16) == 0, (name, fields[name])
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"


def test_no_controlling_terminal_and_own_session(run):
    result = run(["python3", "-c", "import os; print(os.getsid(0) == os.getpid()); open('/dev/tty')"])
    assert result.stdout == b"True\n"
    assert b"No such" in result.stderr or b"No such device" in result.stderr


def test_only_stdio_fds_are_open(run):
    result = run(["ls", "/proc/self/fd"])
    # ls itself opens one directory fd to list the directory.
    assert sorted(int(fd) for fd in result.stdout.split()) == [0, 1, 2, 3]


def test_minimal_dev(run):
    result = run(["ls", "-A", "/dev"])
    assert sorted(result.stdout.decode().split()) == sorted(
        ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]
    )
    works = run(["sh", "-c", "head -c 4 /dev/urandom | wc -c; echo x > /dev/null && echo null-ok"])
    assert works.stdout == b"4\nnull-ok\n"


def test_nested_user_namespace_is_refused(run):
    result = run(["unshare", "--user", "true"])
    assert result.status is Status.RUNTIME_ERROR
    assert b"Operation not permitted" in result.stderr


def test_ptrace_is_a_syscall_violation(run_program):
    result = run_program("syscall", str(NR["ptrace"]), "0")
    assert result.status is Status.SYSCALL_VIOLATION
    assert result.violation == {"syscall": "ptrace", "number": 101, "arch": "x86_64"}


def test_int80_is_killed(run_program):
    result = run_program("int80")
    assert result.status is Status.SYSCALL_VIOLATION


def test_dangerous_calls_are_killed(run_program):
    for name in ("bpf", "io_uring_setup", "perf_event_open", "keyctl"):
        result = run_program("syscall", str(NR[name]))
        assert result.status is Status.SYSCALL_VIOLATION, name


def test_namespace_and_mount_calls_are_refused(run_program):
    cases = {
        "mount": [str(NR["mount"])],
        "unshare": [str(NR["unshare"]), hex(CLONE_NEWUSER)],
        "setns": [str(NR["setns"]), "0", "0"],
        "clone-newuser": [str(NR["clone"]), hex(CLONE_NEWUSER | 17)],
    }
    for name, args in cases.items():
        result = run_program("syscall", *args)
        assert result.status is Status.OK, name
        assert result.stdout == f"ret=-1 errno={EPERM}\n".encode(), (name, result.stdout)


def test_clone3_is_enosys_and_threads_still_work(run_program):
    clone3 = run_program("syscall", str(NR["clone3"]), "0", "88")
    assert clone3.stdout == f"ret=-1 errno={ENOSYS}\n".encode()
    threads = run_program("threads")
    assert threads.status is Status.OK
    assert threads.stdout == b"threads ok 28\n"


def test_socket_families_and_upper_bits(run_program):
    netlink = run_program("syscall", str(NR["socket"]), "16", "3")
    assert netlink.stdout == f"ret=-1 errno={ENOSYS}\n".encode(), netlink.stdout
    vsock = run_program("syscall", str(NR["socket"]), "40", "1")
    assert vsock.stdout == f"ret=-1 errno={ENOSYS}\n".encode()
    # AF_NETLINK with garbage in the upper 32 bits must not slip through an allow rule.
    sneaky = run_program("syscall", str(NR["socket"]), hex((1 << 32) | 16), "3")
    assert sneaky.stdout == f"ret=-1 errno={ENOSYS}\n".encode(), sneaky.stdout


def test_tiocsti_is_refused_even_with_upper_bits(run_program):
    for cmd in ("0x5412", hex((1 << 32) | 0x5412)):
        result = run_program("syscall", str(NR["ioctl"]), "0", cmd, "0")
        assert result.stdout == f"ret=-1 errno={EPERM}\n".encode(), (cmd, result.stdout)
    other = run_program("syscall", str(NR["ioctl"]), "0", "0x5401", "0")  # TCGETS on a non-tty
    assert other.stdout == b"ret=-1 errno=25\n"  # ENOTTY: allowed, the kernel answered


def test_python_threads_work(run):
    code = "import threading\nts=[threading.Thread(target=lambda: None) for _ in range(16)]\n" \
           "[t.start() for t in ts]; [t.join() for t in ts]; print('ok')"
    assert run(["python3", "-c", code]).stdout == b"ok\n"
