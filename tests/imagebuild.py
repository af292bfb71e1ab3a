"""Build OCI images for the tests from plain tar entries: no external builder, so a test
can say exactly which bytes (hostile or not) a layer holds."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ls", "cat", "echo", "id", "stat", "readlink", "touch", "mkdir", "rm", "head", "wc", "env", "pwd",
           "sleep", "true", "test", "find", "printf", "mknod", "ln", "grep", "dd")


@dataclass
class Entry:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int | None = None  # 0o755 for directories, else 0o644
    linkname: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0


def layer_tar(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.kind
            info.mode = entry.mode if entry.mode is not None else (0o755 if entry.kind == tarfile.DIRTYPE else 0o644)
            info.linkname = entry.linkname
            info.mtime = 1_700_000_000
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs.items()}
            info.size = len(entry.data) if entry.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(entry.data) if info.size else None)
    return out.getvalue()


def busybox_entries(prefix: str = "") -> list[Entry]:
    entries = [Entry(d, tarfile.DIRTYPE, mode=0o755) for d in ("bin", "etc", "tmp", "work")]
    entries.append(Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755))
    entries += [Entry(f"bin/{name}", tarfile.SYMTYPE, linkname="busybox", mode=0o777) for name in APPLETS]
    entries.append(Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"))
    return entries


def compress(raw: bytes, how: str) -> tuple[bytes, str]:
    if how == "gzip":
        return gzip.compress(raw, compresslevel=1, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(raw), "application/vnd.oci.image.layer.v1.tar+zstd"
    return raw, "application/vnd.oci.image.layer.v1.tar"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put(blobs: Path, data: bytes) -> str:
    digest = _digest(data)
    (blobs / digest[7:]).write_bytes(data)
    return digest


def image_manifest(blobs: Path, layers: list[bytes], *, compression: str = "gzip", config: dict | None = None,
                   arch: str = "amd64", diff_ids: list[str] | None = None,
                   history: list[str] | None = None) -> tuple[str, int]:
    """Write config, layers and manifest blobs; returns (manifest digest, size). ``history``:
    a ``created_by`` per layer (tools that build on an image, podman, want one)."""
    descriptors = []
    for raw in layers:
        blob, media_type = compress(raw, compression)
        descriptors.append({"mediaType": media_type, "digest": _put(blobs, blob), "size": len(blob)})
    image_config = {
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin"], "Cmd": ["sh", "-c", "echo default-cmd"], **(config or {})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or [_digest(raw) for raw in layers]},
    }
    if history is not None:
        image_config["history"] = [{"created_by": line} for line in history]
    config_blob = json.dumps(image_config).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _put(blobs, config_blob),
                   "size": len(config_blob)},
        "layers": descriptors,
    }
    raw_manifest = json.dumps(manifest).encode()
    return _put(blobs, raw_manifest), len(raw_manifest)


def oci_layout(path: Path, layers: list[bytes], **kwargs: object) -> Path:
    """A one-image OCI layout directory."""
    return oci_index(path, [dict(layers=layers, **kwargs)])


def oci_index(path: Path, images: list[dict], platforms: list[dict] | None = None) -> Path:
    """An OCI layout; with ``platforms`` the image list becomes a multi-platform index."""
    if path.exists():
        shutil.rmtree(path)
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for number, image in enumerate(images):
        digest, size = image_manifest(blobs, **image)
        entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size}
        if platforms:
            entry["platform"] = platforms[number]
        entries.append(entry)
    if platforms:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
        raw = json.dumps(index).encode()
        entries = [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": _put(blobs, raw), "size": len(raw)}]
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return path


def cache_dir() -> Path:
    """Outside the checkout, so a repeated CI run on the same machine reuses it."""
    path = Path(os.environ.get("SANDBOX_TEST_CACHE") or Path.home() / ".cache" / "sandbox-tests")
    path.mkdir(parents=True, exist_ok=True)
    return path


def debian_python_rootfs() -> Path:
    """A Debian 12 minbase + python3 root as a tar, built once with mmdebstrap (~20-30 s)
    as an unprivileged user (``--mode=unshare``), then cached."""
    target = cache_dir() / "debian12-python3.tar"
    if not target.exists():
        partial = target.with_suffix(f".{os.getpid()}.partial")
        subprocess.run(["mmdebstrap", "--quiet", "--mode=unshare", "--variant=minbase", "--include=python3",
                        "--format=tar", "bookworm", str(partial)], check=True, capture_output=True, timeout=900,
                       env={**os.environ, "TMPDIR": str(cache_dir())})
        os.rename(partial, target)
    return target


def debian_python_layout(path: Path, compression: str = "zstd") -> Path:
    """The cached root as a one-layer OCI image, with a python-ish config."""
    raw = debian_python_rootfs().read_bytes()
    return oci_layout(path, [raw], compression=compression,
                      config={"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["python3"]})
