"""Registry HTTP API v2 / OCI distribution client (httpx).

Endpoints for a registry: its configured mirrors in order, then the registry itself;
a mirror that fails or lacks the content is skipped. HTTPS always, plain HTTP only for
hosts listed as insecure. Redirects are followed by hand so the Authorization header
never travels to another host (blob redirects to object storage are common). 5xx, 429
and connection errors are retried with exponential backoff; a blob download resumes
from what it already has with a Range request.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from sandbox.images import digests
from sandbox.images.auth import Challenge, Credentials, TokenCache, basic_header, parse_challenge
from sandbox.images.config import ImagesConfig
from sandbox.images.errors import DigestMismatch, RegistryError
from sandbox.images.reference import Reference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_MANIFEST_BYTES = 4 << 20
ATTEMPTS = 4
BACKOFF_S = 0.2
_REDIRECTS = (301, 302, 303, 307, 308)
_RETRY_STATUS = (429, 500, 502, 503, 504)
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Endpoint:
    host: str
    scheme: str
    mirror: bool

    def url(self, ref: Reference, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{ref.repository}/{path}"


@dataclass(frozen=True)
class Request:
    """How to send: the method, a body made afresh for each send (a retry, a redirect
    or an auth challenge sends again), and the actions the token must allow."""

    method: str = "GET"
    body: Callable[[], bytes | Iterator[bytes]] | None = None
    actions: str = "pull"


READ = Request()


class _Retryable(Exception):
    """A transient failure: try again after a pause."""


class RegistryClient:
    def __init__(self, config: ImagesConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.credentials = Credentials(config.auths)
        self.tokens = TokenCache()
        self.http = httpx.Client(follow_redirects=False, timeout=httpx.Timeout(60.0, connect=10.0))
        self.sleep = sleep
        # host -> ("basic"|"bearer", realm, service): how it challenged us last time, so
        # later requests carry credentials up front instead of collecting a 401 each.
        self._hints: dict[str, tuple[str, str, str]] = {}

    def close(self) -> None:
        self.http.close()

    def endpoints(self, ref: Reference) -> list[Endpoint]:
        hosts = [(host, True) for host in self.config.mirrors.get(ref.registry, [])]
        hosts.append((ref.api_host, False))
        return [Endpoint(h, "http" if h in self.config.insecure else "https", mirror) for h, mirror in hosts]

    # ---- public operations ---------------------------------------------------------
    def manifest(self, ref: Reference, version: str) -> tuple[bytes, str, str]:
        """(raw bytes, media type, digest) of a manifest or index; verified when
        ``version`` is a digest."""
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        with self._open(ref, f"manifests/{version}", headers) as response:
            raw = _read_capped(response, MAX_MANIFEST_BYTES, f"manifest {ref}")
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
        digest = digests.of_bytes(raw)
        if version.startswith("sha256:") and digest != version:
            raise DigestMismatch(f"manifest {ref}: expected {version}, got {digest}")
        return raw, media_type, digest

    def small_blob(self, ref: Reference, digest: str) -> bytes:
        """A config blob: read into memory (capped) and verified."""
        with self._open(ref, f"blobs/{digest}", {}) as response:
            data = _read_capped(response, MAX_MANIFEST_BYTES, f"blob {digest}")
        digests.verify_bytes(data, digest, f"blob of {ref}")
        return data

    def fetch_blob(self, ref: Reference, digest: str, partial: Path, advance: Callable[[int], None]) -> None:
        """Download into ``partial`` (resuming what it holds) until it hashes to
        ``digest``. A mismatch discards the file and counts as a failed attempt."""
        last_error = "no attempt"
        for attempt in range(ATTEMPTS):
            if attempt:
                self.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                if self._download(ref, digest, partial, advance):
                    return
                last_error = "content did not match its digest"
                partial.unlink(missing_ok=True)
            except _Retryable as exc:
                last_error = str(exc)
        if "digest" in last_error:
            raise DigestMismatch(f"blob {digest} of {ref}: {last_error} after {ATTEMPTS} attempts")
        raise RegistryError(f"blob {digest} of {ref}: {last_error} after {ATTEMPTS} attempts")

    def _download(self, ref: Reference, digest: str, partial: Path, advance: Callable[[int], None]) -> bool:
        hasher = hashlib.sha256()
        have = 0
        if partial.exists():
            with open(partial, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    hasher.update(chunk)
                    have += len(chunk)
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with self._open(ref, f"blobs/{digest}", headers, allow=(200, 206, 416)) as response:
                if response.status_code == 416:
                    pass  # we already hold every byte; the hash decides
                elif response.status_code == 206 and response.headers.get("content-range", "").startswith(
                    f"bytes {have}-"
                ):
                    advance(have)
                    self._append(response, partial, "ab", hasher, advance)
                else:
                    hasher = hashlib.sha256()
                    self._append(response, partial, "wb", hasher, advance)
        except httpx.TransportError as exc:
            raise _Retryable(f"connection failed: {exc}") from exc
        return "sha256:" + hasher.hexdigest() == digest

    @staticmethod
    def _append(
        response: httpx.Response, partial: Path, mode: str, hasher: object, advance: Callable[[int], None],
    ) -> None:
        with open(partial, mode) as handle:
            for chunk in response.iter_bytes(1 << 20):
                handle.write(chunk)
                hasher.update(chunk)  # type: ignore[attr-defined]
                advance(len(chunk))

    # ---- pushing: the registry itself, never a mirror ---------------------------------
    def has_blob(self, ref: Reference, digest: str) -> bool:
        """Whether the registry holds the blob in the repository already (pushed by
        someone, or before): a push skips it."""
        with self._pushing(ref, f"blobs/{digest}", Request("HEAD", actions="pull,push"), (200, 404)) as response:
            return response.status_code == 200

    def upload_blob(self, ref: Reference, digest: str, path: Path) -> None:
        """One monolithic upload of the file at ``path``: POST for a session, PUT of the
        bytes with the digest, which the registry checks."""
        start = Request("POST", lambda: b"", "pull,push")
        with self._pushing(ref, "blobs/uploads/", start, (202,)) as response:
            location = response.headers.get("location", "")
        if not location:
            raise RegistryError(f"{ref.registry} started an upload without a Location")
        url = httpx.URL(self._push_endpoint(ref).url(ref, "")).join(location)
        url = url.copy_merge_params({"digest": digest})
        put = Request("PUT", lambda: _chunks(path), "pull,push")
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)}
        with self._pushing(ref, str(url), put, (201,), headers) as response:
            pass

    def put_manifest(self, ref: Reference, media_type: str, raw: bytes) -> str:
        """Store the manifest under the reference's tag (or digest); its digest."""
        put = Request("PUT", lambda: raw, "pull,push")
        with self._pushing(ref, f"manifests/{ref.version}", put, (201,), {"Content-Type": media_type}):
            pass
        return digests.of_bytes(raw)

    def _push_endpoint(self, ref: Reference) -> Endpoint:
        return next(endpoint for endpoint in self.endpoints(ref) if not endpoint.mirror)

    @contextmanager
    def _pushing(
        self, ref: Reference, path: str, request: Request, allow: tuple[int, ...],
        headers: dict[str, str] | None = None,
    ) -> Iterator[httpx.Response]:
        endpoint = self._push_endpoint(ref)
        url = path if path.startswith(("http://", "https://")) else endpoint.url(ref, path)
        response = self._send_retrying(endpoint, ref, url, headers or {}, request)
        try:
            if response.status_code not in allow:
                response.read()
                detail = response.text[:200].strip()
                message = f"{endpoint.host} answered {response.status_code} to {request.method} {ref.repository}"
                if response.status_code in (401, 403):
                    message += "; check the credentials (pushing needs them)"
                raise RegistryError(f"{message}: {detail}" if detail else message)
            yield response
        finally:
            response.close()

    # ---- requests: endpoints, retries, auth, redirects -------------------------------
    @contextmanager
    def _open(
        self, ref: Reference, path: str, headers: dict[str, str], allow: tuple[int, ...] = (200,),
    ) -> Iterator[httpx.Response]:
        problems: list[str] = []
        for endpoint in self.endpoints(ref):
            url = endpoint.url(ref, path)
            try:
                response = self._send_retrying(endpoint, ref, url, headers)
            except RegistryError as exc:
                if not endpoint.mirror:
                    raise RegistryError(f"{exc} (also tried: {'; '.join(problems)})" if problems else str(exc)) from exc
                problems.append(f"{endpoint.host}: {exc}")
                continue
            if response.status_code in allow:
                try:
                    yield response
                finally:
                    response.close()
                return
            response.read()
            response.close()
            message = f"{endpoint.host} answered {response.status_code} for {ref.repository}/{path}"
            if endpoint.mirror:
                problems.append(message)
                continue
            if response.status_code == 404:
                message = f"{ref} not found: {message}"
            elif response.status_code in (401, 403):
                message = f"access to {ref} denied ({message}); check the credentials"
            raise RegistryError(message + (f" (also tried: {'; '.join(problems)})" if problems else ""))

    def _send_retrying(
        self, endpoint: Endpoint, ref: Reference, url: str, headers: dict[str, str], request: Request = READ,
    ) -> httpx.Response:
        last = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                self.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                response = self._send_authenticated(endpoint, ref, url, headers, request)
            except httpx.TransportError as exc:
                last = f"cannot reach {endpoint.host}: {exc}"
                continue
            if response.status_code in _RETRY_STATUS:
                response.read()
                response.close()
                last = f"{endpoint.host} answered {response.status_code}"
                continue
            return response
        raise RegistryError(f"{last} after {ATTEMPTS} attempts")

    def _send_authenticated(
        self, endpoint: Endpoint, ref: Reference, url: str, headers: dict[str, str], request: Request,
    ) -> httpx.Response:
        credentials = self.credentials.for_host(ref.registry if not endpoint.mirror else endpoint.host)
        scope = f"repository:{ref.repository}:{request.actions}"
        auth = self._cached_auth(endpoint.host, scope, credentials)
        response = self._send_following(url, headers, auth, request)
        if response.status_code != 401:
            return response
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        response.read()
        response.close()
        if challenge is None:
            return self._send_following(url, headers, None, request)
        auth = self._answer(endpoint, challenge, scope, credentials)
        return self._send_following(url, headers, auth, request)

    def _cached_auth(self, host: str, scope: str, credentials: tuple[str, str] | None) -> str | None:
        key = self._hints.get(host)
        if key is None:
            return None
        if key[0] == "basic":
            return basic_header(credentials) if credentials else None
        token = self.tokens.get((key[1], key[2], scope))
        return f"Bearer {token}" if token else None

    def _answer(
        self, endpoint: Endpoint, challenge: Challenge, scope: str, credentials: tuple[str, str] | None,
    ) -> str | None:
        if challenge.scheme == "basic":
            self._hints[endpoint.host] = ("basic", "", "")
            if credentials is None:
                raise RegistryError(f"{endpoint.host} wants a user name and password (add them to the config)")
            return basic_header(credentials)
        realm = challenge.params.get("realm", "")
        service = challenge.params.get("service", "")
        scope = challenge.params.get("scope", scope)
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"{endpoint.host} sent a bearer challenge without a usable realm")
        self._hints[endpoint.host] = ("bearer", realm, service)
        key = (realm, service, scope)
        self.tokens.drop(key)  # it was refused (or absent): fetch a fresh one
        query = urllib.parse.urlencode({k: v for k, v in (("service", service), ("scope", scope)) if v})
        token_auth = basic_header(credentials) if credentials else None
        try:
            response = self._send_following(f"{realm}?{query}", {}, token_auth)
        except httpx.TransportError as exc:
            raise RegistryError(f"token server {realm} unreachable: {exc}") from exc
        body = response.read()
        response.close()
        if response.status_code != 200:
            raise RegistryError(f"token server {realm} answered {response.status_code}")
        try:
            data = httpx.Response(200, content=body).json()
            token = data.get("token") or data["access_token"]
        except (ValueError, KeyError) as exc:
            raise RegistryError(f"token server {realm} sent no token") from exc
        self.tokens.put(key, token, float(data.get("expires_in", 60)))
        return f"Bearer {token}"

    def _send_following(
        self, url: str, headers: dict[str, str], auth: str | None, request: Request = READ,
    ) -> httpx.Response:
        """Send, following redirects by hand: credentials go only to the host they
        were meant for."""
        origin = httpx.URL(url).host
        for _ in range(_MAX_REDIRECTS + 1):
            request_headers = dict(headers)
            if auth and httpx.URL(url).host == origin:
                request_headers["Authorization"] = auth
            content = None if request.body is None else request.body()
            built = self.http.build_request(request.method, url, headers=request_headers, content=content)
            response = self.http.send(built, stream=True)
            if response.status_code not in _REDIRECTS:
                return response
            location = response.headers.get("location", "")
            response.close()
            url = str(httpx.URL(url).join(location))
        raise RegistryError(f"too many redirects fetching {url}")


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            yield chunk


def _read_capped(response: httpx.Response, cap: int, what: str) -> bytes:
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > cap:
            raise RegistryError(f"{what} is larger than {cap} bytes")
    return bytes(data)

