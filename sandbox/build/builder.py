"""Run a Sandboxfile's stages into a stored image.

A stage starts from a stored image (``FROM name``), from nothing (``FROM scratch``) or
from an earlier stage (``FROM stage``); ``FROM host`` is refused - the host image is this
machine's own directories, not layers an image can be built on or moved with. Each
step that changes files (COPY, ADD, RUN) writes one layer, unpacked into the store at
once so the next step sees it; the others change the config only (an ``empty_layer``
history entry). The last stage is the image.

Order of publication, as for a pull: layer blobs and directories as they are made,
then the image's config, manifest and record (``images.compose``), and only then the
tag - so a build that fails anywhere leaves no image under the name, only
unreferenced layers gc sweeps (a failed build's finished steps stay in the cache, so
fixing the failing step rebuilds only from there). The build's workspace (the blob
being written, a step's writable layer) is in the store's ``tmp/`` and removed whatever
happens. The whole build holds the store's shared lock, so gc waits for it.

COPY and ADD (the same here: ADD takes local paths only - a URL is refused, a local tar
is copied as it is, not unpacked) read the build context (``context.py``) or, with
``--from``, an earlier stage or a stored image (``layers.py``). A destination is
resolved in the image as a container would (through its symlinks, within its root),
relative to WORKDIR; the layer holds the destination's parent directories with the
modes the image gives them, then the sources. Ownership is not kept (the store keeps
none: every file of an image belongs to the user that runs it).
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.build.cache import BuildCache, step_key
from sandbox.build.context import BuildContext, ContextError
from sandbox.build.layers import LayerStack, add_from_image
from sandbox.build.sandboxfile import (
    Instruction,
    SandboxfileError,
    Stage,
    assignments,
    command,
    copy_arguments,
    parse,
    split_stages,
    substitute,
    words,
)
from sandbox.errors import SandboxError
from sandbox.images import digests
from sandbox.images.compose import Step, adopt_layer, compose
from sandbox.images.config import ImagesConfig
from sandbox.images.errors import ImageError
from sandbox.images.layer_writer import ContentHash, LayerBlob, LayerTar, Sink, TreeWalker
from sandbox.images.pull import NoProgress, ensure_layer
from sandbox.images.reference import parse as parse_reference
from sandbox.images.store import ImageRecord, LayerRecord, Store, remove_tree

# Runs a RUN step (``run_step.run_step``): (the stage's layer directories, bottom
# first, its config, the command, an empty workspace directory) -> the layer of what it
# changed, written in the workspace.
RunStep = Callable[[list[str], dict[str, Any], list[str], Path], LayerBlob]


class BuildError(SandboxError):
    """A build that failed; the message names the step."""


@dataclass
class BuildReport:
    reference: str
    image_id: str
    steps: int  # instructions run, FROM included
    cached: int  # steps whose layer came from the cache
    written: int  # steps that wrote a layer anew


@dataclass
class StageState:
    """A stage as far as it has got."""

    base: ImageRecord | None
    layers: list[LayerRecord]  # every layer, the base's too, with chain ids
    config: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        pairs = (str(item).partition("=") for item in self.config.get("Env") or [])
        return {key: value for key, sep, value in pairs if sep}

    def variables(self) -> dict[str, str]:
        return {**self.args, **self.env()}

    def chain(self) -> str:
        return self.layers[-1].chain_id if self.layers else "scratch"


class Builder:
    """One build: its stages as they are made, and the counts of its report. The
    caller holds the store's shared lock (``build``)."""

    def __init__(self, store: Store, images: ImagesConfig, context: BuildContext, build_args: dict[str, str],
                 log: Callable[[str], None], run_step: RunStep | None = None) -> None:
        self.store = store
        self.images = images
        self.context = context
        self.build_args = build_args
        self.log = log
        self.run_step = run_step
        self.cache = BuildCache(store)
        self.stages: dict[str, StageState] = {}
        self.cached = 0
        self.written = 0

    def build(self, text: str, tag: str) -> BuildReport:
        reference = parse_reference(tag)
        sandboxfile = split_stages(parse(text))
        global_args: dict[str, str] = {}
        for instruction in sandboxfile.global_args:
            name, value = self._arg(instruction, global_args)
            global_args[name] = value
        total = sum(1 + len(stage.instructions) for stage in sandboxfile.stages)
        number = 0
        state: StageState | None = None
        for index, stage in enumerate(sandboxfile.stages):
            number += 1
            self.log(f"step {number}/{total}: FROM {stage.base}" + (f" AS {stage.name}" if stage.name else ""))
            state = self._from(stage, global_args)
            for instruction in stage.instructions:
                number += 1
                self.log(f"step {number}/{total}: {instruction}")
                self._step(state, instruction, global_args)
            self.stages[str(index)] = state
            if stage.name:
                self.stages[stage.name] = state
        assert state is not None  # split_stages found a FROM
        record = compose(self.store, self.images, state.base, state.steps, state.config)
        self.store.set_ref(reference, record.id)
        return BuildReport(str(reference), record.id, number, self.cached, self.written)

    # ---- FROM and the config-only steps -------------------------------------------
    def _from(self, stage: Stage, global_args: dict[str, str]) -> StageState:
        base = words(substitute(stage.base, global_args, stage.line), stage.line)[0]
        if base.lower() in self.stages:
            earlier = self.stages[base.lower()]
            return StageState(earlier.base, list(earlier.layers), dict(earlier.config), list(earlier.steps))
        if base == "scratch":
            return StageState(None, [], {})
        if base == "host":
            raise SandboxfileError(stage.line, "FROM host: the host image is this machine's own directories, not "
                                               "layers to build on; FROM a stored image, or scratch")
        try:
            _, record = self.store.lookup(base)
        except ImageError as exc:
            raise SandboxfileError(stage.line, str(exc)) from None
        layers = [LayerRecord(layer.digest, layer.diff_id, layer.chain_id, layer.size, layer.media_type)
                  for layer in record.layers]
        return StageState(record, layers, dict(record.config))

    def _arg(self, instruction: Instruction, known: dict[str, str]) -> tuple[str, str]:
        text = substitute(instruction.text, known, instruction.line)
        name, sep, default = words(text, instruction.line)[0].partition("=")
        if name in self.build_args:
            return name, self.build_args[name]
        return name, default if sep else known.get(name, "")

    def _step(self, state: StageState, instruction: Instruction, global_args: dict[str, str]) -> None:
        keyword, line = instruction.keyword, instruction.line
        if keyword in ("COPY", "ADD"):
            self._copy(state, instruction)
            return
        if keyword == "RUN":
            self._run(state, instruction)
            return
        text = instruction.text
        config = state.config
        if keyword == "ARG":
            name, value = self._arg(instruction, {**global_args, **state.variables()})
            state.args[name] = value
            return  # an ARG leaves no trace in the image
        text = substitute(text, state.variables(), line)
        if keyword == "ENV":
            env = state.env()
            env.update(assignments(text, line, keyword))
            config["Env"] = [f"{key}={value}" for key, value in env.items()]
        elif keyword == "LABEL":
            config["Labels"] = {**(config.get("Labels") or {}), **dict(assignments(text, line, keyword))}
        elif keyword == "WORKDIR":
            config["WorkingDir"] = posixpath.normpath(posixpath.join(config.get("WorkingDir") or "/",
                                                                     _one_word(text, line, keyword)))
        elif keyword == "USER":
            config["User"] = _one_word(text, line, keyword)
        elif keyword == "EXPOSE":
            ports: dict[str, dict[str, str]] = {port if "/" in port else f"{port}/tcp": {}
                                                for port in words(text, line)}
            config["ExposedPorts"] = {**(config.get("ExposedPorts") or {}), **ports}
        elif keyword == "CMD":
            config["Cmd"] = command(instruction.text, line)
        elif keyword == "ENTRYPOINT":
            config["Entrypoint"] = command(instruction.text, line)
            config.pop("Cmd", None)  # as Docker: an ENTRYPOINT drops the CMD it inherited
        state.steps.append(Step(str(instruction), None))

    # ---- steps that write a layer ----------------------------------------------------
    def _copy(self, state: StageState, instruction: Instruction) -> None:
        line = instruction.line
        arguments = copy_arguments(substitute(instruction.text, state.variables(), line), line, instruction.keyword)
        if any("://" in source for source in arguments.sources):
            raise SandboxfileError(line, f"{instruction.keyword} takes local paths only, not URLs")
        workdir = state.config.get("WorkingDir") or "/"
        destination = posixpath.join(workdir, arguments.destination)
        stack = LayerStack(self._layer_dirs(state.layers))
        try:
            target = stack.resolve(destination, follow_last=True)
            found = stack.lookup(target)
            into_directory = (arguments.destination.endswith("/") or len(arguments.sources) > 1
                              or any(_wildcard(source) for source in arguments.sources)
                              or (found is not None and stat.S_ISDIR(found[1].st_mode)))
            copier = self._copier(state, arguments.from_stage, arguments.sources, target, into_directory, line)
            parents = _parent_entries(stack, target if into_directory else target[:-1])
        finally:
            stack.close()
        content = ContentHash()
        _guarded(instruction, copier, content)
        key = step_key(state.chain(), str(instruction.keyword), "/".join(target), str(into_directory),
                       " ".join(arguments.sources), arguments.from_stage or "", content.hexdigest())

        def write(sink: Sink) -> None:
            for name, st in parents:
                sink.entry(name, st, None, "", {})
            copier(sink)

        self._layer_step(state, instruction, key, lambda: self._write_layer(write, instruction))

    def _copier(self, state: StageState, from_stage: str | None, sources: list[str], target: list[str],
                into_directory: bool, line: int) -> Callable[[Sink], None]:
        """What writes the sources into a sink (twice: once to hash them, once to the
        layer), checked now so that a missing source fails before anything is written."""
        prefix = "/".join(target)
        limits = self.images.limits
        if from_stage is None:
            try:
                found = [source for pattern in sources for source in self.context.sources(pattern)]
            except ContextError as exc:
                raise SandboxfileError(line, str(exc)) from None

            def from_context(sink: Sink) -> None:
                walker = TreeWalker(sink, upper=False, skip=self.context.rules.ignored,
                                    max_entries=limits.max_entries, max_bytes=limits.max_bytes)
                for source in found:
                    parent = self.context.open_directory(source.parent, source.path)
                    try:
                        if source.is_directory:
                            directory = self.context.open_directory(source.path, source.path)
                            try:
                                walker.add_contents(directory, prefix, relative=source.path)
                            finally:
                                os.close(directory)
                        else:
                            name = _join(prefix, source.name) if into_directory else prefix
                            walker.add(parent, source.name, name, relative=source.path)
                    finally:
                        os.close(parent)

            return from_context
        source_layers = self._source_layers(from_stage, line)

        def from_image(sink: Sink) -> None:
            stack = LayerStack(source_layers)
            walker = TreeWalker(sink, upper=False, max_entries=limits.max_entries, max_bytes=limits.max_bytes)
            try:
                for source in sources:
                    parts = stack.resolve(source if source.startswith("/") else "/" + source, follow_last=False)
                    found = stack.lookup(parts)
                    if found is None:
                        raise SandboxfileError(line, f"COPY --from={from_stage}: {source} is not there")
                    if stat.S_ISDIR(found[1].st_mode):
                        add_from_image(walker, stack, parts, prefix, contents_only=True)
                    else:
                        name = _join(prefix, parts[-1]) if into_directory else prefix
                        add_from_image(walker, stack, parts, name, contents_only=False)
            finally:
                stack.close()

        return from_image

    def _source_layers(self, from_stage: str, line: int) -> list[str]:
        earlier = self.stages.get(from_stage)
        if earlier is not None:
            return self._layer_dirs(earlier.layers)
        try:
            _, record = self.store.lookup(from_stage)
        except ImageError as exc:
            raise SandboxfileError(line, f"COPY --from={from_stage}: no earlier stage of that name, and {exc}"
                                   ) from None
        return self._layer_dirs(record.layers)

    def _run(self, state: StageState, instruction: Instruction) -> None:
        if self.run_step is None:
            raise SandboxfileError(instruction.line, "RUN needs a sandbox to run in, which this build has not")
        argv = command(instruction.text, instruction.line)
        env = sorted(state.env().items())
        key = step_key(state.chain(), "RUN", *argv, repr(env), state.config.get("WorkingDir") or "",
                       str(state.config.get("User") or ""), repr(sorted(state.args.items())))
        run_step = self.run_step
        # The ARGs are the command's environment too (not the image's), under its ENV.
        config = {**state.config, "Env": [f"{name}={value}" for name, value in state.variables().items()]}

        def produce() -> LayerRecord:
            workspace = self.store.temp_dir("run-")
            try:
                return adopt_layer(self.store, run_step(self._layer_dirs(state.layers), config, argv, workspace))
            finally:
                remove_tree(workspace)

        self._layer_step(state, instruction, key, produce)

    def _layer_step(self, state: StageState, instruction: Instruction, key: str,
                    produce: Callable[[], LayerRecord]) -> None:
        """The layer of a step: from the cache, else made now (``produce``); then
        unpacked into the store (if it is not already) so the next step sees it."""
        layer = self.cache.get(key)
        if layer is not None:
            self.cached += 1
            self.log("  cached")
        else:
            layer = produce()
            self.cache.put(key, layer)
            self.written += 1
        chain = digests.chain_ids([*(known.diff_id for known in state.layers), layer.diff_id])[-1]
        layer = LayerRecord(layer.digest, layer.diff_id, chain, layer.size, layer.media_type)
        ensure_layer(self.store, self.images, layer, _no_fetch, NoProgress())
        state.layers.append(layer)
        state.steps.append(Step(str(instruction), layer))

    def _write_layer(self, write: Callable[[Sink], None], instruction: Instruction) -> LayerRecord:
        temp = self.store.temp_dir("build-")
        try:
            path = temp / "layer"
            with open(path, "xb") as out:
                tar = LayerTar(out)
                _guarded(instruction, write, tar)
                digest, diff_id, size = tar.finish()
            return adopt_layer(self.store, LayerBlob(path, digest, diff_id, size))
        finally:
            remove_tree(temp)

    def _layer_dirs(self, layers: list[LayerRecord]) -> list[str]:
        return [str(self.store.layer_path(layer.chain_id)) for layer in layers]


