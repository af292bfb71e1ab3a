"""Language presets (profiles/languages/*.toml): "run this C++ file" in one call.

A preset names the source file, the compile command and the files it produces, the run
command and the quirks of its runtime. ``run_source`` compiles in the ``compile``
profile, carries the artifacts over and runs them in the run profile (``default``):
compile once, run in a fresh sandbox with nothing of the compiler's left behind.

The artifacts travel as a tar on the compile job's stdout (the compiler's own output
goes to stderr) and are read in memory with strict rules - regular files with plain
names only - so the host never writes what the compile sandbox produced, and never
follows a link it made.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import math
import re
import tarfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sandbox.errors import JobError, SetupError
from sandbox.models import WORKDIR, Blob, InputFile, Job, Limits, Result, Status
from sandbox.profile import PROFILES_DIR

if TYPE_CHECKING:
    from sandbox.runner import Runner

LANGUAGES_DIR = PROFILES_DIR / "languages"
IMAGE_REPOSITORY = "judge/languages"
_PRESET_KEYS = {"description", "source", "compile", "artifacts", "run", "version", "env", "quirks"}
_QUIRK_KEYS = {"address_space_limit", "heap_fraction", "min_pids"}
_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_$.-]*")
_MAX_ARTIFACTS = 4096


@dataclass
class Preset:
    name: str
    description: str
    source: str
    compile: list[str]
    artifacts: list[str]
    run: list[str]
    version: list[str]
    env: dict[str, str] = field(default_factory=dict)
    quirks: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_cgroups(self) -> bool:
        """Runtimes that reserve huge address space break under RLIMIT_AS, the only
        memory cap without a cgroup; they run only where a cgroup caps memory."""
        return self.quirks.get("address_space_limit", True) is False


@dataclass
class LanguageRun:
    """The two stages of a ``--lang`` run; ``run`` is None when compiling failed."""

    status: Status
    compile: Result
    run: Result | None

    def to_json_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "compile": self.compile.to_json_dict(),
                "run": None if self.run is None else self.run.to_json_dict()}


def preset_names() -> list[str]:
    return sorted(p.stem for p in LANGUAGES_DIR.glob("*.toml") if p.stem != "image")


def load_preset(name: str) -> Preset:
    path = LANGUAGES_DIR / f"{name}.toml"
    if name not in preset_names():
        raise JobError(f"no language preset {name!r} (known: {', '.join(preset_names())})", field="lang")
    data = tomllib.loads(path.read_text())
    unknown = set(data) - _PRESET_KEYS | set(data.get("quirks", {})) - _QUIRK_KEYS
    if unknown:
        raise SetupError(f"{path}: unknown key(s) {sorted(unknown)}")
    return Preset(name=name, **data)


def image_reference() -> str:
    """judge/languages:<first 12 hex of the recipe's sha256>: a new recipe, a new tag."""
    digest = hashlib.sha256((LANGUAGES_DIR / "image.toml").read_bytes()).hexdigest()
    return f"{IMAGE_REPOSITORY}:{digest[:12]}"


def image_present() -> bool:
    from sandbox.images import config as images_config
    from sandbox.images.errors import ImageNotFound
    from sandbox.images.store import Store

    try:
        Store(images_config.load().store).lookup(image_reference())
    except ImageNotFound:
        return False
    return True


class Stages(Protocol):
    """What ``run_source`` runs its two jobs with: a Runner in this process (``sandbox
    run --lang``), or a worker's client (``sandbox submit --lang``,
    ``languages_cli.WorkerStages``) - the same jobs either way."""

    parallelism: int  # what {cpus} is without a CPU quota

    def profile_limits(self, name: str) -> dict[str, Any]:
        """The [limits] of profile ``name``, a stage's defaults."""
        ...

    def run(self, job: Job, trace: list[Any] | None) -> Result:
        ...


