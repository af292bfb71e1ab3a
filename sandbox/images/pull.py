"""Put an image into the store: from a registry (``pull``) or from local blobs
(``install``, shared with the importer).

Order of publication, each step atomic: blobs (verified) -> unpacked layers (diff_id
verified) -> image record -> reference. A crash in between leaves only unreferenced
content for gc, never a reference to something incomplete. The whole operation holds
the store's shared lock, so gc waits for it; per-blob and per-layer locks make racing
pulls share one download and one unpack.
"""

from __future__ import annotations

import json
import platform as host
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from sandbox.images import digests
from sandbox.images.config import ImagesConfig
from sandbox.images.errors import ImageError, RegistryError, UnpackError
from sandbox.images.reference import Reference, parse
from sandbox.images.registry import INDEX_TYPES, RegistryClient
from sandbox.images.store import ImageRecord, LayerRecord, Store, remove_tree
from sandbox.images.unpack import unpack_layer

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
}
_ARCH = {"x86_64": ("amd64", None), "aarch64": ("arm64", "v8")}

# Downloads a blob into a partial file, reporting bytes as they arrive.
Fetch = Callable[[str, Path, Callable[[int], None]], None]


class Progress(Protocol):
    def start(self, key: str, total: int | None) -> None: ...
    def advance(self, key: str, amount: int) -> None: ...
    def finish(self, key: str) -> None: ...


class NoProgress:
    def start(self, key: str, total: int | None) -> None:
        pass

    def advance(self, key: str, amount: int) -> None:
        pass

    def finish(self, key: str) -> None:
        pass


def host_platform() -> str:
    arch, variant = _ARCH.get(host.machine(), (host.machine(), None))
    return f"linux/{arch}" + (f"/{variant}" if variant else "")


def choose_platform(index: dict[str, Any], wanted: str) -> str:
    """The digest of the manifest for ``wanted`` ("os/arch[/variant]") in an index."""
    os_name, _, rest = wanted.partition("/")
    arch, _, variant = rest.partition("/")
    offered = []
    for entry in index.get("manifests", []):
        plat = entry.get("platform") or {}
        offered.append("/".join(p for p in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if p))
        if plat.get("os") == os_name and plat.get("architecture") == arch:
            if not variant or plat.get("variant") in (None, variant):
                return digests.check(entry.get("digest"))
    raise ImageError(f"no {wanted} image in the index (it offers: {', '.join(offered) or 'nothing'})")


def pull(store: Store, config: ImagesConfig, text: str, *, platform: str | None = None,
         progress: Progress | None = None) -> tuple[Reference, ImageRecord]:
    ref = parse(text)
    client = RegistryClient(config)
    try:
        with store.shared():
            raw, media_type, digest = client.manifest(ref, ref.version)
            manifest = _json(raw, f"manifest of {ref}")
            if media_type in INDEX_TYPES or "manifests" in manifest:
                store.put_blob(raw, digest)
                digest = choose_platform(manifest, platform or config.platform or host_platform())
                raw, media_type, _ = client.manifest(ref, digest)
                manifest = _json(raw, f"manifest of {ref}")
            config_digest = digests.check((manifest.get("config") or {}).get("digest"))
            with store.key_lock(f"blob-{digests.hex_of(config_digest)}"):
                if store.has_blob(config_digest):
                    config_raw = store.read_blob(config_digest)
                else:
                    config_raw = client.small_blob(ref, config_digest)
                    store.put_blob(config_raw, config_digest)

            def fetch(blob: str, partial: Path, advance: Callable[[int], None]) -> None:
                client.fetch_blob(ref, blob, partial, advance)

            record = install(store, config, raw, config_raw, fetch, progress or NoProgress(), platform)
            store.set_ref(ref, record.id)
            return ref, record
    finally:
        client.close()


def install(store: Store, config: ImagesConfig, manifest_raw: bytes, config_raw: bytes, fetch: Fetch,
            progress: Progress, platform: str | None = None) -> ImageRecord:
    """Store manifest and config, make sure every layer is unpacked, write the record.
    The caller holds ``store.shared()`` and then sets the reference."""
    manifest = _json(manifest_raw, "manifest")
    image_config = _json(config_raw, "image config")
    layers = manifest.get("layers")
    if manifest.get("schemaVersion") != 2 or not isinstance(layers, list):
        raise ImageError("unsupported manifest (need schema version 2 with a layer list)")
    diff_ids = (image_config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise ImageError("image config's rootfs.diff_ids does not match the manifest's layers")
    manifest_digest = store.put_blob(manifest_raw)
    config_digest = store.put_blob(config_raw, digests.check(manifest["config"]["digest"]))
    chain = digests.chain_ids(diff_ids)
    records = []
    for layer, diff_id, chain_id in zip(layers, diff_ids, chain, strict=True):
        media_type = layer.get("mediaType", "")
        if media_type not in LAYER_TYPES:
            raise ImageError(f"unsupported layer type {media_type!r} ({layer.get('digest')})")
        digest = digests.check(layer.get("digest"))
        records.append(LayerRecord(digest, diff_id, chain_id, int(layer.get("size", 0)), media_type))
    with ThreadPoolExecutor(max_workers=config.max_parallel) as pool:
        for future in [pool.submit(ensure_layer, store, config, layer, fetch, progress) for layer in records]:
            future.result()
    record = ImageRecord(
        id=config_digest,
        manifest_digest=manifest_digest,
        layers=records,
        config=image_config.get("config") or {},
        platform=platform or f"{image_config.get('os', '?')}/{image_config.get('architecture', '?')}",
    )
    store.write_record(record)
    return record


def ensure_layer(store: Store, config: ImagesConfig, layer: LayerRecord, fetch: Fetch, progress: Progress) -> None:
    if store.has_layer(layer.chain_id):
        return
    with store.key_lock(f"layer-{digests.hex_of(layer.chain_id)}"):
        if store.has_layer(layer.chain_id):
            return  # a racing pull finished it while we waited
        _ensure_blob(store, layer, fetch, progress)
        temp = store.temp_dir("layer-")
        try:
            with open(store.blob_path(layer.digest), "rb") as blob:
                unpack_layer(blob, temp, config.limits, layer.diff_id)
            store.publish_layer(temp, layer.chain_id)
        except UnpackError as exc:
            remove_tree(temp)
            raise UnpackError(f"layer {layer.digest[:19]}: {exc.message}", exc.entry) from exc
        except BaseException:
            remove_tree(temp)
            raise


def _ensure_blob(store: Store, layer: LayerRecord, fetch: Fetch, progress: Progress) -> None:
    with store.key_lock(f"blob-{digests.hex_of(layer.digest)}"):
        if store.has_blob(layer.digest):
            return
        key = layer.digest[7:19]
        progress.start(key, layer.size or None)
        try:
            fetch(layer.digest, store.partial_path(layer.digest), lambda n: progress.advance(key, n))
            store.publish_partial(layer.digest)
        except OSError as exc:
            raise ImageError(f"cannot store blob {layer.digest}: {exc.strerror}") from exc
        progress.finish(key)


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return data
