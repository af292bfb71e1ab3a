"""Language presets (profiles/languages/*.toml): "run this C++ file" in one call.

A preset names the source file, the compile command and the files it produces, the run
command and the quirks of its runtime. ``compile_source`` compiles in the ``compile``
profile; ``run_compiled`` runs the artifacts in the run profile (``default``), as often
as asked (a judge runs every test on one compile), each time in a fresh sandbox with
nothing of the compiler's left behind. ``run_source`` does both once.

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
from sandbox.models import WORKDIR, Blob, InputFile, Job, Limits, Pipe, Result, Status, runs_python
from sandbox.profile_names import PROFILES_DIR

if TYPE_CHECKING:
    from sandbox.runner import Runner

LANGUAGES_DIR = PROFILES_DIR / "languages"
IMAGE_REPOSITORY = "judge/languages"
_PRESET_KEYS = {"description", "source", "compile", "compile_options", "artifacts", "run", "version", "env", "quirks"}
# Where a submission's compiler options go in a preset's compile command (after the
# preset's own, so "-O0" overrides "-O2"); a preset without it takes none.
OPTIONS_SLOT = "{options}"
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
    compile_options: list[str] = field(default_factory=list)  # fnmatch patterns a submission may use

    def check_options(self, options: Sequence[str]) -> None:
        """A submission's compiler options, each matching the preset's allow-list: a judge
        offers "-O0" or "-std=c++20", not "-o /somewhere" or a plugin to load."""
        if options and OPTIONS_SLOT not in self.compile:
            raise JobError(f"the {self.name} preset takes no compiler options", field="compile_options")
        for option in options:
            if not isinstance(option, str) or "\0" in option:
                raise JobError("compiler options are strings without NUL", field="compile_options")
            if not any(fnmatch.fnmatchcase(option, pattern) for pattern in self.compile_options):
                allowed = ", ".join(self.compile_options) or "none"
                raise JobError(f"compiler option {option!r} is not allowed for {self.name} (allowed: {allowed})",
                               field="compile_options")

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
    ``sandbox.cli.languages.WorkerStages``) - the same jobs either way."""

    parallelism: int  # what {cpus} is without a CPU quota

    def profile_limits(self, name: str) -> dict[str, Any]:
        """The [limits] of profile ``name``, a stage's defaults."""
        ...

    def run(self, job: Job, trace: list[Any] | None) -> Result:
        ...

    def run_group(self, jobs: list[Job], pipes: list[Pipe]) -> list[Result]:
        """Jobs at once, wired by pipes (``Runner.run_group``): an interactive problem's
        interactor and solution."""
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

    def run_group(self, jobs: list[Job], pipes: list[Pipe]) -> list[Result]:
        return self.runner.run_group(jobs, pipes)


@dataclass
class Compiled:
    """A program compiled once, for any number of runs: the compile job's Result and
    what every run gets in /work (the caller's files, the source, the artifacts), and
    the image both stages run on."""

    preset: Preset
    result: Result
    files: list[InputFile]
    env: dict[str, str]
    require_cgroups: bool
    image: str
    # The runs in the interpreter mode (``Job.interpreter``: these modules imported ahead),
    # for a preset that runs python3; None: a fresh process each.
    interpreter: list[str] | None = None

    @property
    def status(self) -> Status:
        """OK, or why there is nothing to run: a compiler that failed is the source's
        compile_error, a compile stopped by a limit keeps that status."""
        if self.result.status is Status.RUNTIME_ERROR:
            return Status.COMPILE_ERROR
        return self.result.status


def compile_source(stages: Stages, preset: Preset, code: bytes, *, files: Sequence[InputFile] = (),
                   env: dict[str, str] | None = None, require_cgroups: bool = False,
                   options: Sequence[str] = (), trace: list[Any] | None = None, image: str | None = None,
                   interpreter: Sequence[str] | None = None) -> Compiled:
    """Compile ``code`` in the ``compile`` profile, with its limits, on ``image`` - the
    language image unless told (an image built on it, ``sandbox build``, holding what a
    course's programs need); the runs use the same image.

    ``files`` (a caller's headers, modules, data) are placed in /work for the compile and
    every run, and ``env`` is set in both, over the preset's: the compile may need the
    one, the program the other, and neither harms the other stage. ``options`` are the
    submission's compiler options, from the preset's allow-list. ``interpreter``: the
    runs in the interpreter mode, with these modules imported ahead (python3 only)."""
    _check_extra_files(preset, files)
    if interpreter is not None and not runs_python(preset.run):
        raise JobError(f"the interpreter mode runs python3: {preset.name} runs {preset.run[0]}", field="interpreter")
    preset.check_options(options)
    build_limits = Limits(**stages.profile_limits("compile"))
    source_file = InputFile(f"{WORKDIR}/{preset.source}", Blob(data=code))
    require_cgroups = require_cgroups or preset.needs_cgroups
    image = image or image_reference()
    result = _stage(stages, Job(
        cmd=_compile_argv(preset, build_limits, stages.parallelism, options), limits=build_limits,
        files=[*files, source_file], image=image, profile="compile",
        env={**_env(preset, build_limits, stages.parallelism), **(env or {})}, require_cgroups=require_cgroups,
    ), trace)
    artifacts: list[InputFile] = []
    if result.status is Status.OK:
        artifacts = _read_artifacts(result.stdout) if preset.artifacts else []
        result.stdout = b""  # the artifacts tar, not output anyone wants to read
    return Compiled(preset, result, [*files, source_file, *artifacts], dict(env or {}), require_cgroups, image,
                    None if interpreter is None else list(interpreter))


