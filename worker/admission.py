"""What the worker checks of a job before it queues it, beyond the protocol's validation.

A job naming an image that is not in the store (or one that gives it no command) is the
client's mistake: it is answered ``invalid_job`` at once, as a bad limit is, instead of
reaching a slot. Only the store's index is read (its refs and image records: the light
part of the image layer), so the worker adds nothing heavy to its process. The launcher,
which leases the image for the job, still refuses one removed since. The same lookup
tells the worker's direct hand-over which image a reference names now.

The worker's process stays light: a job's profile is checked by name, and the profile
itself is parsed (with the seccomp compiler) only by the launchers.
"""

from __future__ import annotations

import functools
import os

from sandbox.images import config as images_config
from sandbox.images.errors import BadReference, ImageError, ImageNotFound
from sandbox.images.runtime import image_argv
from sandbox.images.store import ImageRecord, Store
from sandbox.models import Job
from sandbox.profile_names import builtin_profiles, unknown_profile
from worker.protocol import ProtocolError


def admit(job: Job, *, field_prefix: str = "") -> None:
    """Raise invalid_job for a job the worker can tell it cannot run; its ``field`` after
    ``field_prefix`` (``jobs.1.`` for a group's member). (Its output limit, which may come
    from its profile, is checked by its launcher, which has the profile parsed:
    ``launcher_channel.check_output_limit``.)"""
    try:
        if job.profile not in builtin_profiles():  # a worker runs only its own profiles, never a file
            exc = unknown_profile(job.profile, files_allowed=False)
            raise ProtocolError("invalid_job", exc.message, field=exc.field)
        if job.image != "host":
            _check_image(job)
    except ProtocolError as exc:
        exc.field = f"{field_prefix}{exc.field}" if exc.field else exc.field
        raise


def _check_image(job: Job) -> None:
    try:
        config = stored_image(job.image).config
    except (ImageNotFound, BadReference) as exc:
        raise ProtocolError("invalid_job", str(exc), field="image") from None
    except (ImageError, OSError, ValueError, KeyError, TypeError):
        # The store is unreadable or a record in it is broken: no fault of the job, and
        # not one to end the worker with; its launcher reports it (internal_error).
        return
    if not image_argv(config, job.cmd):
        raise ProtocolError("invalid_job", f"no command given and image {job.image} has no Entrypoint or Cmd",
                            field="cmd")


# Images found, by (reference, the refs directory's mtime): a lookup reads every ref and
# a record, more than the rest of a submit costs, and runs in the worker's event loop. A
# ref added, moved or removed changes the directory's mtime. A change that the mtime's
# granularity hides (a second one within a tick of the filesystem's clock) leaves the
# image found before it: a job then reaches its launcher, which refuses it if its image
# has gone, or one of that image's warm sandboxes (worker/handover.py), as it would
# have had it come just before the change.
_found: dict[tuple[str, int], ImageRecord] = {}
MAX_FOUND = 1024


def stored_image(name: str) -> ImageRecord:
    """The record of the stored image ``name`` names (raises ImageNotFound, BadReference)."""
    store = _store()
    key = (name, os.stat(store.root / "refs").st_mtime_ns)
    record = _found.get(key)
    if record is None:
        _, record = store.lookup(name)
        if len(_found) >= MAX_FOUND:
            _found.clear()
        _found[key] = record
    return record


def current_image(name: str) -> ImageRecord | None:
    """``stored_image``, or None where ``name`` names none, or the store cannot be read."""
    try:
        return stored_image(name)
    except (ImageError, OSError, ValueError, KeyError, TypeError):
        return None


@functools.cache
def _store() -> Store:
    """The store the launchers lease images from (the same configuration, read once)."""
    return Store(images_config.load().store)

