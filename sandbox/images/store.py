"""The content-addressed image store on disk.

Layout under the store root::

    blobs/sha256/<hex>        manifests, configs, compressed layers (verified before publish)
    partial/<hex>             a blob being downloaded (kept for a Range resume)
    layers/<chain hex>/       one unpacked layer (its own diff only), shared between images
    images/<config hex>.json  image record: manifests, layers, config
    refs/<quoted name>        tag or digest reference -> image id
    leases/<config hex>       a running job holds a shared flock here
    locks/                    store.lock and one lock file per blob or layer key
    build-cache/<key>         a build step's key -> the layer blob it wrote (``sandbox.build.cache``)
    tmp/                      unique temp names; never read, swept by gc

Publishing is always temp + rename inside one filesystem, so a crash leaves either the
old state or the new one, never half a layer. Locking (flock): pulls, imports and lease
acquisition hold ``store.lock`` shared; gc holds it exclusive. Per-key locks make one
download per blob and one unpack per layer even across racing processes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sandbox.images import digests
from sandbox.images.errors import AmbiguousImage, ImageError, ImageNotFound
from sandbox.images.reference import Reference, parse
from sandbox.locks import lock_is_held


@dataclass
class LayerRecord:
    digest: str  # of the blob as distributed (compressed)
    diff_id: str  # of the uncompressed tar
    chain_id: str
    size: int
    media_type: str


@dataclass
class ImageRecord:
    id: str  # the config digest, like docker's image id
    manifest_digest: str
    layers: list[LayerRecord]
    config: dict[str, Any]  # the image config's "config" object (Env, Cmd, ...)
    platform: str
    created: float = field(default_factory=time.time)

    @property
    def blobs(self) -> set[str]:
        return {self.id, self.manifest_digest, *(layer.digest for layer in self.layers)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        data = dict(data)
        data["layers"] = [LayerRecord(**layer) for layer in data["layers"]]
        return cls(**data)


@dataclass
class GcReport:
    images: int = 0
    layers: int = 0
    blobs: int = 0
    bytes: int = 0


STORE_DIRECTORIES = ("blobs/sha256", "partial", "layers", "images", "refs", "leases", "locks", "tmp", "build-cache")
# Store roots whose directories this process has made or found: a launcher opens the
# store for every job on an image, and nine stats were a sixth of that job's lease.
_laid_out: set[str] = set()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # Its paths as text, for what a job's lease reads: joining strings costs a
        # fraction of joining Paths, and a lease is on the job's path.
        self._root_text = os.fspath(root)
        if str(root) in _laid_out:
            return
        # Checked before made: a stat is cheaper than a mkdir that fails.
        for sub in STORE_DIRECTORIES:
            path = os.path.join(root, sub)
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o700, exist_ok=True)
        _laid_out.add(str(root))

    # ---- locking -------------------------------------------------------------------
    @contextmanager
    def _flock(self, path: str | Path, mode: int) -> Iterator[int]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield fd
        finally:
            os.close(fd)

    def shared(self) -> Any:
        """Held by pulls, imports and lease takers: gc waits for them."""
        return self._flock(self._store_lock(), fcntl.LOCK_SH)

    def exclusive(self) -> Any:
        return self._flock(self._store_lock(), fcntl.LOCK_EX)

    def _store_lock(self) -> str:
        return os.path.join(self._root_text, "locks/store.lock")

    def key_lock(self, key: str) -> Any:
        """One holder per blob/layer key at a time, across threads and processes
        (flock belongs to the open file description, so separate opens conflict)."""
        return self._flock(self.root / "locks" / f"{key}.lock", fcntl.LOCK_EX)

    # ---- temp + publish ------------------------------------------------------------
    def temp_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root / "tmp"))

    def _write_atomic(self, path: Path, data: bytes) -> None:
        fd, temp = tempfile.mkstemp(prefix=path.name + ".", dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temp, path)
        except BaseException:
            _unlink_quiet(temp)
            raise

    # ---- blobs ---------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs/sha256" / digests.hex_of(digest)

    def partial_path(self, digest: str) -> Path:
        return self.root / "partial" / digests.hex_of(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def publish_partial(self, digest: str) -> None:
        """The partial file was verified: make it the blob (caller holds the key lock)."""
        partial = self.partial_path(digest)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(partial, self.blob_path(digest))

    def put_blob(self, data: bytes, digest: str | None = None) -> str:
        digest = digest or digests.of_bytes(data)
        digests.verify_bytes(data, digest, "blob")
        if not self.has_blob(digest):
            self._write_atomic(self.blob_path(digest), data)
        return digest

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    # ---- layers --------------------------------------------------------------------
    def layer_path(self, chain_id: str) -> Path:
        return Path(self.layer_dir(chain_id))

    def layer_dir(self, chain_id: str) -> str:
        return os.path.join(self._root_text, "layers", digests.hex_of(chain_id))

    def has_layer(self, chain_id: str) -> bool:
        return self.layer_path(chain_id).is_dir()

    def publish_layer(self, temp: Path, chain_id: str) -> None:
        target = self.layer_path(chain_id)
        try:
            os.rename(temp, target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            remove_tree(temp)  # someone else published the same content first

    # ---- records and refs ----------------------------------------------------------
    def write_record(self, record: ImageRecord) -> None:
        path = self.root / "images" / f"{digests.hex_of(record.id)}.json"
        self._write_atomic(path, json.dumps(asdict(record), sort_keys=True).encode())

    def read_record(self, image_id: str) -> ImageRecord:
        path = os.path.join(self._root_text, "images", f"{digests.hex_of(image_id)}.json")
        try:
            with open(path, "rb") as record:
                return ImageRecord.from_json(json.loads(record.read()))
        except FileNotFoundError:
            raise ImageNotFound(f"no image {image_id} in the store") from None

    def records(self) -> list[ImageRecord]:
        found = []
        for path in sorted((self.root / "images").glob("*.json")):
            try:
                found.append(ImageRecord.from_json(json.loads(path.read_text())))
            except FileNotFoundError:
                continue  # removed by a concurrent gc
        return found

    def set_ref(self, ref: Reference, image_id: str) -> None:
        self._write_atomic(self._ref_path(str(ref)), json.dumps({"image": image_id}).encode())

    def refs(self) -> dict[str, str]:
        """name -> image id, for every tag and digest reference."""
        result = {}
        with os.scandir(os.path.join(self._root_text, "refs")) as entries:
            for entry in entries:
                try:
                    with open(entry.path, "rb") as ref:
                        result[urllib.parse.unquote(entry.name)] = json.loads(ref.read())["image"]
                except FileNotFoundError:
                    continue
        return result

    def remove_ref(self, name: str) -> None:
        self._ref_path(name).unlink()

    def _ref_path(self, name: str) -> Path:
        return Path(self._ref_file(name))

    def _ref_file(self, name: str) -> str:
        return os.path.join(self._root_text, "refs", urllib.parse.quote(name, safe=""))

    def lookup(self, text: str) -> tuple[str, ImageRecord]:
        """Find a local image: by id (or a 12+ hex prefix), by exact normalised
        reference, or - when no registry was written - by repository and tag in any
        registry, if that is unambiguous. Returns (matched ref name, record)."""
        bare = text.removeprefix("sha256:")
        is_id = len(bare) >= 12 and all(c in "0123456789abcdef" for c in bare)
        if not is_id:  # the common case, a reference as pulled: one file, not every ref
            name = str(parse(text))
            try:
                with open(self._ref_file(name), "rb") as ref:
                    image = json.loads(ref.read())["image"]
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENAMETOOLONG):  # (a name past any ref file's: none)
                    raise
            else:
                return name, self.read_record(image)
        refs = self.refs()
        if is_id:
            ids = {image for image in {*refs.values(), *(r.id for r in self.records())} if image[7:].startswith(bare)}
            if len(ids) == 1:
                image = ids.pop()
                return image, self.read_record(image)
        wanted = parse(text)
        if str(wanted) in refs:
            return str(wanted), self.read_record(refs[str(wanted)])
        candidates = []
        for name, image in refs.items():
            have = parse(name)
            same_repo = have.repository in (wanted.repository, wanted.repository.removeprefix("library/"))
            explicit_registry = text.split("/", 1)[0] == wanted.registry
            same_tag = same_repo and not explicit_registry and have.tag == wanted.tag and have.digest == wanted.digest
            same_digest = wanted.digest and have.name == wanted.name and self._manifest_of(image) == wanted.digest
            if same_tag or same_digest:
                candidates.append((name, image))
        if len({image for _, image in candidates}) == 1:
            return candidates[0][0], self.read_record(candidates[0][1])
        if candidates:
            names = ", ".join(sorted(name for name, _ in candidates))
            raise AmbiguousImage(f"{text!r} is ambiguous: {names}")
        raise ImageNotFound(f"no image {text!r} in the store (sandbox pull or sandbox import it first)")

    def _manifest_of(self, image_id: str) -> str | None:
        try:
            return self.read_record(image_id).manifest_digest
        except ImageNotFound:
            return None

    # ---- leases and gc ---------------------------------------------------------------
    def lease(self, image_id: str) -> int:
        """Mark an image as in use by a running job: returns an fd holding a shared
        flock; closing it ends the lease. Take it under ``shared()`` so gc cannot slip
        between finding the image and leasing it."""
        fd = os.open(os.path.join(self._root_text, "leases", digests.hex_of(image_id)),
                     os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def _leased(self, hex_id: str) -> bool:
        return lock_is_held(self.root / "leases" / hex_id)

    def gc(self) -> GcReport:
        """Mark from refs and leases, sweep the rest. Holds the store lock exclusively,
        so no pull is half-way (their temp and partial files can go too)."""
        report = GcReport()
        with self.exclusive():
            live_ids = set(self.refs().values())
            live_ids |= {r.id for r in self.records() if self._leased(digests.hex_of(r.id))}
            live_blobs: set[str] = set()
            live_layers: set[str] = set()
            for record in self.records():
                if record.id in live_ids:
                    live_blobs |= {digests.hex_of(d) for d in record.blobs}
                    live_layers |= {digests.hex_of(layer.chain_id) for layer in record.layers}
                else:
                    (self.root / "images" / f"{digests.hex_of(record.id)}.json").unlink()
                    report.images += 1
            for path in (self.root / "layers").iterdir():
                if path.name not in live_layers:
                    remove_tree(path)
                    report.layers += 1
            for path in (self.root / "blobs/sha256").iterdir():
                if path.name not in live_blobs:
                    report.bytes += path.stat().st_size
                    path.unlink()
                    report.blobs += 1
            for path in (self.root / "build-cache").iterdir():
                if _cached_blob(path) not in live_blobs:
                    path.unlink()
            for sub in ("tmp", "partial"):
                for path in (self.root / sub).iterdir():
                    remove_tree(path)
            for path in (self.root / "leases").iterdir():
                if path.name + ".json" not in {p.name for p in (self.root / "images").iterdir()}:
                    path.unlink()
        return report


def remove_tree(path: Path) -> None:
    """rmtree that also removes what a layer made unwritable (directories with mode
    0o555 or 0): make every directory owner-accessible top-down, then delete."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    stack = [str(path)]
    while stack:
        directory = stack.pop()
        os.chmod(directory, 0o700)
        with os.scandir(directory) as entries:
            stack.extend(entry.path for entry in entries if entry.is_dir(follow_symlinks=False))
    shutil.rmtree(path)


def _cached_blob(path: Path) -> str:
    """The hex digest of the layer blob a build cache entry names ("" if unreadable)."""
    try:
        return digests.hex_of(json.loads(path.read_text())["digest"])
    except (OSError, ValueError, KeyError, TypeError, ImageError):
        return ""


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