def _no_fetch(digest: str, partial: Path, advance: Callable[[int], None]) -> None:
    raise BuildError(f"the layer blob {digest} left the store during the build")


def _guarded(instruction: Instruction, write: Callable[[Sink], None], sink: Sink) -> None:
    """``write(sink)``, its failures named by the instruction's line."""
    try:
        write(sink)
    except SandboxfileError:
        raise
    except (SandboxError, OSError) as exc:
        raise SandboxfileError(instruction.line, f"{instruction.keyword}: {exc}") from exc


def _one_word(text: str, line: int, keyword: str) -> str:
    split = words(text, line)
    if len(split) != 1:
        raise SandboxfileError(line, f"{keyword} takes one value")
    return split[0]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _wildcard(source: str) -> bool:
    return any(char in source for char in "*?[")


def _parent_entries(stack: LayerStack, parts: list[str]) -> list[tuple[str, os.stat_result]]:
    """Directory entries for ``parts`` and each of its parents: the image's own where it
    has a directory there (its mode, its time), else a new 0755 one."""
    now = int(time.time())
    entries = []
    for depth in range(1, len(parts) + 1):
        found = stack.lookup(parts[:depth])
        if found is not None and stat.S_ISDIR(found[1].st_mode):
            st = found[1]
        else:
            st = os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 1, 0, 0, 0, now, now, now))
        entries.append(("/".join(parts[:depth]), st))
    return entries


def build(store: Store, images: ImagesConfig, sandboxfile: str, context_dir: str, tag: str,
          build_args: dict[str, str], log: Callable[[str], None], run_step: RunStep | None = None) -> BuildReport:
    """Build ``sandboxfile`` (its text) with the context ``context_dir`` into ``tag``."""
    context = BuildContext(context_dir)
    try:
        with store.shared():
            return Builder(store, images, context, build_args, log, run_step).build(sandboxfile, tag)
    finally:
        context.close()