def run_compiled(stages: Stages, compiled: Compiled, *, stdin: Blob | None = None, limits: Limits | None = None,
                 profile: str = "default", args: Sequence[str] = (), inputs: Sequence[InputFile] = (),
                 trace: list[Any] | None = None) -> Result:
    """One run of a compiled program (``profile``, ``limits``), in a fresh sandbox with
    nothing of the compiler's but its artifacts; ``args`` follow the preset's run
    command, ``inputs`` join the compiled files in /work."""
    job = compiled_job(stages, compiled, stdin=stdin, limits=limits, profile=profile, args=args, inputs=inputs)
    return _stage(stages, job, trace)


def compiled_job(stages: Stages, compiled: Compiled, *, stdin: Blob | None = None, limits: Limits | None = None,
                 profile: str = "default", args: Sequence[str] = (), inputs: Sequence[InputFile] = ()) -> Job:
    """The job ``run_compiled`` runs, for a caller that runs it in a group."""
    preset = compiled.preset
    # The run command is formatted with the limits the job will get (a JVM's heap from
    # its memory): the given ones over the profile's. A runtime may need more processes.
    limits = (limits or Limits()).over(stages.profile_limits(profile))
    limits = Limits(**{**limits.given_values(), "pids": max(limits.pids, int(preset.quirks.get("min_pids", 1)))})
    return Job(
        cmd=[*_format(preset, preset.run, limits, stages.parallelism), *args], limits=limits,
        files=[*compiled.files, *inputs], image=compiled.image, profile=profile,
        env={**_env(preset, limits, stages.parallelism), **compiled.env}, stdin=stdin,
        require_cgroups=compiled.require_cgroups, interpreter=compiled.interpreter,
    )


def read_source(source: Path) -> bytes:
    try:
        return source.read_bytes()
    except OSError as exc:
        raise JobError(f"cannot read {source}: {exc.strerror}", field="source") from exc


def run_source(stages: Stages, preset: Preset, source: Path, *, stdin: Blob | None = None,
               limits: Limits | None = None, profile: str = "default", files: Sequence[InputFile] = (),
               env: dict[str, str] | None = None, require_cgroups: bool = False, options: Sequence[str] = (),
               args: Sequence[str] = (), traces: tuple[list[Any], list[Any]] | None = None,
               image: str | None = None) -> LanguageRun:
    """Compile (``compile_source``, with the compiler ``options``) and run once
    (``run_compiled``, with the program's ``args``). With ``traces`` (compile, run), both
    stages run traced (scripts/record-evidence)."""
    compile_trace, run_trace = traces or (None, None)
    compiled = compile_source(stages, preset, read_source(source), files=files, env=env,
                              require_cgroups=require_cgroups, options=options, trace=compile_trace, image=image)
    if compiled.status is not Status.OK:
        return LanguageRun(compiled.status, compiled.result, None)
    ran = run_compiled(stages, compiled, stdin=stdin, limits=limits, profile=profile, args=args, trace=run_trace)
    return LanguageRun(ran.status, compiled.result, ran)


def _stage(stages: Stages, job: Job, trace: list[Any] | None) -> Result:
    """One stage; a missing language image is named with its remedy."""
    try:
        return stages.run(job, trace)
    except JobError as exc:
        raise _named(exc, job) from None


def run_stages_together(stages: Stages, jobs: list[Job], pipes: list[Pipe]) -> list[Result]:
    """Compiled programs' jobs (``compiled_job``) as one group; a missing language image
    is named with its remedy, as for one stage."""
    try:
        return stages.run_group(jobs, pipes)
    except JobError as exc:
        raise _named(exc, jobs[0]) from None


def _named(exc: JobError, job: Job) -> JobError:
    if exc.field is not None and (exc.field == "image" or exc.field.endswith(".image")):
        if job.image != image_reference():
            return JobError(f"the image {job.image} is not in the image store", field="image")
        return JobError(f"the language image {job.image} is not in the image store: build it with "
                        "'sandbox languages build' (as the user whose store runs the job)", field="lang")
    return exc


def _check_extra_files(preset: Preset, files: Sequence[InputFile]) -> None:
    """A caller's file may not take the place of the source or of what the compile makes
    (the run would get something other than what was compiled)."""
    for entry in files:
        if is_program_file(preset, entry.dest.removeprefix(f"{WORKDIR}/")):
            raise JobError(f"{entry.dest} is the {preset.name} preset's source or build output", field="files")


def is_program_file(preset: Preset, name: str) -> bool:
    """``name`` (in /work) is the preset's source, or a file its compile makes."""
    return name == preset.source or any(fnmatch.fnmatchcase(name, pattern) for pattern in preset.artifacts)


def _compile_argv(preset: Preset, limits: Limits, cpus: int, options: Sequence[str]) -> list[str]:
    command: list[str] = []
    for arg in preset.compile:  # the options as given: never formatted, never split
        command.extend(options if arg == OPTIONS_SLOT else _format(preset, [arg], limits, cpus))
    if not preset.artifacts:
        return command
    # Diagnostics to stderr; on success the artifacts, as a tar, on stdout.
    script = '"$@" >&2 || exit $?; exec tar -cf - -- ' + " ".join(preset.artifacts)
    return ["sh", "-c", script, "sh", *command]


def _read_artifacts(data: bytes) -> list[InputFile]:
    """Regular files with plain names from the compile job's tar; anything else is the
    compile sandbox misbehaving and fails the run."""
    files: list[InputFile] = []
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
