"""``sandbox push``: a stored image to a registry, as it is stored - the same manifest
bytes, so the same digest, and the blobs the manifest names - with the auth and the
insecure hosts of pull (docs/images.md). Mirrors are for pulling: a push goes to the
registry the destination names.

Blobs the registry holds already are skipped (a HEAD each), so pushing an image built on a
base the registry has sends only the new layers; the manifest goes last, once every blob
it names is there, so a reader never finds a manifest whose blobs are missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sandbox.images.config import ImagesConfig
from sandbox.images.errors import ImageError
from sandbox.images.reference import Reference, parse
from sandbox.images.registry import OCI_MANIFEST, RegistryClient
from sandbox.images.store import Store


@dataclass
class PushReport:
    reference: Reference
    digest: str  # the manifest's, as the registry now serves it
    uploaded: int  # blobs sent
    skipped: int  # blobs the registry had


def push(store: Store, config: ImagesConfig, source: str, destination: str | None = None) -> PushReport:
    """Push the stored image ``source`` to ``destination`` (default: the reference it was
    found by, which must then name a registry and a tag)."""
    with store.shared():
        found, record = store.lookup(source)
        if destination is None and found.startswith("sha256:"):
            raise ImageError(f"{source} is an image id: name where to push it (sandbox push ID REGISTRY/NAME:TAG)")
        target = parse(destination or found)
        if target.digest is not None:
            raise ImageError(f"push to a tag, not a digest: {target}")
        manifest_raw = store.read_blob(record.manifest_digest)
        media_type = json.loads(manifest_raw).get("mediaType") or OCI_MANIFEST
        blobs = [*(layer.digest for layer in record.layers), record.id]
        client = RegistryClient(config)
        uploaded = skipped = 0
        try:
            for digest in blobs:
                if client.has_blob(target, digest):
                    skipped += 1
                    continue
                client.upload_blob(target, digest, store.blob_path(digest))
                uploaded += 1
            digest = client.put_manifest(target, media_type, manifest_raw)
        finally:
            client.close()
    return PushReport(target, digest, uploaded, skipped)
