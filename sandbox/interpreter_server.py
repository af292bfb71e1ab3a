"""The interpreter mode's template: a python3 with its imports done, inside a sandbox,
that forks a sandbox of its own for each snippet (``sandbox/interpreter.py`` is the
supervisor's side; docs/architecture.md, "Interpreter mode", says what snippets share).

This runs inside a sandbox, as the job's program, on the image's python3: it imports
only the standard library and ``sandbox.linux.syscalls``, copied beside it into the
template's scratch (which no snippet sees: each has a scratch of its own). Its seccomp
filter is the snippets' profile plus what making a sandbox takes (clone with namespace
flags, mount, unshare, seccomp); each snippet installs the profile's own filter over it
before any of its code runs.

fd 0 is the control socket (SOCK_SEQPACKET). A request is a JSON header with fds:
the job channel (answered with the snippet's pidfd), the report pipe, stdin, stdout,
stderr, the fds that join the snippet's cgroup, then one fd per input file. The report
pipe takes what the C init would say of a job: "started", "exec_error" and
"setup_error" (from the snippet, before its code runs), "violation" and "exited" (from
here, once it is reaped). A request goes to a spare - a clone made ahead, its
namespaces, scratch, /proc and lo ready - where there is one, else to a clone made for it.

The snippet's filter has no listener - a filter chain holds one at most, and the
template's has it - so a kill-listed call kills the snippet with SIGSYS (the call never
runs), which is reported as a violation of no name.
"""

from __future__ import annotations

import atexit
import builtins
import fcntl
import gc
import importlib.machinery
import importlib.util
import io
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time

from sandbox.linux import syscalls as sc

# What this module imports is in every snippet's memory, and each snippet's clone copies
# the page tables of all of it and tears them down at its exit: what only some snippets
# use - typing (annotations only), runpy (a zip, a directory or a compiled file),
# threading and traceback (at a snippet's exit, for a snippet that started threads or
# whose atexit functions fail) - is imported where it is used, as python3 itself does.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CONTROL_FD = 0
# Where this package was copied to: the template's own files, left out of a snippet's path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILTER_PATH = "filter.bpf"  # beside this package: the snippets' seccomp program
SNIPPET_NAMESPACES = (sc.CLONE_NEWUSER | sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWNET
                      | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS)
MS_NOSUID_NODEV = sc.MS_NOSUID | sc.MS_NODEV
MS_NOEXEC = 0x8
SIOCSIFFLAGS = 0x8914
IFF_UP_RUNNING = 0x1 | 0x40
REPORT_FD = 3  # the report pipe's fd in a snippet, once its stdio is in place
JOB_FDS = 4  # a request's fds after its channel: report, stdin, stdout, stderr (then the cgroup's, the files)
SPARES = 2  # clones kept ready for the next requests
ZIP_END_RECORD = b"PK\x05\x06"  # a zip's end-of-central-directory signature
ZIP_TAIL = 22 + 0xFFFF  # the record and the longest comment after it
IDS = (os.getuid(), os.getgid())  # the template's, which each snippet maps to itself


def main() -> None:
    """Import the modules named on the command line (after the scratch size of a job
    that gives none), say "ready", then start snippets until the control socket closes
    (the supervisor is gone: so is every snippet, with this sandbox's pid namespace)."""
    control = socket.socket(fileno=os.dup(CONTROL_FD))
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, CONTROL_FD)
    os.close(null)
    try:
        for module in sys.argv[2:]:
            __import__(module)
        with open(os.path.join(ROOT, FILTER_PATH), "rb") as f:
            program = f.read()
    except BaseException as exc:  # an import may raise anything, SystemExit included
        control.send(json.dumps({"kind": "error", "message": f"{type(exc).__name__}: {exc}"}).encode())
        sys.exit(1)
    ahead = Ahead(program)
    # The snippets' environments are their jobs' own: none of the template's is left in
    # them (a snippet only adds its job's).
    os.environ.clear()
    # What is loaded now stays for every snippet: keep the collector from walking it
    # (and so copying its pages) in each of them.
    gc.freeze()
    control.send(b'{"kind": "ready"}')
    Template(ahead, int(sys.argv[1])).serve(control)


class Ahead:
    """What every snippet needs that the template works out once, before any fork: a
    snippet's first touch of a page of the template's memory copies the page (every
    object it reads has its reference count written), so work done once here is work
    that no snippet's memory pays for - the file read, the scan of every module name."""

    def __init__(self, program: bytes) -> None:
        self.program = program  # the snippets' seccomp filter
        with open("/proc/sys/kernel/cap_last_cap") as cap_last:
            self.last_capability = int(cap_last.read())
        # The template's own modules, which a snippet's code does not see.
        self.own_modules = [name for name in sys.modules if name == "sandbox" or name.startswith("sandbox.")]


