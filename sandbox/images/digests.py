"""Digests: validation, streaming verification, and the chain id of a layer stack."""

from __future__ import annotations

import hashlib
import re

from sandbox.images.errors import DigestMismatch, ImageError

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def check(digest: object) -> str:
    """A digest from untrusted JSON becomes a path component later: validate strictly."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageError(f"unsupported or malformed digest {digest!r} (only sha256 is accepted)")
    return digest


def hex_of(digest: str) -> str:
    return check(digest).split(":", 1)[1]


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_bytes(data: bytes, expected: str, what: str) -> None:
    actual = of_bytes(data)
    if actual != expected:
        raise DigestMismatch(f"{what}: expected {expected}, got {actual}")


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: the id of a layer together with everything below it."""
    chain: list[str] = []
    for diff_id in diff_ids:
        check(diff_id)
        chain.append(diff_id if not chain else of_bytes(f"{chain[-1]} {diff_id}".encode()))
    return chain
