"""Shared fixtures: one Runner per session, test programs compiled once, and a leak
check after every test (processes, job cgroups, mounts, temp files, fds)."""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("sandbox", database=None)  # no example database in the tree
settings.load_profile("sandbox")

from hoststate import own_processes, owned_entries
from workerutil import Raw, WorkerProcess

from sandbox.cgroups import open_backend
from sandbox.errors import CgroupError
from sandbox.models import Blob, InputFile, Job, Limits, Result
from sandbox.runner import Runner

PROGRAMS = Path(__file__).parent / "programs"
REPO = Path(__file__).resolve().parent.parent
# Best-of-N time to spawn and reap /bin/true from Python on the development hosts (their
# measured 0.7 ms, rounded up): the yardstick for how much slower this machine is.
REFERENCE_SPAWN_S = 0.001


@pytest.fixture(scope="session")
def runner() -> Iterator[Runner]:
    runner = Runner()
    assert runner.backend is not None, (
        f"the test suite needs a delegated cgroup: {runner.cgroup_problem} "
        "(scripts/test sets one up when run as root)"
    )
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def forked_runner() -> Iterator[Runner]:
    """A Runner as ``sandbox run`` makes one (``one_shot``): its zygote is a fork of this
    process, not a fresh interpreter - checked here, so the tests that use it cannot pass
    on the other kind."""
    runner = Runner(one_shot=True)
    ours = Path("/proc/self/cmdline").read_bytes()
    children = {int(pid) for task in os.listdir("/proc/self/task")
                for pid in Path(f"/proc/self/task/{task}/children").read_text().split()}
    zygotes = [pid for pid in children if Path(f"/proc/{pid}/comm").read_text().strip() == "sandbox-zygote"]
    assert any(Path(f"/proc/{pid}/cmdline").read_bytes() == ours for pid in zygotes), "no forked zygote"
    yield runner
    runner.close()


def pytest_report_header() -> str:
    return f"slowdown vs a development host (scales latency bounds): {measured_slowdown():.1f}"


@pytest.fixture(scope="session")
def slowdown() -> float:
    return measured_slowdown()


@functools.cache
def measured_slowdown() -> float:
    """How many times slower than a development host this machine runs the supervisor's
    kind of work (Python + fork + exec), never below 1.

    Latency bounds (how soon after a limit the kill lands) scale with it; measurement
    bounds (CPU time, memory peak) do not. On the hosts it is 1, so their bounds stay
    tight; under qemu TCG (tests/vm/run) it is ~20-40 and a "10 ms" kill latency means
    10 ms of host-equivalent work rather than an assertion no emulator can meet.
    """
    best = min(_spawn_seconds() for _ in range(20))
    return max(1.0, best / REFERENCE_SPAWN_S)


def _spawn_seconds() -> float:
    start = time.perf_counter()
    subprocess.run(["/bin/true"], check=True)
    return time.perf_counter() - start


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The C test programs in tests/programs, compiled for this host, or taken from
    $SANDBOX_TEST_PROGRAMS (the VM path compiles them on the host: the guest has no gcc)."""
    prebuilt = os.environ.get("SANDBOX_TEST_PROGRAMS")
    if prebuilt:
        return {source.stem: Path(prebuilt) / source.stem for source in sorted(PROGRAMS.glob("*.c"))}
    out = tmp_path_factory.mktemp("programs")
    built = {}
    for source in sorted(PROGRAMS.glob("*.c")):
        binary = out / source.stem
        subprocess.run(["gcc", "-O1", "-pthread", "-o", str(binary), str(source)], check=True)
        built[source.stem] = binary
    return built


@pytest.fixture
def run(runner: Runner):
    """run(cmd, files={dest: host_path|bytes}, stdin=bytes, env=..., **limits) -> Result"""

    def _run(
        cmd: list[str],
        *,
        files: dict[str, Path | bytes] | None = None,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        **limits: object,
    ) -> Result:
        inputs = [
            InputFile(
                dest=dest,
                content=Blob(data=src) if isinstance(src, bytes) else Blob(path=str(src)),
                mode=0o755 if isinstance(src, Path) else 0o644,
            )
            for dest, src in (files or {}).items()
        ]
        job = Job(
            cmd=cmd,
            limits=Limits(**limits),  # type: ignore[arg-type]
            env=env or {},
            stdin=Blob(data=stdin) if stdin is not None else None,
            files=inputs,
            require_cgroups=True,
        )
        try:
            return runner.run(job)
        finally:
            runner.tidy()

    return _run


@pytest.fixture
def run_program(run, programs):
    """run_program("spin", "1000", **limits): run a compiled test program."""

    def _run_program(name: str, *args: str, **kwargs: object) -> Result:
        return run([f"/work/{name}", *args], files={f"/work/{name}": programs[name]}, **kwargs)

    return _run_program


@pytest.fixture
def image_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty image store for this test (and the CLI it runs)."""
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("SANDBOX_IMAGES_CONFIG", str(tmp_path / "images.toml"))
    return tmp_path


