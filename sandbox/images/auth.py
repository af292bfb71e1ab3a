"""Registry credentials and the token dance.

Credentials come from the project's config (``[auths]``), then Docker's
``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``; ``auths`` entries with
``auth`` = base64 "user:password"; credential helpers are not run). A registry's 401
carries a ``WWW-Authenticate`` challenge: ``Basic`` -> send the credentials; ``Bearer
realm=...,service=...,scope=...`` -> fetch a token from the realm (with the credentials,
if any) and cache it per (realm, service, scope) until it expires or is refused.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.images.reference import DEFAULT_REGISTRY

_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def docker_config_auths() -> dict[str, tuple[str, str]]:
    directory = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    try:
        data = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    result = {}
    for key, entry in (data.get("auths") or {}).items():
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (KeyError, TypeError, ValueError):
            continue
        host = re.sub(r"^https?://", "", key).split("/", 1)[0]
        result[host] = (user, password)
    return result


class Credentials:
    def __init__(self, configured: dict[str, tuple[str, str]]) -> None:
        self._by_host = {**docker_config_auths(), **configured}

    def for_host(self, host: str) -> tuple[str, str] | None:
        if host in self._by_host:
            return self._by_host[host]
        if host in (DEFAULT_REGISTRY, "registry-1.docker.io"):
            return next((self._by_host[k] for k in _DOCKER_HUB_KEYS if k in self._by_host), None)
        return None


@dataclass
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    return Challenge(scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest)))


def basic_header(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


class TokenCache:
    """Bearer tokens per (realm, service, scope); shared by a pull's threads."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> str | None:
        with self._lock:
            token, expires = self._tokens.get(key, ("", 0.0))
            return token if token and time.monotonic() < expires else None

    def put(self, key: tuple[str, str, str], token: str, expires_in: float) -> None:
        with self._lock:
            # Refresh a little early: a token that expires in flight costs a 401 round trip.
            self._tokens[key] = (token, time.monotonic() + max(1.0, expires_in - 10))

    def drop(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._tokens.pop(key, None)
