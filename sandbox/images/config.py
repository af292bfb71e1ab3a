"""Settings of the image layer, from a TOML file and the environment.

File: ``$SANDBOX_IMAGES_CONFIG``, else ``$XDG_CONFIG_HOME/sandbox/images.toml``::

    store = "/srv/sandbox/images"           # default $XDG_DATA_HOME/sandbox/images
    insecure = ["127.0.0.1:5000"]            # plain HTTP allowed only for these hosts
    max_parallel = 4                          # layer downloads at once
    [mirrors]                                 # tried in order, then the registry itself
    "docker.io" = ["mirror.example:5000"]
    [auths."127.0.0.1:5001"]                  # like ~/.docker/config.json
    username = "u"
    password = "p"
    [limits]
    max_layer_entries = 50000
    max_layer_bytes = "8G"

``$SANDBOX_IMAGE_STORE`` overrides ``store`` (tests and CI use it).
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.images.errors import ImageError
from sandbox.units import parse_size

DEFAULT_MAX_ENTRIES = 50_000
DEFAULT_MAX_BYTES = 16 << 30


@dataclass(frozen=True)
class UnpackLimits:
    """Caps for one layer, against decompression bombs and inode floods."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class ImagesConfig:
    store: Path
    insecure: frozenset[str] = frozenset()
    mirrors: dict[str, list[str]] = field(default_factory=dict)
    auths: dict[str, tuple[str, str]] = field(default_factory=dict)
    max_parallel: int = 4
    limits: UnpackLimits = field(default_factory=UnpackLimits)
    platform: str | None = None


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def config_path() -> Path:
    explicit = os.environ.get("SANDBOX_IMAGES_CONFIG")
    return Path(explicit) if explicit else _xdg("XDG_CONFIG_HOME", ".config") / "sandbox" / "images.toml"


# What the settings' file and the store are named by.
_NAMING_VARIABLES = ("SANDBOX_IMAGES_CONFIG", "XDG_CONFIG_HOME", "SANDBOX_IMAGE_STORE", "XDG_DATA_HOME", "HOME")
# The settings last read, by what they were read from: a launcher reads them for every
# job on an image, and parsing a file that has not changed was a fifth of that job's lease.
_loaded: tuple[tuple[Any, ...], ImagesConfig] | None = None


@functools.lru_cache(maxsize=4)
def _config_path_under(environment: tuple[str | None, ...]) -> Path:
    """``config_path()`` where the naming variables have these values (the cache's key
    only): building the path each time was a sixth of a job's lease."""
    return config_path()


def load() -> ImagesConfig:
    global _loaded
    environment = tuple(map(os.environ.get, _NAMING_VARIABLES))
    path = _config_path_under(environment)
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        file_key = None
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc}") from exc
    else:
        file_key = (found.st_dev, found.st_ino, found.st_mtime_ns, found.st_size)
    key = (environment, file_key)
    if _loaded is None or _loaded[0] != key:
        _loaded = (key, _read(path, file_key is not None))
    return _loaded[1]


def _read(path: Path, exists: bool) -> ImagesConfig:
    data: dict[str, Any] = {}
    if exists:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ImageError(f"cannot read {path}: {exc}") from exc
    store = os.environ.get("SANDBOX_IMAGE_STORE") or data.get("store")
    try:
        limits = data.get("limits", {})
        return ImagesConfig(
            store=Path(store) if store else _xdg("XDG_DATA_HOME", ".local/share") / "sandbox" / "images",
            insecure=frozenset(data.get("insecure", [])),
            mirrors={host: list(hosts) for host, hosts in data.get("mirrors", {}).items()},
            auths={host: (entry["username"], entry["password"]) for host, entry in data.get("auths", {}).items()},
            max_parallel=max(1, int(data.get("max_parallel", 4))),
            limits=UnpackLimits(
                max_entries=int(limits.get("max_entries", DEFAULT_MAX_ENTRIES)),
                max_bytes=parse_size(limits.get("max_bytes", DEFAULT_MAX_BYTES)),
            ),
            platform=data.get("platform"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(f"invalid setting in {path}: {exc}") from exc