class ProgramFailure(Exception):
    """What fails for the program's own reason, as its exec would (the C program stage's
    "exec_error"): exit status 126, as the shell gives."""


class Snippet:
    """One snippet's process, as this template watches it."""

    def __init__(self, pid: int, pidfd: int, report: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.report = report

    def say(self, message: dict[str, Any]) -> None:
        try:
            os.write(self.report, json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the supervisor gave up on it


class Spare:
    """A clone made ahead of its request, its namespaces, scratch, /proc and lo ready
    (``make_sandbox``), waiting on its socket for a request: what the clone and that
    set-up cost is off the snippet's path."""

    def __init__(self, pid: int, pidfd: int, requests: socket.socket) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.requests = requests


class Template:
    """The template's state: the snippets running, the spares waiting."""

    def __init__(self, ahead: Ahead, disk: int) -> None:
        self.ahead = ahead
        self.disk = disk  # the scratch size of a job that gives none: the spares'
        self.selector = selectors.DefaultSelector()
        self.spares: list[Spare] = []

    def serve(self, control: socket.socket) -> None:
        self.selector.register(control, selectors.EVENT_READ)
        self.add_spares()
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is control:
                    data, fds, _, _ = socket.recv_fds(control, 1 << 20, 1024)
                    if not data:
                        return
                    self.start(data, fds)
                    self.add_spares()
                elif isinstance(key.data, Spare):
                    self.drop_spare(key.data)  # it failed before any request (the next is cloned anew)
                else:
                    self.finish(key.data)

    def add_spares(self) -> None:
        while len(self.spares) < SPARES:
            spare = self.clone_spare()
            if spare is None:
                return
            self.spares.append(spare)
            self.selector.register(spare.pidfd, selectors.EVENT_READ, spare)

    def clone_spare(self) -> Spare | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = clone_snippet()
        except OSError:
            ours.close()
            theirs.close()
            return None  # (a request then clones for itself, and says why it cannot)
        if pid == 0:
            # Nothing of the template's (other snippets' report pipes, the control
            # socket) is held while waiting: only the request socket stays.
            keep = theirs.fileno()
            if keep > 3:
                sc.close_range(3, keep - 1)
            sc.close_range(keep + 1)
            failure = made(self.disk)
            try:
                data, fds, _, _ = socket.recv_fds(theirs, 1 << 20, 1024)
            except OSError:
                data, fds = b"", []
            if not data:
                os._exit(0)  # the template is closing
            run_snippet(failure, json.loads(data), fds, self.disk, self.ahead)  # never returns
        theirs.close()
        return Spare(pid, os.pidfd_open(pid), ours)

    def drop_spare(self, spare: Spare) -> None:
        self.selector.unregister(spare.pidfd)
        self.spares.remove(spare)
        os.waitpid(spare.pid, 0)
        os.close(spare.pidfd)
        spare.requests.close()

    def start(self, data: bytes, fds: list[int]) -> None:
        """Hand the request to a spare, or clone for it; the supervisor gets the
        snippet's pidfd, or why there is none."""
        channel = socket.socket(fileno=fds[0])
        with channel:
            snippet = self.from_spare(data, fds) or self.cloned(json.loads(data), fds)
            try:
                if isinstance(snippet, str):
                    channel.send(json.dumps({"kind": "setup_error", "message": snippet}).encode())
                else:
                    socket.send_fds(channel, [b'{"kind": "pid"}'], [snippet.pidfd])
            except OSError:
                pass  # the supervisor gave up on it: its report pipe is gone too
        if isinstance(snippet, str):
            for fd in fds[1:]:
                os.close(fd)
            return
        for fd in fds[2:]:
            os.close(fd)
        self.selector.register(snippet.pidfd, selectors.EVENT_READ, snippet)

    def from_spare(self, data: bytes, fds: list[int]) -> Snippet | None:
        while self.spares:
            spare = self.spares.pop()
            self.selector.unregister(spare.pidfd)
            try:
                socket.send_fds(spare.requests, [data], fds[1:])
            except OSError:  # it died waiting
                os.waitpid(spare.pid, 0)
                os.close(spare.pidfd)
                continue
            finally:
                spare.requests.close()
            return Snippet(spare.pid, spare.pidfd, fds[1])
        return None

    def cloned(self, request: dict[str, Any], fds: list[int]) -> Snippet | str:
        """The snippet cloned for this request, or why it could not be."""
        try:
            pid = clone_snippet()
        except OSError as exc:
            return f"starting the snippet's sandbox: {exc}"
        if pid == 0:
            run_snippet(made(request["disk"]), request, fds[1:], request["disk"], self.ahead)  # never returns
        return Snippet(pid, os.pidfd_open(pid), fds[1])

    def finish(self, snippet: Snippet) -> None:
        """Reap the snippet (its pid namespace went with it) and say how it ended."""
        _, status, usage = os.wait4(snippet.pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS:
            snippet.say({"kind": "violation", "number": None, "arch": None})
        snippet.say({"kind": "exited", "status": status, "t": time.monotonic_ns(), "maxrss_kb": usage.ru_maxrss,
                     "utime": usage.ru_utime, "stime": usage.ru_stime})
        self.selector.unregister(snippet.pidfd)
        os.close(snippet.pidfd)
        os.close(snippet.report)


def clone_snippet() -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    return sc.fork_into_namespaces(SNIPPET_NAMESPACES)


def made(disk: int) -> BaseException | None:
    """``make_sandbox`` in a clone; what went wrong, to be reported with its request."""
    try:
        make_sandbox(disk)
    except BaseException as exc:
        return exc
    return None


def run_snippet(failure: BaseException | None, request: dict[str, Any], fds: list[int], disk: int,
                ahead: Ahead) -> None:
    """In the clone, its sandbox made with a scratch of ``disk`` bytes (``failure``: what
    went wrong there): enter the job, then run its code; exits, never returns. ``fds``
    are the request's but its channel: the report pipe first."""
    code = 127
    try:
        try:
            if failure is not None:
                raise failure
            enter_job(request, fds, disk, ahead)
        except ProgramFailure as exc:
            os.write(fds[0], json.dumps({"kind": "exec_error", "message": str(exc)}).encode() + b"\n")
            code = 126
            return
        except BaseException as exc:
            message = {"kind": "setup_error", "message": f"the snippet's set-up failed: {exc}"}
            os.write(fds[0], json.dumps(message).encode() + b"\n")
            return
        os.write(REPORT_FD, json.dumps({"kind": "started", "t": time.monotonic_ns()}).encode() + b"\n")
        os.close(REPORT_FD)
        code = run_code(request["argv"], request["env"], ahead.own_modules)
    finally:
        os._exit(code)


def make_sandbox(disk: int) -> None:
    """What the C init does for a sandbox before its job: its ids, its scratch (``disk``
    bytes) and /proc, lo."""
    uid, gid = IDS  # (getuid() here says the overflow id until the maps are written)
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"{uid} {uid} 1")
    write_file("/proc/self/gid_map", f"{gid} {gid} 1")
    # One tmpfs for /work, /tmp and /dev/shm, as a job's scratch: attached at /dev/shm,
    # its directories bound into place, its root then covered by its own shm directory.
    sc.mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID_NODEV, f"size={disk},mode=0755")
    for name, mode in (("work", 0o755), ("tmp", 0o1777), ("shm", 0o1777)):
        os.mkdir(f"/dev/shm/{name}")
        os.chmod(f"/dev/shm/{name}", mode)
    for name in ("work", "tmp", "shm"):
        sc.mount(f"/dev/shm/{name}", "/dev/shm" if name == "shm" else f"/{name}", "", sc.MS_BIND, "")
    sc.mount("proc", "/proc", "proc", MS_NOSUID_NODEV | MS_NOEXEC, "")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", IFF_UP_RUNNING))


def enter_job(request: dict[str, Any], fds: list[int], disk: int, ahead: Ahead) -> None:
    """What the C init and program stage do once the job arrives: the scratch's size if
    the job gives another, its cgroup, input files, limits, stdio, no capabilities, the
    profile's filter. ``fds``: the report pipe, stdin, stdout, stderr, the cgroup's,
    the input files. Leaves the report pipe on REPORT_FD (``fds[0]`` says so), and
    nothing else open beyond stdio."""
    if request["disk"] != disk:
        sc.mount("tmpfs", "/work", "tmpfs", sc.MS_REMOUNT | MS_NOSUID_NODEV, f"size={request['disk']}")
    joins = request["joins"]
    for fd in fds[JOB_FDS:JOB_FDS + joins]:
        os.write(fd, b"0")  # v1: the hierarchies' tasks files; v2: cgroup.procs
    sc.unshare(sc.CLONE_NEWCGROUP)
    for (dest, mode), fd in zip(request["files"], fds[JOB_FDS + joins:], strict=True):
        copy_in(fd, dest, mode)
    try:
        os.chdir(request["cwd"])
    except OSError as exc:
        raise ProgramFailure(f"cannot enter {request['cwd']}: {exc.strerror}") from None
    # The signal dispositions stay python3's own (SIGPIPE and SIGXFSZ ignored, SIGINT
    # raising KeyboardInterrupt): this process is the template's python3.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.setsid()
    wanted = {0: fds[1], 1: fds[2], 2: fds[3], REPORT_FD: fds[0]}
    above = max(wanted.values()) + 1
    moved = {target: fcntl.fcntl(fd, fcntl.F_DUPFD, above) for target, fd in wanted.items()}  # out of each other's way
    for target, fd in moved.items():
        os.dup2(fd, target)
    sc.close_range(REPORT_FD + 1)
    fds[0] = REPORT_FD  # where a set-up error is reported from now on
    for limit, soft, hard in request["rlimits"]:
        resource.setrlimit(limit, (soft, hard))
    sc.drop_capabilities(ahead.last_capability)
    sc.install_filter(ahead.program)


def write_file(path: str, text: str) -> None:
    """Through the fd: a text file object's io and codec machinery would touch (and so
    copy) pages of the template's memory in every spare."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def copy_in(source: int, dest: str, mode: int) -> None:
    """An input file into the fresh scratch, which nothing of the snippet has touched
    yet: its directories made as a job's are."""
    os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while os.sendfile(out, source, None, 1 << 20):
            pass
        os.fchmod(out, mode)
    finally:
        os.close(out)
        os.close(source)


def run_code(argv: list[str], env: dict[str, str], own_modules: list[str]) -> int:
    """``python3 -c CODE ARGS`` or ``python3 FILE ARGS``, in this interpreter: its
    ``__main__``, argv, environment (the template's was cleared before any fork), path
    and streams are the snippet's; the template's ``own_modules`` are out of its sight.
    The exit status is what python3's would be."""
    os.environ.update(env)
    # New streams on the snippet's fds, as python3 makes them under a UTF-8 locale.
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), "utf-8", "surrogateescape")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), "utf-8", "surrogateescape")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), "utf-8", "backslashreplace",
                                  line_buffering=True)
    sys.path[:] = [entry for entry in sys.path if not entry.startswith(ROOT)]
    for name in own_modules:
        del sys.modules[name]
    code = 0
    try:
        if argv[1] == "-c":
            sys.argv = ["-c", *argv[3:]]
            sys.path.insert(0, "")
            run_in_main(argv[2], "<string>", {"__loader__": importlib.machinery.BuiltinImporter})
        else:
            path = argv[1]
            sys.argv = argv[1:]
            sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
            try:
                with open(path, "rb") as script:
                    source: bytes | None = script.read()
            except IsADirectoryError:
                source = None  # python3 runs the directory's __main__.py
            except OSError as exc:  # python3's own words and status for a script it cannot open
                print(f"python3: can't open file {os.path.abspath(path)!r}: [Errno {exc.errno}] {exc.strerror}",
                      file=sys.stderr)
                return shut_down(2)
            if source is None or not plain_script(path, source):
                import runpy

                runpy.run_path(path, run_name="__main__")
            else:
                run_in_main(source, path, {
                    "__file__": path, "__cached__": None,
                    "__loader__": importlib.machinery.SourceFileLoader("__main__", path)})
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    return shut_down(code)


