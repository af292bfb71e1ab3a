"""The worker's look at a job's image before it queues the job.

A job naming an image that is not in the store (or one that gives it no command) is the
client's mistake: it is answered ``invalid_job`` at once, as a bad limit is, instead of
reaching a slot. Only the store's index is read (its refs and image records: the light
part of the image layer, never the sandbox engine), so the worker process stays small.
The launcher, which leases the image for the job, still refuses one removed since.
"""

from __future__ import annotations

import functools

from sandbox.images import config as images_config
from sandbox.images.errors import BadReference, ImageError, ImageNotFound
from sandbox.images.runtime import image_argv
from sandbox.images.store import Store
from sandbox.models import Job
from worker.protocol import ProtocolError


def check_image(job: Job) -> None:
    """Raise invalid_job if the job's image is not in the store or names no command."""
    if job.image == "host":
        return
    try:
        _, record = _store().lookup(job.image)
    except (ImageNotFound, BadReference) as exc:
        raise ProtocolError("invalid_job", str(exc), field="image") from None
    except (ImageError, OSError):
        return  # the store itself is broken, not the job: its launcher reports that (internal_error)
    if not image_argv(record.config, job.cmd):
        raise ProtocolError("invalid_job", f"no command given and image {job.image} has no Entrypoint or Cmd",
                            field="cmd")


@functools.cache
def _store() -> Store:
    """The store the launchers lease images from (the same configuration, read once)."""
    return Store(images_config.load().store)
