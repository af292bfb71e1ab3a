"""The build cache: a step's key -> the layer it wrote, in the store's ``build-cache/``.

A key is the hash of what decides a step's layer: the chain id of the layers below it,
the instruction as it reads once its variables are replaced, where it writes, and for
COPY and ADD the content of their sources (``layer_writer.ContentHash``: names, modes,
bytes, link targets - not times). A hit is used only while the store still holds the
layer's blob (gc sweeps unreferenced blobs, then the entries naming them); the layer
directory is unpacked again from it if gc took only that. Entries are written temp +
rename, so a crashed build leaves a whole entry or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from sandbox.images import digests
from sandbox.images.store import LayerRecord, Store

CACHE_DIR = "build-cache"


def step_key(*parts: str) -> str:
    """The key of a step made of ``parts`` (each one field: no field can run into the
    next)."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class BuildCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.directory = store.root / CACHE_DIR

    def get(self, key: str) -> LayerRecord | None:
        try:
            entry = json.loads((self.directory / key).read_text())
            layer = LayerRecord(digests.check(entry["digest"]), digests.check(entry["diff_id"]), "",
                                int(entry["size"]), str(entry["media_type"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return layer if self.store.has_blob(layer.digest) else None

    def put(self, key: str, layer: LayerRecord) -> None:
        entry = {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size, "media_type": layer.media_type}
        fd, temp = tempfile.mkstemp(prefix="cache-", dir=self.store.root / "tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(entry, handle)
        os.replace(temp, self.directory / key)
