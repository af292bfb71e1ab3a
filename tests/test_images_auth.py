"""Registry authentication edge cases against small real HTTP servers started here:
a refused (revoked) bearer token is refreshed once, and credentials never follow a
redirect to another host."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sandbox.images.config import ImagesConfig
from sandbox.images.reference import parse
from sandbox.images.registry import RegistryClient

BLOB = b'{"architecture": "amd64"}'
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class Server:
    """A ThreadingHTTPServer on ``host`` with a handler function, stopped after the test."""

    def __init__(self, host: str, handle) -> None:  # type: ignore[no-untyped-def]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append((self.path, self.headers.get("Authorization")))
                status, headers, body = handle(self)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.seen: list[tuple[str, str | None]] = []
        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.host = f"{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def client_for(*hosts: str, auths: dict[str, tuple[str, str]] | None = None) -> RegistryClient:
    return RegistryClient(ImagesConfig(store=None, insecure=frozenset(hosts), auths=auths or {}))  # type: ignore[arg-type]


def test_a_refused_bearer_token_is_refreshed(servers, tmp_path):
    issued: list[str] = []
    used: set[str] = set()

    def registry(request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.path.startswith("/token"):
            issued.append(f"t{len(issued) + 1}")
            return 200, {"Content-Type": "application/json"}, json.dumps({"token": issued[-1]}).encode()
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
        if token in issued and token not in used:  # single-use tokens: the second use is refused
            used.add(token)
            return 200, {}, BLOB
        realm = f"http://{server.host}/token"
        challenge = f'Bearer realm="{realm}",service="test",scope="repository:team/app:pull"'
        return 401, {"WWW-Authenticate": challenge}, b""

    server = Server("127.0.0.1", registry)
    servers.append(server)
    client = client_for(server.host)
    ref = parse(f"{server.host}/team/app:1")
    try:
        assert client.small_blob(ref, BLOB_DIGEST) == BLOB
        assert client.small_blob(ref, BLOB_DIGEST) == BLOB  # cached t1 refused -> t2
    finally:
        client.close()
    assert issued == ["t1", "t2"]


def test_credentials_do_not_follow_a_redirect_to_another_host(servers):
    storage = Server("127.0.0.2", lambda request: (200, {}, BLOB))
    servers.append(storage)

    def registry(request: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if request.headers.get("Authorization") is None:
            return 401, {"WWW-Authenticate": 'Basic realm="test"'}, b""
        return 307, {"Location": f"http://{storage.host}/storage/blob"}, b""

    server = Server("127.0.0.1", registry)
    servers.append(server)
    client = client_for(server.host, storage.host, auths={server.host: ("judge", "s3cret")})
    try:
        assert client.small_blob(parse(f"{server.host}/team/app:1"), BLOB_DIGEST) == BLOB
    finally:
        client.close()
    assert server.seen[-1][1] is not None and server.seen[-1][1].startswith("Basic ")
    assert storage.seen == [("/storage/blob", None)]
