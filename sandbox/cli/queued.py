"""The queue's errors as the CLI's: one translation for every command that talks to a
Redis stream (``submit --redis``, ``judge --redis``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sandbox.errors import JobError, SandboxError


@contextmanager
def queue_errors(url: str, stream: str) -> Iterator[None]:
    """A refusal of the job itself (``invalid_job``, ``id_conflict``), a malformed URL
    or a stream a cluster cannot hold is the user's error, naming the field; any other
    outcome, or Redis failing, is the queue's."""
    from coredis.exceptions import RedisError

    from worker.queue_client import QueueError

    try:
        yield
    except QueueError as exc:
        if exc.code in ("invalid_job", "id_conflict"):
            raise JobError(exc.message, field=exc.field) from exc
        raise SandboxError(f"queue {stream}: {exc}") from exc
    except ValueError as exc:  # the URL, or a stream a cluster cannot hold
        raise JobError(str(exc), field="redis") from exc
    except (RedisError, OSError) as exc:
        raise SandboxError(f"redis at {url}: {exc}") from exc
