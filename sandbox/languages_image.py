"""Build the language image from profiles/languages/image.toml with mmdebstrap and
import it into the image store (``sandbox languages build``).

No public registry is reachable where judges run, so the image is made from Debian's
packages. The root filesystem tar is cached outside the checkout
(``$SANDBOX_IMAGE_CACHE``, default ~/.cache/sandbox-images) under the recipe's hash: a
repeated build on the same machine only imports (or does nothing if the store has it).
The tar becomes a one-layer OCI layout (uncompressed: the layer is hashed once, never
recompressed) that goes through the ordinary, hostile-input ``sandbox import``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox.errors import SetupError
from sandbox.languages import LANGUAGES_DIR, image_present, image_reference

_LAYER = "application/vnd.oci.image.layer.v1.tar"


def cache_dir() -> Path:
    path = Path(os.environ.get("SANDBOX_IMAGE_CACHE") or Path.home() / ".cache" / "sandbox-images")
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(say: Callable[[str], None] = print) -> str:
    """Make sure the store holds the language image; returns its reference."""
    ref = image_reference()
    if image_present():
        say(f"{ref}: already in the store")
        return ref
    recipe = tomllib.loads((LANGUAGES_DIR / "image.toml").read_text())
    rootfs = cache_dir() / f"{ref.rsplit(':', 1)[1]}.tar"
    if not rootfs.exists():
        say(f"{ref}: building the root with mmdebstrap ({', '.join(recipe['packages'])})")
        partial = rootfs.with_suffix(f".{os.getpid()}.partial")
        done = subprocess.run(
            ["mmdebstrap", "--quiet", "--mode=unshare", f"--variant={recipe['variant']}",
             "--include=" + ",".join(recipe["packages"]), "--format=tar", recipe["suite"], str(partial)],
            capture_output=True, text=True, env={**os.environ, "TMPDIR": str(cache_dir())},
        )
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise SetupError(f"mmdebstrap failed: {done.stderr[-2000:]}")
        os.rename(partial, rootfs)
    say(f"{ref}: importing {rootfs} ({rootfs.stat().st_size >> 20} MiB)")
    _import(rootfs, ref, recipe["env"])
    return ref


def _import(rootfs: Path, ref: str, env: list[str]) -> None:
    from sandbox.images import config as images_config
    from sandbox.images.importer import import_image
    from sandbox.images.store import Store

    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="layout-") as temp:
        layout = Path(temp)
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_digest = _file_digest(rootfs)
        os.link(rootfs, blobs / layer_digest)  # same file system: no 1.7 GB copy
        config = {"architecture": "amd64", "os": "linux", "config": {"Env": env, "WorkingDir": "/work"},
                  "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]}}
        config_desc = _put(blobs, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
        layer_desc = {"mediaType": _LAYER, "digest": f"sha256:{layer_digest}", "size": rootfs.stat().st_size}
        manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = _put(blobs, json.dumps(manifest).encode(), manifest["mediaType"])
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
        config_ = images_config.load()
        import_image(Store(config_.store), config_, layout, ref)


def _put(blobs: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


