"""What a job needs of a stored image: its layer directories, its config turned into
argv/env/cwd, and a lease that keeps gc away while the job runs.

How the image config maps onto a job:

- Entrypoint + Cmd: the job's command replaces Cmd (Docker's rule); with no command,
  Entrypoint + Cmd run. Neither and no command is an error.
- Env: the image's variables over the sandbox default PATH; the job's over both.
- WorkingDir: used when the job names no cwd (else /work); created if missing.
- User: not honoured as an identity. The job always runs as uid/gid 1000 in its user
  namespace, which is also the owner of every file the rootless unpack wrote, so
  "root", "nobody" or "1000" all see the image's files as their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import JobError
from sandbox.images import config as images_config
from sandbox.images.store import ImageRecord, Store
from sandbox.job_message import DEFAULT_PATH
from sandbox.models import WORKDIR, Job


@dataclass
class LeasedImage:
    name: str
    record: ImageRecord
    layer_dirs: list[str]
    lease_fd: int = field(repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return self.record.config

    def release(self) -> None:
        if self.lease_fd >= 0:
            os.close(self.lease_fd)
            self.lease_fd = -1

    def workdir(self) -> str | None:
        return image_workdir(self.config)


def image_command(
    job: Job, config: dict[str, Any], profile_env: dict[str, str],
) -> tuple[list[str], dict[str, str], str]:
    """argv, env (over the profile's) and cwd of ``job`` on an image of this config, whose
    Entrypoint, Cmd, Env and WorkingDir apply - for the runner, and for the worker's
    direct hand-over (worker/handover.py), which must say exactly the same."""
    argv = image_argv(config, job.cmd)
    if not argv:
        raise JobError(f"no command given and image {job.image} has no Entrypoint or Cmd", field="cmd")
    env = {"PATH": DEFAULT_PATH}
    for item in config.get("Env") or []:
        key, sep, value = str(item).partition("=")
        if sep and key and "\x00" not in item:
            env[key] = value
    return argv, {**profile_env, **env, **job.env}, job.cwd or image_workdir(config) or WORKDIR


def image_workdir(config: dict[str, Any]) -> str | None:
    """The image's WorkingDir, if it is an absolute path without "..": where a job that
    names no cwd starts."""
    value = config.get("WorkingDir") or None
    return value if value and value.startswith("/") and ".." not in value.split("/") else None


def image_argv(config: dict[str, Any], cmd: list[str]) -> list[str]:
    """The command a job runs on an image of this config (empty: it names none)."""
    entrypoint = list(config.get("Entrypoint") or [])
    return entrypoint + (list(cmd) if cmd else list(config.get("Cmd") or []))


def lease_image(name: str, store: Store | None = None) -> LeasedImage:
    """Find ``name`` in the store and lease it (raises ImageNotFound)."""
    store = store or Store(images_config.load().store)
    with store.shared():
        matched, record = store.lookup(name)
        fd = store.lease(record.id)
    return LeasedImage(matched, record, [store.layer_dir(layer.chain_id) for layer in record.layers], fd)
