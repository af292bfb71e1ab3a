"""A new stored image from a parent image, layers written here and a config.

What ``sandbox build`` ends with, and what ``sandbox commit`` of a session's upper
directory is (``commit_upper``). The new image is stored the way a pull stores one
(``pull.install``): its blobs, then its layers unpacked from those blobs by the same
hostile-tar rules - so a built layer is exactly what pulling it back would give - then
its record. Setting a reference is the caller's, last: until then the image is
unreferenced content that gc may sweep, never half an image under a name.

The image config is the parent's whole config (its ``history``, ``os``,
``architecture``, ...) with the job-facing ``config`` replaced, the new layers' diff ids
appended to ``rootfs`` and one ``history`` entry per step; the manifest is an OCI
manifest naming the parent's layer blobs as they are stored and the new ones. The
caller holds ``store.shared()`` while it composes, so gc cannot sweep a layer between
its writing and the record that names it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.child import send
from sandbox.id_namespace import run_as_range_root, setup_errors
from sandbox.ids import plan_ids
from sandbox.images.config import ImagesConfig
from sandbox.images.errors import ImageError
from sandbox.images.layer_writer import LAYER_MEDIA_TYPE, LayerBlob, LayerError, LayerTar, add_upper, write_upper
from sandbox.images.pull import NoProgress, host_platform, install
from sandbox.images.registry import OCI_MANIFEST
from sandbox.images.store import ImageRecord, LayerRecord, Store, remove_tree

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclass(frozen=True)
class Step:
    """One history entry: what made it, and the layer it added (None: config only)."""

    created_by: str
    layer: LayerRecord | None


def parent_config(store: Store, parent: ImageRecord | None) -> dict[str, Any]:
    """The parent's whole image config (``scratch``, None: an empty one for this
    machine's platform)."""
    if parent is None:
        os_name, _, architecture = host_platform().partition("/")
        return {"os": os_name, "architecture": architecture.partition("/")[0], "config": {},
                "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    config: dict[str, Any] = json.loads(store.read_blob(parent.id))
    return config


def adopt_layer(store: Store, blob: LayerBlob) -> LayerRecord:
    """Move a written layer blob into the store (its chain id is filled in by
    ``compose``, which knows what is below it)."""
    os.replace(blob.path, store.blob_path(blob.digest))
    return LayerRecord(blob.digest, blob.diff_id, "", blob.size, LAYER_MEDIA_TYPE)


def compose(store: Store, images: ImagesConfig, parent: ImageRecord | None, steps: list[Step],
            config: dict[str, Any]) -> ImageRecord:
    """Store the image of ``parent`` plus ``steps`` with the job-facing ``config``
    (Env, Cmd, ...); its record. Every layer of ``steps`` is in the store's blobs."""
    image_config = parent_config(store, parent)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    image_config["created"] = now
    image_config["config"] = config
    rootfs = image_config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    history = image_config.setdefault("history", [])
    layers = list(parent.layers) if parent is not None else []
    for step in steps:
        entry: dict[str, Any] = {"created": now, "created_by": step.created_by}
        if step.layer is None:
            entry["empty_layer"] = True
        else:
            rootfs["diff_ids"].append(step.layer.diff_id)
            layers.append(step.layer)
        history.append(entry)
    config_raw = json.dumps(image_config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": store.put_blob(config_raw), "size": len(config_raw)},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in layers],
    }
    manifest_raw = json.dumps(manifest, sort_keys=True).encode()
    return install(store, images, manifest_raw, config_raw, _no_fetch, NoProgress(),
                   parent.platform if parent is not None else None)


def _no_fetch(digest: str, partial: Path, advance: Callable[[int], None]) -> None:
    """Every blob of a composed image is stored before it is installed."""
    raise ImageError(f"blob {digest} of a composed image is missing from the store")


def commit_upper(store: Store, images: ImagesConfig, upper_fd: int, parent: ImageRecord | None,
                 created_by: str, config: dict[str, Any] | None = None) -> ImageRecord:
    """A new stored image: ``parent`` with the overlay upper directory ``upper_fd`` as
    one more layer, the parent's config unless ``config`` is given. Unreferenced until
    the caller sets a reference.

    The upper is read as root of the supervisor's id range (``id_namespace``): what a
    job left there belongs to its subordinate id, modes as it left them. Without a
    range every job ran as the supervisor, whose own files these are: it reads them as
    itself."""
    with store.shared():
        temp = store.temp_dir("commit-")
        try:
            layer = adopt_layer(store, write_upper_as_range_root(upper_fd, temp / "layer"))
        finally:
            remove_tree(temp)
        job_config = config if config is not None else dict(parent.config if parent is not None else {})
        return compose(store, images, parent, [Step(created_by, layer)], job_config)


def write_upper_as_range_root(upper_fd: int, destination: Path) -> LayerBlob:
    """``layer_writer.write_upper`` from a process that can read every id's files."""
    if plan_ids().jobs is None:
        return write_upper(upper_fd, destination)
    with open(destination, "xb") as out:
        messages = run_as_range_root(lambda report: _write_and_report(report, upper_fd, out.fileno()))
    errors = setup_errors(messages)
    if errors or not messages:
        raise LayerError(errors[0] if errors else "the layer writer died")
    written = messages[-1]
    return LayerBlob(destination, written["digest"], written["diff_id"], int(written["size"]))


def _write_and_report(report: int, upper_fd: int, out_fd: int) -> None:
    with open(out_fd, "wb", closefd=False) as out:
        layer = LayerTar(out)
        add_upper(layer, upper_fd)
        digest, diff_id, size = layer.finish()
    send(report, "layer", digest=digest, diff_id=diff_id, size=size)