class RunnerStages:
    """The stages in this process, on a Runner."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.parallelism = runner.parallelism

    def profile_limits(self, name: str) -> dict[str, Any]:
        return self.runner.profiles.get(name).limits

    def run(self, job: Job, trace: list[Any] | None) -> Result:
        return self.runner.run(job, trace=trace)


def run_source(stages: Stages, preset: Preset, source: Path, *, stdin: Blob | None = None,
               limits: Limits | None = None, profile: str = "default", files: Sequence[InputFile] = (),
               env: dict[str, str] | None = None, require_cgroups: bool = False,
               traces: tuple[list[Any], list[Any]] | None = None) -> LanguageRun:
    """Compile (profile ``compile``, its limits) and run (``profile``, ``limits``).

    ``files`` (a caller's headers, modules, data) are placed in /work for both stages,
    and ``env`` is set in both, over the preset's: the compile may need the one, the
    program the other, and neither harms the other stage. ``stdin`` and ``limits`` are
    the program's. With ``traces`` (compile, run), both stages run traced
    (scripts/record-evidence)."""
    compile_trace, run_trace = traces or (None, None)
    try:
        code = source.read_bytes()
    except OSError as exc:
        raise JobError(f"cannot read {source}: {exc.strerror}", field="source") from exc
    _check_extra_files(preset, files)
    image = image_reference()
    build_limits = Limits(**stages.profile_limits("compile"))
    source_file = InputFile(f"{WORKDIR}/{preset.source}", Blob(data=code))
    compiled = _stage(stages, Job(
        cmd=_compile_argv(preset, build_limits, stages.parallelism), limits=build_limits,
        files=[*files, source_file], image=image, profile="compile",
        env={**_env(preset, build_limits, stages.parallelism), **(env or {})},
        require_cgroups=require_cgroups or preset.needs_cgroups,
    ), compile_trace)
    if compiled.status is not Status.OK:
        failed = Status.COMPILE_ERROR if compiled.status is Status.RUNTIME_ERROR else compiled.status
        return LanguageRun(failed, compiled, None)
    artifacts = _read_artifacts(compiled.stdout) if preset.artifacts else []
    compiled.stdout = b""  # the artifacts tar, not output anyone wants to read
    # The run command is formatted with the limits the job will get (a JVM's heap from
    # its memory): the given ones over the profile's. A runtime may need more processes.
    limits = (limits or Limits()).over(stages.profile_limits(profile))
    limits = Limits(**{**limits.given_values(), "pids": max(limits.pids, int(preset.quirks.get("min_pids", 1)))})
    ran = _stage(stages, Job(
        cmd=_format(preset, preset.run, limits, stages.parallelism), limits=limits,
        files=[*files, source_file, *artifacts], image=image, profile=profile,
        env={**_env(preset, limits, stages.parallelism), **(env or {})}, stdin=stdin,
        require_cgroups=require_cgroups or preset.needs_cgroups,
    ), run_trace)
    return LanguageRun(ran.status, compiled, ran)


def _stage(stages: Stages, job: Job, trace: list[Any] | None) -> Result:
    """One stage; a missing language image is named with its remedy."""
    try:
        return stages.run(job, trace)
    except JobError as exc:
        if exc.field == "image":
            raise JobError(f"the language image {job.image} is not in the image store: build it with "
                           "'sandbox languages build' (as the user whose store runs the job)", field="lang") from None
        raise


def _check_extra_files(preset: Preset, files: Sequence[InputFile]) -> None:
    """A caller's file may not take the place of the source or of what the compile makes
    (the run would get something other than what was compiled)."""
    for entry in files:
        name = entry.dest.removeprefix(f"{WORKDIR}/")
        if name == preset.source or any(fnmatch.fnmatchcase(name, pattern) for pattern in preset.artifacts):
            raise JobError(f"{entry.dest} is the {preset.name} preset's source or build output", field="files")


def _compile_argv(preset: Preset, limits: Limits, cpus: int) -> list[str]:
    command = _format(preset, preset.compile, limits, cpus)
    if not preset.artifacts:
        return command
    # Diagnostics to stderr; on success the artifacts, as a tar, on stdout.
    script = '"$@" >&2 || exit $?; exec tar -cf - -- ' + " ".join(preset.artifacts)
    return ["sh", "-c", script, "sh", *command]


def _read_artifacts(data: bytes) -> list[InputFile]:
    """Regular files with plain names from the compile job's tar; anything else is the
    compile sandbox misbehaving and fails the run."""
    files = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                if not member.isfile() or not _ARTIFACT_NAME.fullmatch(member.name) or len(files) >= _MAX_ARTIFACTS:
                    raise SetupError(f"unexpected entry {member.name!r} in the compile artifacts")
                handle = archive.extractfile(member)
                assert handle is not None  # a regular file
                files.append(InputFile(f"{WORKDIR}/{member.name}", Blob(data=handle.read()), member.mode & 0o755))
    except tarfile.TarError as exc:
        raise SetupError(f"compile artifacts unreadable: {exc}") from exc
    return files


def _format(preset: Preset, argv: list[str], limits: Limits, cpus: int) -> list[str]:
    """Fill in {memory_mb}, {heap_mb} (heap_fraction of the memory limit) and {cpus}
    (the CPU quota rounded up, else the CPUs we may use)."""
    fraction = float(preset.quirks.get("heap_fraction", 0.75))
    values = {
        "memory_mb": limits.memory_bytes >> 20,
        "heap_mb": int((limits.memory_bytes >> 20) * fraction),
        "cpus": math.ceil(limits.cpus) if limits.cpus else cpus,
    }
    return [arg.format(**values) for arg in argv]


def _env(preset: Preset, limits: Limits, cpus: int) -> dict[str, str]:
    return dict(zip(preset.env, _format(preset, list(preset.env.values()), limits, cpus), strict=True))
