"""Runs one hostile case through the real product and proves it was contained.

After every case: (1) the verdict and output are the expected ones, (2) no process of
the job survives, (3) the host canary tree is unchanged, (4) host counters are back at
their baseline (job cgroups, our mount table, the worker's and launchers' fds, /tmp and
/dev/shm entries, SysV IPC objects of our uid), (5) the worker still runs a trivial job
- plus: the worker's log is still one JSON object per line, the host's listeners saw no
connection, and no output contains the canary secret or path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoststate import own_processes, owned_entries
from workerutil import SANDBOX_CLI, WorkerProcess

from hostile.case import C_PRELUDE, LANG_SUFFIX, Case
from sandbox.cgroups import open_backend
from sandbox.errors import CgroupError
from sandbox.models import Blob, InputFile, Job, Limits
from worker.client import Client

# Tight defaults: a hostile case should end in a second or two.
DEFAULT_LIMITS: dict[str, object] = {"cpu_time": "2s", "wall_time": "5s", "memory": "128M", "output": "1M",
                                     "disk": "16M"}
SETTLE_S = 10.0  # how long host state may take to return to baseline (lazy cgroup removal)


@dataclass
class Outcome:
    """What came back, from the worker (a Result) or the CLI (its JSON), in one shape."""

    status: str
    stdout: bytes
    stderr: bytes
    signal_name: str | None
    violation: dict[str, Any] | None
    error: str | None


@dataclass
class Verdict:
    outcome: Outcome | None
    problems: list[str] = field(default_factory=list)  # expectation mismatches
    escapes: list[str] = field(default_factory=list)   # containment failures

    @property
    def got(self) -> str:
        if self.outcome is None:
            return "no result"
        text = self.outcome.status
        if self.outcome.signal_name and self.outcome.status == "signaled":
            text += f" {self.outcome.signal_name}"
        return text


class Canary:
    """A host directory tree the job must never change or read, holding a secret."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.secret = f"CANARY-SECRET-{os.urandom(8).hex()}"
        (root / "sub").mkdir(parents=True)
        (root / "secret.txt").write_text(self.secret + "\n")
        (root / "input.txt").write_text("original input\n")
        (root / "input.txt").chmod(0o444)
        (root / "sub" / "data").write_bytes(os.urandom(64))
        (root / "link").symlink_to("/etc/passwd")

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        state: dict[str, tuple[object, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in [*dirnames, *filenames]:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if os.path.isfile(path) and not os.path.islink(path) else ""
                state[path] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, digest)
        return state


class Listeners:
    """A TCP listener on the host's 127.0.0.1 and an abstract unix socket: targets the
    job must not reach (it has its own network namespace)."""

    def __init__(self) -> None:
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.tcp.setblocking(False)
        self.port = self.tcp.getsockname()[1]
        self.abstract_name = f"sandbox-hostile-{os.getpid()}"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind("\0" + self.abstract_name)
        self.unix.listen()
        self.unix.setblocking(False)

    def connections(self) -> list[str]:
        seen = []
        for name, listener in (("tcp 127.0.0.1", self.tcp), ("abstract unix", self.unix)):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.close()
            seen.append(name)
        return seen

    def close(self) -> None:
        self.tcp.close()
        self.unix.close()


def _sysvipc() -> frozenset[str]:
    """SysV IPC objects of our uid in the host's IPC namespace."""
    uid = str(os.getuid())
    rows = set()
    for kind, uid_column in (("shm", 7), ("sem", 4), ("msg", 7)):
        for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > uid_column and fields[uid_column] == uid:
                rows.add(f"{kind} {fields[0]} {fields[1]}")
    return frozenset(rows)


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return -1


class Harness:
    def __init__(self, worker: WorkerProcess, canary: Canary, listeners: Listeners, build_dir: Path) -> None:
        self.worker = worker
        self.client = Client(worker.socket_path, timeout=120)
        self.canary = canary
        self.listeners = listeners
        self.build_dir = build_dir
        self.log_offset = 0
        try:
            self.cgroup_parents = open_backend().parents()
        except CgroupError:
            self.cgroup_parents = []
        self.context = {"@PORT@": str(listeners.port), "@ABSTRACT@": listeners.abstract_name,
                        "@CANARY@": str(canary.root), "@WORKER_PID@": str(worker.process.pid)}

    def close(self) -> None:
        self.client.close()

    # -- host state -----------------------------------------------------------------
    def host_state(self) -> dict[str, object]:
        launchers = sorted(self.worker.launchers())
        return {
            "processes": frozenset(own_processes()),
            "job cgroups": frozenset(os.path.join(p, n) for p in self.cgroup_parents for n in os.listdir(p)
                                     if n.startswith("job-")),
            "mounts": Path("/proc/self/mountinfo").read_text(),
            "worker fds": _fd_count(self.worker.process.pid),
            "launcher fds": tuple(_fd_count(pid) for pid in launchers),
            "/tmp": frozenset(owned_entries("/tmp")),
            "/dev/shm": frozenset(owned_entries("/dev/shm")),
            "sysv ipc": _sysvipc(),
            "canary": self.canary.snapshot(),
        }

    def settle(self, baseline: dict[str, object]) -> list[str]:
        """Wait (bounded) for the host to return to ``baseline``; name what did not."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            now = self.host_state()
            differing = [key for key in baseline if now[key] != baseline[key]]
            if not differing or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        problems = []
        for key in differing:
            before, after = baseline[key], now[key]
            if isinstance(before, frozenset) and isinstance(after, frozenset):
                problems.append(f"{key}: +{sorted(after - before)[:5]} -{sorted(before - after)[:5]}")
            elif key == "canary":
                problems.append(f"canary changed: {sorted(set(before.items()) ^ set(after.items()))[:3]}")  # type: ignore[union-attr]
            else:
                problems.append(f"{key}: {str(before)[:200]} -> {str(after)[:200]}")
        return problems

    # -- building and running ---------------------------------------------------------
    def fill(self, text: str) -> str:
        for token, value in self.context.items():
            text = text.replace(token, value)
        return text

    def materialise(self, case: Case) -> tuple[list[str], dict[str, Path]]:
        """The command and the files (dest -> host path) that make up the job."""
        source = self.fill(case.source)
        work = self.build_dir / case.name
        work.mkdir(exist_ok=True)
        src = work / f"prog{LANG_SUFFIX[case.lang]}"
        if case.lang in ("c", "asm"):
            src.write_text(C_PRELUDE + source if case.lang == "c" else source)
            binary = work / "prog"
            flags = ["-O1", "-pthread"] if case.lang == "c" else ["-nostdlib", "-static"]
            subprocess.run(["gcc", *flags, "-o", str(binary), str(src)], check=True, capture_output=True)
            return ["/work/prog"], {"/work/prog": binary}
        src.write_text(source)
        dest = f"/work/{src.name}"
        if case.lang == "python":
            return ["python3", dest], {dest: src}
        if case.lang == "sh":
            return ["sh", dest], {dest: src}
        return [case.lang, "-c", "-o", "/work/prog.o", dest], {dest: src}  # gcc / g++ inside

    def run_case(self, case: Case) -> Verdict:
        cmd, files = self.materialise(case)
        limits = {**DEFAULT_LIMITS, **case.limits}
        baseline = self.host_state()
        outcome = self._via_cli(case, cmd, files, limits) if case.via == "cli" else self._via_worker(case, cmd, files, limits)
        verdict = Verdict(outcome)
        if outcome is not None:
            verdict.problems = self.expectations(case, outcome)
            verdict.escapes.extend(self.leaked_secrets(outcome, told_path="@CANARY@" in case.source))
        verdict.escapes.extend(self.worker_health())  # before settling: its cleanup is lazy too
        verdict.escapes.extend(self.settle(baseline))
        verdict.escapes.extend(f"host listener accepted a connection ({name})" for name in self.listeners.connections())
        verdict.escapes.extend(self.log_problems())
        return verdict

    def _via_worker(self, case: Case, cmd: list[str], files: dict[str, Path], limits: dict[str, object]) -> Outcome:
        job = Job(
            cmd=cmd,
            limits=Limits(**limits),  # type: ignore[arg-type]
            files=[InputFile(dest, Blob(data=path.read_bytes()), 0o755) for dest, path in files.items()],
            stdin=Blob(data=case.stdin) if case.stdin is not None else None,
        )
        result = self.client.run(job)
        return Outcome(result.status.value, result.stdout, result.stderr, result.signal_name, result.violation,
                       result.error)

    def _via_cli(self, case: Case, cmd: list[str], files: dict[str, Path], limits: dict[str, object]) -> Outcome:
        args = [*SANDBOX_CLI, "run", "--json", "--require-cgroups"]
        for key, value in limits.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        for dest, path in files.items():
            path.chmod(0o755)
            args += ["--file", f"{path}:{dest}"]
        args += ["--file", f"{self.canary.root / 'input.txt'}:/work/input.txt"]
        with tempfile.NamedTemporaryFile(dir=self.build_dir) as stdin:
            stdin.write(case.stdin or b"")
            stdin.flush()
            if case.stdin is not None:
                args += ["--stdin", stdin.name]
            done = subprocess.run([*args, "--", *cmd], capture_output=True, timeout=120)
        data = json.loads(done.stdout)  # must be one valid JSON document, whatever the job printed
        return Outcome(data["status"], data["stdout"].encode(), data["stderr"].encode(), data["signal_name"],
                       data["violation"], data["error"])

    # -- checks ------------------------------------------------------------------------
    @staticmethod
    def expectations(case: Case, outcome: Outcome) -> list[str]:
        problems = []
        if outcome.status != case.status.value:
            problems.append(f"status {outcome.status} (error={outcome.error!r}), expected {case.status.value}")
        if case.signal and outcome.signal_name != case.signal:
            problems.append(f"signal {outcome.signal_name}, expected {case.signal}")
        for stream, pattern in (("stdout", case.stdout), ("stderr", case.stderr)):
            text = getattr(outcome, stream).decode("utf-8", errors="replace")
            if pattern is not None and not re.fullmatch(pattern, text, re.DOTALL):
                problems.append(f"{stream} {text[:300]!r} does not match {pattern!r}")
        if case.violation and outcome.violation is not None:
            named = {str(value) for value in outcome.violation.values()}
            if case.violation not in named:
                problems.append(f"violation {outcome.violation}, expected {case.violation}")
        return problems

    def leaked_secrets(self, outcome: Outcome, told_path: bool) -> list[str]:
        """The secret must never come out; the canary path only if the job was told it."""
        leaks = []
        markers = [self.canary.secret.encode()] + ([] if told_path else [str(self.canary.root).encode()])
        for marker in markers:
            for stream in (outcome.stdout, outcome.stderr):
                if marker in stream:
                    leaks.append(f"job output contains host data {marker.decode()!r}")
        return leaks

    def log_problems(self) -> list[str]:
        """Every line the worker logged since the last case must be one JSON object."""
        with open(self.worker.log_path, "rb") as log:
            log.seek(self.log_offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.log_offset += len(complete)
        problems = []
        for line in complete.splitlines():
            try:
                if not isinstance(json.loads(line), dict):
                    raise ValueError
            except ValueError:
                problems.append(f"worker log line is not a JSON object: {line[:120]!r}")
        return problems

    def worker_health(self) -> list[str]:
        if self.worker.process.poll() is not None:
            return [f"worker exited with {self.worker.process.returncode}"]
        result = self.client.run(Job(cmd=["echo", "alive"]))
        if result.status.value != "ok" or result.stdout != b"alive\n":
            return [f"worker's trivial job failed: {result.status.value} {result.stdout!r} {result.error}"]
        return []
