"""``sandbox save``: a stored image as an OCI image layout in a tar (what ``sandbox
load`` - ``sandbox import`` - and skopeo, podman or docker read back): the stored
manifest, config and layer blobs as they are, so the image keeps its digests.

The archive is written beside its destination and renamed into place, so a save that
fails leaves no half archive under the name.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

from sandbox.images import digests
from sandbox.images.errors import ImageError
from sandbox.images.reference import parse
from sandbox.images.registry import OCI_MANIFEST
from sandbox.images.store import Store

REF_NAME = "org.opencontainers.image.ref.name"


def save(store: Store, source: str, destination: Path) -> str:
    """Write the stored image ``source`` to ``destination``; the manifest's digest."""
    with store.shared():
        found, record = store.lookup(source)
        manifest_raw = store.read_blob(record.manifest_digest)
        media_type = json.loads(manifest_raw).get("mediaType") or OCI_MANIFEST
        descriptor = {"mediaType": media_type, "digest": record.manifest_digest, "size": len(manifest_raw)}
        if not found.startswith("sha256:"):
            descriptor["annotations"] = {REF_NAME: parse(found).tag or "latest"}
        index = {"schemaVersion": 2, "manifests": [descriptor]}
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
        except OSError as exc:
            raise ImageError(f"cannot write {destination}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
                _add(tar, "index.json", json.dumps(index, sort_keys=True).encode())
                for digest in [record.manifest_digest, record.id, *(layer.digest for layer in record.layers)]:
                    info = tarfile.TarInfo(f"blobs/sha256/{digests.hex_of(digest)}")
                    path = store.blob_path(digest)
                    info.size = path.stat().st_size
                    with open(path, "rb") as blob:
                        tar.addfile(info, blob)
            try:
                os.replace(temp, destination)
            except OSError as exc:
                raise ImageError(f"cannot write {destination}: {exc.strerror}") from None
        except BaseException:
            os.unlink(temp)
            raise
    return record.manifest_digest


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