def plain_script(path: str, source: bytes) -> bool:
    """Whether python3 would run ``path`` as source code, not as a zip (it has the zip
    end-of-directory record within its tail, where zipimport looks) or a compiled file
    (its name or first bytes say so): those two go to runpy, as python3 hands them to
    its importers. A plain file does not, because runpy first probes it with every
    importer (the zip importer reads it), Python code each snippet would run again."""
    if path.endswith(".pyc") or source[:2] == importlib.util.MAGIC_NUMBER[:2]:
        return False
    return ZIP_END_RECORD not in source[-ZIP_TAIL:]


def run_in_main(source: str | bytes, filename: str, names: dict[str, Any]) -> None:
    """Run ``source`` in the real ``__main__``, emptied to what python3 starts a program
    with, plus ``names``; compiled without this module's future imports, as python3
    compiles it."""
    code = compile(source, filename, "exec", dont_inherit=True)
    main = sys.modules["__main__"].__dict__
    main.clear()
    main.update({"__name__": "__main__", "__doc__": None, "__package__": None, "__spec__": None,
                 "__annotations__": {}, "__builtins__": builtins, **names})
    exec(code, main)


def exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def shut_down(code: int) -> int:
    """What the interpreter does at exit: wait for the threads of a snippet that imported
    threading (python3 looks for the module as well), run atexit, flush."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()  # the interpreter's own exit step
        atexit._run_exitfuncs()
    except BaseException:
        import traceback

        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 120  # as python3 exits when flushing stdout fails
    return code


if __name__ == "__main__":
    main()
