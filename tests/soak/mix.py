"""The soak's job mix: one job of each verdict a judge sees, cheap enough to run by the
thousand. Every job has the status it must get, so the soak checks correctness under
load, not only survival."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandbox.models import Blob, InputFile, Job, Limits, Status

PTRACE = 101


@dataclass(frozen=True)
class MixEntry:
    name: str
    job: Job
    status: Status


def _program(binary: Path, *args: str, **limits: object) -> Job:
    dest = f"/work/{binary.name}"
    return Job(cmd=[dest, *args], files=[InputFile(dest, Blob(data=binary.read_bytes()), 0o755)],
               limits=Limits(**limits))  # type: ignore[arg-type]


def job_mix(programs: dict[str, Path]) -> list[MixEntry]:
    return [
        MixEntry("ok", Job(cmd=["true"]), Status.OK),
        MixEntry("ok_output", Job(cmd=["sh", "-c", "echo soak; echo err >&2"]), Status.OK),
        MixEntry("runtime_error", Job(cmd=["sh", "-c", "exit 3"]), Status.RUNTIME_ERROR),
        MixEntry("crash", Job(cmd=["sh", "-c", "kill -SEGV $$"]), Status.SIGNALED),
        MixEntry("time_limit", _program(programs["spin"], "0", cpu_time="50ms"), Status.TIME_LIMIT),
        MixEntry("wall_time_limit", Job(cmd=["sleep", "10"], limits=Limits(wall_time="50ms")), Status.WALL_TIME_LIMIT),
        MixEntry("memory_limit", _program(programs["touch_memory"], "64", memory="16M"), Status.MEMORY_LIMIT),
        MixEntry("output_limit", Job(cmd=["sh", "-c", "yes"], limits=Limits(output="16K")), Status.OUTPUT_LIMIT),
        MixEntry("violation", _program(programs["syscall"], str(PTRACE)), Status.SYSCALL_VIOLATION),
        MixEntry("fork_bomb", Job(cmd=["sh", "-c", "(f() { f | f & }; f) & exec sleep 10"],
                                  limits=Limits(pids=16, wall_time="100ms")), Status.WALL_TIME_LIMIT),
    ]