@pytest.fixture(scope="session")
def language_image() -> str:
    """The language presets' image: built once per machine (cached by recipe), then
    found in the store."""
    from sandbox.languages_image import build

    return build(lambda line: None)


@pytest.fixture(scope="session")
def cgroup_parents() -> list[str]:
    """Where job cgroups of this user go ([] when none is delegated, e.g. for root)."""
    try:
        return open_backend().parents()
    except CgroupError:
        return []


def _job_cgroups(parents: list[str]) -> set[str]:
    return {os.path.join(parent, name) for parent in parents for name in os.listdir(parent) if name.startswith("job-")}


def _describe(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid} (gone)"
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return f"{pid} state={state} ppid={ppid} {cmdline!r}"


def _reap_orphans() -> None:
    """This process is a child subreaper (the Runner made it one), so processes orphaned
    below it - a killed worker's launchers, say - become its zombies. Reap them, as any
    subreaper must; by now every fixture has waited for the children it started."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            os.waitpid(int(entry), os.WNOHANG)


@pytest.fixture(autouse=True)
def no_leaks(cgroup_parents: list[str]) -> Iterator[None]:
    """After every test: nothing the test started survives on the host."""
    processes = own_processes()
    mounts = Path("/proc/self/mountinfo").read_text()
    tmp, shm = owned_entries("/tmp"), owned_entries("/dev/shm")
    fds = open_fds()
    yield
    # A process SIGKILLed a moment ago may still be exiting: wait (bounded) for it.
    deadline = time.monotonic() + 5 * measured_slowdown()
    while True:
        _reap_orphans()
        leaked = own_processes() - processes
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"processes left behind: {[_describe(pid) for pid in leaked]}"
    assert not _job_cgroups(cgroup_parents), f"job cgroups left behind: {_job_cgroups(cgroup_parents)}"
    assert Path("/proc/self/mountinfo").read_text() == mounts, "host mount table changed"
    assert owned_entries("/tmp") == tmp, f"/tmp changed: {owned_entries('/tmp') ^ tmp}"
    assert owned_entries("/dev/shm") == shm, f"/dev/shm changed: {owned_entries('/dev/shm') ^ shm}"
    assert open_fds() <= fds, "file descriptors leaked"


def open_fds() -> set[str]:
    """This process's open fds, but the image bases a long-lived Runner keeps (mount
    namespaces: ``Zygote.image_base``), which live as long as it does."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("mnt:["):
                continue
        except OSError:
            continue  # the listing's own fd, closed by now
        found.add(fd)
    return found


@pytest.fixture
def start_worker(tmp_path_factory, connect):
    started: list[WorkerProcess] = []

    def _start(*args: str, wrapper: Sequence[str] = (), socket: bool = True,
               env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(tmp_path_factory.mktemp("w"), *args, wrapper=wrapper, socket=socket, env=env)
        started.append(worker)
        return worker

    yield _start
    for worker in started:
        assert worker.stop() == 0, worker.log_path.read_text()


@pytest.fixture
def connect():
    """connect(worker, hello=True) -> Raw; every connection is closed after the test."""
    opened: list[Raw] = []

    def _connect(worker: WorkerProcess, hello: bool = True) -> Raw:
        raw = Raw(worker.socket_path, hello=hello)
        opened.append(raw)
        return raw

    yield _connect
    for raw in opened:
        raw.close()


@pytest.fixture
def worker(start_worker) -> WorkerProcess:
    return start_worker("--slots", "2")
