"""``sandbox import``: an OCI image layout directory or a ``docker save`` archive.

Both are untrusted like a registry: every blob is copied into the store while being
hashed and must match its digest; layers then go through the same safe unpack. A
``docker save`` archive (legacy format: ``manifest.json`` + ``<id>.json`` + uncompressed
``layer.tar`` files) gets a synthesised Docker v2 manifest; a newer one that carries an
OCI layout (``index.json``) is read as such, straight from the tar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from sandbox.images import digests
from sandbox.images.config import ImagesConfig
from sandbox.images.errors import DigestMismatch, ImageError
from sandbox.images.pull import NoProgress, choose_platform, host_platform, install
from sandbox.images.reference import Reference, parse
from sandbox.images.registry import DOCKER_MANIFEST, INDEX_TYPES, MAX_MANIFEST_BYTES
from sandbox.images.store import ImageRecord, Store

_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

# name inside the source -> readable stream, or None when absent
Opener = Callable[[str], IO[bytes] | None]


def import_image(
    store: Store, config: ImagesConfig, source: Path, name: str, platform: str | None = None,
) -> tuple[Reference, ImageRecord]:
    ref = parse(name)
    # One reader at a time: a tarfile's member streams share one file position.
    config = dataclasses.replace(config, max_parallel=1)
    try:
        directory = source.is_dir()
        archive_file = not directory and tarfile.is_tarfile(source)
    except OSError as exc:
        raise ImageError(f"cannot read {source}: {exc.strerror}") from None
    if directory:
        record = _from_layout(store, config, lambda p: _open_in_dir(source, p), platform)
    elif archive_file:
        with tarfile.open(source, "r:") as archive:
            members = {m.name.removeprefix("./"): m for m in archive.getmembers() if m.isfile()}

            def open_member(path: str) -> IO[bytes] | None:
                member = members.get(path)
                return archive.extractfile(member) if member is not None else None

            if "index.json" in members:
                record = _from_layout(store, config, open_member, platform)
            else:
                record = _from_docker_save(store, config, open_member)
    else:
        raise ImageError(f"{source} is neither an OCI layout directory nor a docker save archive")
    store.set_ref(ref, record.id)
    return ref, record


def _open_in_dir(root: Path, path: str) -> IO[bytes] | None:
    try:  # O_NOFOLLOW on the last component; blob names are validated digests
        return os.fdopen(os.open(root / path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
    except FileNotFoundError:
        return None


def _read_small(opener: Opener, path: str) -> bytes:
    stream = opener(path)
    if stream is None:
        raise ImageError(f"{path} missing from the image")
    with stream:
        data = stream.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ImageError(f"{path} is too large")
    return data


def _blob_path(digest: str) -> str:
    return f"blobs/sha256/{digests.hex_of(digest)}"


def _copy_fetch(opener: Opener, paths: dict[str, str]) -> Callable[[str, Path, Callable[[int], None]], None]:
    def fetch(digest: str, partial: Path, advance: Callable[[int], None]) -> None:
        stream = opener(paths.get(digest, _blob_path(digest)))
        if stream is None:
            raise ImageError(f"blob {digest} missing from the image")
        hasher = hashlib.sha256()
        with stream, open(partial, "wb") as out:
            while chunk := stream.read(1 << 20):
                hasher.update(chunk)
                out.write(chunk)
                advance(len(chunk))
        if "sha256:" + hasher.hexdigest() != digest:
            partial.unlink()
            raise DigestMismatch(f"blob {digest} of the imported image does not match its digest")

    return fetch


def _from_layout(store: Store, config: ImagesConfig, opener: Opener, platform: str | None) -> ImageRecord:
    index = json.loads(_read_small(opener, "index.json"))
    entries = index.get("manifests") or []
    if not entries:
        raise ImageError("index.json lists no manifest")
    entry: dict[str, Any] = entries[0]
    with store.shared():
        while True:
            raw = _read_small(opener, _blob_path(digests.check(entry.get("digest"))))
            digests.verify_bytes(raw, entry["digest"], "manifest")
            manifest = json.loads(raw)
            if entry.get("mediaType") not in INDEX_TYPES and "manifests" not in manifest:
                break
            wanted = choose_platform(manifest, platform or config.platform or host_platform())
            entry = {"digest": wanted}
        config_digest = digests.check(manifest["config"]["digest"])
        config_raw = _read_small(opener, _blob_path(config_digest))
        digests.verify_bytes(config_raw, config_digest, "image config")
        return install(store, config, raw, config_raw, _copy_fetch(opener, {}), NoProgress(), platform)


def _from_docker_save(store: Store, config: ImagesConfig, opener: Opener) -> ImageRecord:
    entries = json.loads(_read_small(opener, "manifest.json"))
    if not isinstance(entries, list) or not entries:
        raise ImageError("manifest.json of the archive lists no image")
    entry = entries[0]
    config_path = entry["Config"]
    config_raw = _read_small(opener, config_path)
    diff_ids = json.loads(config_raw)["rootfs"]["diff_ids"]
    layer_paths = entry["Layers"]
    if len(layer_paths) != len(diff_ids):
        raise ImageError("archive's layer list does not match its config")
    # Legacy archives hold uncompressed layers: the blob digest is the diff_id.
    paths = {digests.check(d): p for d, p in zip(diff_ids, layer_paths, strict=True)}
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": _DOCKER_CONFIG, "digest": digests.of_bytes(config_raw), "size": len(config_raw)},
        "layers": [{"mediaType": _DOCKER_LAYER, "digest": d, "size": 0} for d in diff_ids],
    }
    raw = json.dumps(manifest, sort_keys=True).encode()
    with store.shared():
        return install(store, config, raw, config_raw, _copy_fetch(opener, paths), NoProgress())
