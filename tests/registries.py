"""Real registries for the tests: Debian's docker-registry (anonymous, htpasswd, token
auth), a bearer-token server, and a small forwarding proxy that can cut a transfer and
logs what it forwarded. Every process is started here and stopped by pid."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

DEADLINE_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)  # polling an observable condition (the port) with a deadline
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Registry:
    host: str
    root: Path
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def blob_file(self, digest: str) -> Path:
        hex_ = digest.split(":")[1]
        return self.root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def start_registry(work: Path, auth: str = "") -> Registry:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {work / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log = work / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OTEL_TRACES_EXPORTER": "none"})
    wait_for_port(port, proc)
    return Registry(f"127.0.0.1:{port}", work / "data", proc, log)


def skopeo_push(source: str, dest: str, work: Path, creds: str | None = None, all_platforms: bool = False) -> None:
    auth_file = work / "skopeo-auth.json"
    if not auth_file.exists():
        auth_file.write_text("{}")
    args = ["skopeo", "copy", "-q", "--dest-tls-verify=false"]
    if creds:
        args += ["--dest-creds", creds]
    if all_platforms:
        args.append("--all")
    tmp = work / "skopeo-tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth_file), "TMPDIR": str(tmp)}
    subprocess.run([*args, source, f"docker://{dest}"], check=True, env=env, capture_output=True, timeout=300)


# ---- bearer tokens ------------------------------------------------------------------
@dataclass
class TokenServer:
    url: str
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread
    issued: list[str] = field(default_factory=list)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def start_token_server(work: Path, user: str, password: str, service: str, issuer: str) -> tuple[TokenServer, Path]:
    """A token server for docker-registry's ``token`` auth: RS256 JWTs signed with
    openssl, the certificate in the ``x5c`` header; basic credentials required."""
    key, cert = work / "token.key", work / "token.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=test-token-issuer"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True,
                         capture_output=True).stdout
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    issued: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            access = []
            for scope in query.get("scope", []):
                kind, name, actions = scope.split(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
            now = int(time.time())
            header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
            claims = {"iss": issuer, "sub": user, "aud": service, "exp": now + 300, "nbf": now - 10, "iat": now,
                      "jti": os.urandom(8).hex(), "access": access}
            signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
            signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing_input.encode(),
                                       check=True, capture_output=True).stdout
            token = f"{signing_input}.{_b64(signature)}"
            issued.append(token)
            body = json.dumps({"token": token, "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return TokenServer(f"http://127.0.0.1:{server.server_address[1]}/token", server, thread, issued), cert


# ---- a forwarding proxy that can fail on purpose -----------------------------------
@dataclass
class Proxy:
    host: str
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread
    log: list[tuple[str, str, int]]  # (path, Range header, status)
    cut_blobs_after: dict[str, int]  # path fragment -> bytes to send before dropping, once

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def blob_gets(self) -> list[tuple[str, str, int]]:
        return [entry for entry in self.log if "/blobs/" in entry[0]]


def start_proxy(upstream: str) -> Proxy:
    log: list[tuple[str, str, int]] = []
    cuts: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            conn = http.client.HTTPConnection(upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request("GET", self.path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            with lock:
                log.append((self.path, self.headers.get("Range", ""), response.status))
                cut = next((cuts.pop(key) for key in list(cuts) if key in self.path and response.status == 200), None)
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)
            conn.close()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return Proxy(f"127.0.0.1:{server.server_address[1]}", server, thread, log, cuts)
