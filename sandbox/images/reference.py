"""Image references with Docker's normalisation rules.

``python`` -> ``docker.io/library/python:latest``; the first component is a registry
host only if it contains a dot or a colon or is ``localhost`` (that is how Docker tells
``localhost:5000/x`` and ``judge/python`` apart). A digest (``@sha256:...``) pins the
content; a tag alongside it is kept for display only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from sandbox.images.errors import BadReference

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
# Where docker.io's API actually lives.
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host serving the registry API (docker.io is an alias)."""
        return DOCKER_HUB_API if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def version(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@functools.lru_cache(maxsize=256)
def parse(text: str) -> Reference:
    """Parse and normalise a reference; raises BadReference naming the problem. Kept
    for the names last parsed: a job on an image parses its name at each lease."""
    if not text or len(text) > 512 or text != text.strip():
        raise BadReference(f"invalid image reference {text!r}")
    remainder, digest = text, None
    if "@" in text:
        remainder, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise BadReference(f"invalid digest in {text!r} (expected sha256:<64 hex>)")
    tag = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.match(tag):
            raise BadReference(f"invalid tag {tag!r} in {text!r}")
    first, sep, rest = remainder.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.match(first):
            raise BadReference(f"invalid registry host {first!r} in {text!r}")
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, remainder
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    components = path.split("/")
    if not path or not all(_COMPONENT.match(part) for part in components):
        raise BadReference(f"invalid repository name {path!r} in {text!r} (lowercase, digits, . _ -)")
    if registry == DEFAULT_REGISTRY and len(components) == 1:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)
