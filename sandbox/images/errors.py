"""Typed errors of the image layer; each message names what was wrong (a reference, a
registry answer, a tar entry) so a user can act on it."""

from __future__ import annotations

from sandbox.errors import SandboxError


class ImageError(SandboxError):
    """Base of the image layer's errors."""


class BadReference(ImageError):
    """An image reference that does not parse."""


class RegistryError(ImageError):
    """A registry refused, failed, or answered something unusable."""


class DigestMismatch(RegistryError):
    """Content did not hash to the digest it was fetched by."""


class ImageNotFound(ImageError):
    """No such image in the local store."""


class AmbiguousImage(ImageNotFound):
    """A short name that matches images of more than one registry: no one image."""


class UnpackError(ImageError):
    """A layer tar is hostile or broken; ``entry`` names the offending member."""

    def __init__(self, message: str, entry: str | None = None) -> None:
        super().__init__(f"{message}: {entry!r}" if entry is not None else message)
        self.entry = entry
        self.message = message
