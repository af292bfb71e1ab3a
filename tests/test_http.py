"""The HTTP+JSON front door end to end: a real `sandbox serve --http` process on a free
loopback port, httpx as the client, real jobs and judges, real callback receivers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cleanup import wait_until
from test_file_cache import cache_dir
from workerutil import SANDBOX_CLI

from sandbox.judge.problem import read_package
from worker.client import tree_tar

DOCS = Path(__file__).parent.parent / "docs"
PROBLEMS = Path(__file__).parent / "problems"
TOKEN = "s3cret-token"
MAX_FRAME = 64 << 10
CACHE = 1 << 20  # the shared worker's --file-cache-size: far over its --max-frame
QUEUE = 4


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HttpWorker:
    url: str
    process: Any

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def healthy(self) -> bool:
        """The door answers (it is not listening yet, or it is up)."""
        try:
            with self.client() as client:
                return client.get("/v1/health").status_code == 200
        except httpx.TransportError:
            return False

    def metric(self, line_start: str) -> float:
        with self.client() as client:
            text = client.get("/metrics").text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
        return values[0] if values else 0.0


@pytest.fixture
def start_http(start_worker, tmp_path: Path):
    def _start(*args: str, token: bool = True, socket: bool = True, env: dict[str, str] | None = None) -> HttpWorker:
        """``socket`` False: a worker serving HTTP alone, returned once it answers there."""
        port = free_port()
        extra = ["--http", f"127.0.0.1:{port}"]
        if token:
            token_file = tmp_path / "token"
            token_file.write_text(TOKEN + "\n")
            extra += ["--token-file", str(token_file)]
        process = start_worker(*extra, *args, socket=socket, env=env)
        door = HttpWorker(f"http://127.0.0.1:{port}", process)
        if not socket:
            assert wait_until(lambda: door.healthy(), 60), process.log_path.read_text()
        return door

    return _start


@pytest.fixture
def http_worker(start_http) -> HttpWorker:
    return start_http("--slots", "2", "--queue", str(QUEUE), "--max-frame", "64K", "--file-cache-size", "1M",
                      "--allow-private-callbacks", "--callback-attempts", "3", "--callback-timeout", "1")


def python_job(code: str, **extra: Any) -> dict[str, Any]:
    return {"cmd": ["python3", "-c", code], **extra}


def test_health_is_public_and_every_other_endpoint_wants_the_token(http_worker: HttpWorker) -> None:
    endpoints = [("GET", "/v1/stats"), ("GET", "/v1/languages"), ("GET", "/metrics"), ("GET", "/v1/openapi.json"),
                 ("POST", "/v1/jobs"), ("POST", "/v1/jobs/batch"), ("GET", "/v1/jobs/x"), ("DELETE", "/v1/jobs/x"),
                 ("POST", "/v1/judge"), ("GET", "/v1/judge/x"), ("DELETE", "/v1/judge/x"),
                 ("GET", "/v1/judge/x/events"), ("POST", "/v1/files"), ("GET", "/v1/files"),
                 ("GET", "/v1/files/x"), ("DELETE", "/v1/files/x")]
    for token in (None, "wrong", TOKEN + "x"):
        with http_worker.client(token) as client:
            assert client.get("/v1/health").json() == {"status": "ok", "slots": 2}
            for method, path in endpoints:
                response = client.request(method, path, json={"job": python_job("print(1)")})
                assert response.status_code == 401, (method, path, token)
                assert response.json()["code"] == "unauthorized"
                assert response.headers["WWW-Authenticate"] == "Bearer"
    with http_worker.client("wrong") as client:  # the scheme must be Bearer
        response = client.get("/v1/stats", headers={"Authorization": f"Basic {TOKEN}"})
        assert response.status_code == 401
    with http_worker.client() as client:  # the puts refused stored nothing
        assert client.get("/v1/files").json()["entries"] == 0


def test_the_served_openapi_document_is_the_checked_in_one(http_worker: HttpWorker) -> None:
    with http_worker.client() as client:
        served = client.get("/v1/openapi.json").json()
    assert served == json.loads((DOCS / "openapi.json").read_text())
    assert set(served["paths"]) >= {"/v1/jobs", "/v1/jobs/batch", "/v1/jobs/{id}", "/v1/judge",
                                    "/v1/judge/{id}/events", "/v1/languages", "/v1/stats", "/metrics", "/v1/health",
                                    "/v1/files", "/v1/files/{id}"}


def test_a_job_waited_for_returns_its_result_with_the_bytes_in_base64(http_worker: HttpWorker) -> None:
    job = {"cmd": ["sh", "-c", "cat /work/data.bin; cat; echo err >&2; cp /work/data.bin /work/out.bin"],
           "stdin": b64(b"\x00in\xff"), "files": [{"path": "/work/data.bin", "data": b64(b"\xfe file\n")}],
           "collect": [{"path": "/work/out.bin"}, {"path": "/work/none"}], "limits": {"memory": "128M"}}
    with http_worker.client() as client:
        response = client.post("/v1/jobs", params={"wait": "true"}, json={"id": "one", "job": job})
        assert response.status_code == 200, response.text
        document = response.json()
        assert (document["id"], document["state"]) == ("one", "finished")
        result = document["result"]
        assert result["status"] == "ok"
        assert base64.b64decode(result["stdout"]) == b"\xfe file\n\x00in\xff"
        assert base64.b64decode(result["stderr"]) == b"err\n"
        assert {path: base64.b64decode(data) for path, data in result["files"].items()} == {"/work/out.bin":
                                                                                           b"\xfe file\n"}
        assert result["file_errors"]["/work/none"].startswith("missing")
        assert client.get("/v1/jobs/one").json() == document
        # Ids are idempotent as on the socket: the same job again is the same record...
        again = client.post("/v1/jobs", params={"wait": "true"}, json={"id": "one", "job": job})
        assert again.json() == document
        # ... another job under it is a conflict.
        conflict = client.post("/v1/jobs", json={"id": "one", "job": python_job("print(2)")})
        assert conflict.status_code == 409 and conflict.json()["code"] == "id_conflict"
        assert client.get("/v1/stats").json()["submitted"] == 1


def put(client: httpx.Client, data: Any, **params: str) -> httpx.Response:
    return client.post("/v1/files", content=data, params=params,
                       headers={"Content-Type": "application/octet-stream"})


def test_a_file_put_once_is_read_by_many_jobs_until_deleted(http_worker: HttpWorker) -> None:
    data = os.urandom(300 << 10)  # over --max-frame: the cache bounds a put, not the frame
    digest = hashlib.sha256(data).hexdigest()
    reader = python_job("import hashlib, sys; d = open(sys.argv[1], 'rb').read(); "
                        "print(hashlib.sha256(d).hexdigest(), len(d))", files=[])
    with http_worker.client() as client:
        response = put(client, data)
        assert response.status_code == 201, response.text
        assert response.json() == {"file_id": f"sha256:{digest}", "size": len(data)}
        file_id = response.json()["file_id"]
        assert response.headers["Location"] == f"/v1/files/{file_id}"
        assert put(client, data).json()["file_id"] == file_id  # the same bytes: the same file, kept once
        assert client.get(f"/v1/files/{file_id}").json() == {"file_id": file_id, "size": len(data)}
        assert client.get("/v1/files").json()["entries"] == 1
        for path in ("/work/in.bin", "/tmp/again.bin"):
            job = {**reader, "cmd": [*reader["cmd"], path], "files": [{"path": path, "file_id": file_id}]}
            document = client.post("/v1/jobs", params={"wait": "true"}, json={"job": job}).json()
            assert base64.b64decode(document["result"]["stdout"]) == f"{digest} {len(data)}\n".encode(), document
        # Another id than the bytes' is refused, and nothing of it kept.
        mismatch = put(client, b"other bytes", file_id=file_id)
        assert (mismatch.status_code, mismatch.json()["code"]) == (422, "digest_mismatch")
        assert client.get("/v1/files").json()["entries"] == 1
        deleted = client.delete(f"/v1/files/{file_id}")
        assert deleted.json() == {"file_id": file_id, "removed": True}
        assert client.get("/v1/stats").json()["file_cache"]["entries"] == 0
        job = {**reader, "cmd": [*reader["cmd"], "/work/in.bin"], "files": [{"path": "/work/in.bin", "file_id": file_id}]}
        refused = client.post("/v1/jobs", json={"job": job})
        assert refused.status_code == 422
        assert (refused.json()["code"], refused.json()["field"]) == ("invalid_job", "files[0].file_id")
        for method in ("GET", "DELETE"):
            gone = client.request(method, f"/v1/files/{file_id}")
            assert (gone.status_code, gone.json()["code"]) == (404, "unknown_file")
        malformed = client.delete("/v1/files/sha256:nothex")
        assert (malformed.status_code, malformed.json()["field"]) == (422, "file_id")


def test_a_worker_serving_http_alone_keeps_its_file_cache_by_its_address(start_http, tmp_path: Path) -> None:
    cache_home = tmp_path / "cache"
    door = start_http("--slots", "1", socket=False, env={"XDG_CACHE_HOME": str(cache_home)})
    with door.client() as client:
        file_id = put(client, b"kept by address\n").json()["file_id"]
        job = {"cmd": ["cat", "/work/in"], "files": [{"path": "/work/in", "file_id": file_id}]}
        document = client.post("/v1/jobs", params={"wait": "true"}, json={"job": job}).json()
        assert base64.b64decode(document["result"]["stdout"]) == b"kept by address\n", document
    port = door.url.rsplit(":", 1)[1]
    cache = cache_home / "sandbox" / f"worker-http-127.0.0.1-{port}.files"
    assert (cache / "files" / file_id.removeprefix("sha256:")).read_bytes() == b"kept by address\n"


def test_a_file_deleted_while_a_job_holds_it_goes_when_the_job_ends(http_worker: HttpWorker) -> None:
    with http_worker.client() as client:
        file_id = put(client, b"held").json()["file_id"]
        holder = {"cmd": ["sh", "-c", "cat /work/held; sleep 60"], "files": [{"path": "/work/held", "file_id": file_id}]}
        assert client.post("/v1/jobs", json={"id": "holder", "job": holder}).status_code == 202
        assert client.delete(f"/v1/files/{file_id}").json() == {"file_id": file_id, "removed": False}
        assert client.get(f"/v1/files/{file_id}").status_code == 404  # no new job may name it
        assert client.get("/v1/files").json()["entries"] == 1  # the job's lease keeps it meanwhile
        client.delete("/v1/jobs/holder")
        assert wait_until(lambda: client.get("/v1/files").json()["entries"] == 0, 60)


def test_a_put_over_the_caches_bound_is_refused_with_nothing_stored(http_worker: HttpWorker) -> None:
    def chunked() -> Iterator[bytes]:  # no Content-Length: refused as its bytes pass the bound
        for _ in range(CACHE // (64 << 10) + 2):
            yield b"\x01" * (64 << 10)

    with http_worker.client() as client:
        for body in (b"\x00" * (CACHE + 1), chunked()):
            response = put(client, body)
            assert (response.status_code, response.json()["code"]) == (507, "cache_full"), response.text
            assert "more than the whole cache" in response.json()["message"]
            assert client.get("/v1/files").json() == {"bytes": 0, "entries": 0, "capacity": CACHE, "uploading": 0,
                                                      "evictions": 0}
            assert list((cache_dir(http_worker.process) / "partial").iterdir()) == []
        # The whole cache is one put's bound, whatever --max-frame says.
        response = put(client, b"\x02" * CACHE)
        assert response.status_code == 201 and response.json()["size"] == CACHE


def test_a_put_whose_client_goes_away_mid_body_keeps_nothing(http_worker: HttpWorker) -> None:
    port = int(http_worker.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: application/octet-stream\r\nContent-Length: {CACHE // 2}\r\n\r\n".encode())
        raw.sendall(b"\x03" * (CACHE // 4))
        with http_worker.client() as client:  # (the worker has taken bytes of it: they are counted)
            assert wait_until(lambda: client.get("/v1/files").json()["uploading"] > 0, 60)
    with http_worker.client() as client:
        assert wait_until(lambda: client.get("/v1/files").json()["uploading"] == 0, 60)
        assert client.get("/v1/files").json()["entries"] == 0
    assert list((cache_dir(http_worker.process) / "partial").iterdir()) == []
    assert "http_error" not in http_worker.process.log_path.read_text()


def test_a_tree_put_over_http_is_mounted_into_a_job(http_worker: HttpWorker, tmp_path: Path) -> None:
    (tmp_path / "tree" / "lib").mkdir(parents=True)
    (tmp_path / "tree" / "lib" / "answer.txt").write_bytes(b"forty-two\n")
    (tmp_path / "tree" / "run.sh").write_bytes(b"cat /work/tree/lib/answer.txt\n")
    tar = tree_tar(tmp_path / "tree")
    with http_worker.client() as client:
        response = put(client, tar, tree="true")
        assert response.status_code == 201, response.text
        tree_id = response.json()["file_id"]
        assert tree_id == "tree:sha256:" + hashlib.sha256(tar).hexdigest()
        assert response.json()["size"] == len(b"forty-two\n") + len(b"cat /work/tree/lib/answer.txt\n")
        job = {"cmd": ["sh", "/work/tree/run.sh"], "mounts": [{"path": "/work/tree", "tree_id": tree_id}]}
        document = client.post("/v1/jobs", params={"wait": "true"}, json={"job": job}).json()
        assert base64.b64decode(document["result"]["stdout"]) == b"forty-two\n", document
        # A tree is mounted, never copied in as a file.
        misused = client.post("/v1/jobs", json={"job": {"cmd": ["true"], "files": [
            {"path": "/work/t", "file_id": tree_id}]}})
        assert (misused.status_code, misused.json()["field"]) == (422, "files[0].file_id")
        buffer = io.BytesIO()  # a tar that is not a tree: refused, nothing kept
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.addfile(tarfile.TarInfo("../escape"), io.BytesIO(b""))
        hostile = put(client, buffer.getvalue(), tree="true")
        assert (hostile.status_code, hostile.json()["code"]) == (422, "bad_tree")
        assert "../escape" in hostile.json()["message"]
        assert client.get("/v1/files").json()["entries"] == 1


def test_a_job_is_polled_then_cancelled(http_worker: HttpWorker) -> None:
    with http_worker.client() as client:
        response = client.post("/v1/jobs", json={"job": {"cmd": ["sleep", "60"]}})
        assert response.status_code == 202
        identifier = response.json()["id"]
        assert response.headers["Location"] == f"/v1/jobs/{identifier}"
        assert client.get(f"/v1/jobs/{identifier}").json()["state"] in ("queued", "running")
        assert client.delete(f"/v1/jobs/{identifier}").json()["state"] == "cancelled"
        # Submitted again with wait, the id's record answers once the job has ended.
        ended = client.post("/v1/jobs", params={"wait": "true"}, json={"id": identifier, "job": {"cmd": ["sleep", "60"]}})
        assert ended.json()["state"] == "cancelled"
        assert ended.json().get("result", {"status": "cancelled"})["status"] == "cancelled"


def test_a_batch_is_queued_whole_or_not_at_all(http_worker: HttpWorker) -> None:
    jobs = [{"id": f"b{n}", "job": python_job(f"print({n})")} for n in range(3)]
    with http_worker.client() as client:
        broken = [*jobs[:1], {"id": "b9", "job": python_job("1", limits={"memory": "12XB"})}]
        response = client.post("/v1/jobs/batch", json=broken)
        assert response.status_code == 422
        assert response.json()["field"] == "[1].limits.memory"
        assert client.get("/v1/jobs/b0").status_code == 404  # nothing of it was queued
        response = client.post("/v1/jobs/batch", json=jobs)
        assert response.status_code == 202
        assert response.json() == {"ids": ["b0", "b1", "b2"]}
        for n, item in enumerate(jobs):
            document = client.post("/v1/jobs", params={"wait": "1"}, json=item).json()
            assert base64.b64decode(document["result"]["stdout"]) == f"{n}\n".encode()
        # More new jobs than the queue has room for: none is queued, 503 with Retry-After.
        many = [{"job": {"cmd": ["sleep", "60"]}} for _ in range(QUEUE + 1)]
        busy = client.post("/v1/jobs/batch", json=many)
        assert busy.status_code == 503 and busy.json()["code"] == "busy"
        assert busy.headers["Retry-After"] == "1"
        assert client.get("/v1/stats").json()["submitted"] == 3


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    (b'{"job": ', 400, "bad_json", None),
    (b"\xff\xfe", 400, "bad_json", None),
    (b"[" * 60000, 400, "bad_json", None),
    (b"[1, 2]", 422, "bad_message", None),
    (b'{"job": {"cmd": ["true"]}, "extra": 1}', 422, "bad_message", None),
    (b'{"job": {"cmd": "true"}}', 422, "invalid_job", "cmd"),
    (b'{"job": {"cmd": ["true"], "stdin": "not base64!"}}', 422, "invalid_job", "stdin"),
    (b'{"job": {"cmd": ["true"], "profile": "nope"}}', 422, "invalid_job", "profile"),
    (b'{"id": "", "job": {"cmd": ["true"]}}', 422, "bad_message", "id"),
    (b'{"job": {"cmd": ["true"]}, "callback_url": "ftp://example.com/"}', 422, "invalid_job", "callback_url"),
    (b'{"job": {"cmd": ["true"], "stdin": "' + b"A" * MAX_FRAME + b'"}}', 413, "frame_too_large", None),
])
def test_bad_requests_get_the_protocols_error_shape(http_worker: HttpWorker, body: bytes, status: int, code: str,
                                                     field: str | None) -> None:
    with http_worker.client() as client:
        response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        error = response.json()
        assert error["code"] == code and error["message"]
        assert error.get("field") == field
        assert client.get("/v1/health").status_code == 200  # the worker is fine


def test_unknown_ids_are_404(http_worker: HttpWorker) -> None:
    with http_worker.client() as client:
        assert client.get("/v1/nothing").json()["code"] == "not_found"
        wrong_method = client.put("/v1/jobs")
        assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")
        for method, path in [("GET", "/v1/jobs/nope"), ("DELETE", "/v1/jobs/nope"), ("GET", "/v1/judge/nope"),
                             ("DELETE", "/v1/judge/nope"), ("GET", "/v1/judge/nope/events")]:
            response = client.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json() == {"code": "unknown_id", "message": response.json()["message"], "field": "id"}


def test_languages_stats_and_metrics(http_worker: HttpWorker) -> None:
    with http_worker.client() as client:
        client.post("/v1/jobs", params={"wait": "true"}, json={"job": python_job("print(1)")})
        languages = client.get("/v1/languages").json()
        assert {"c", "cpp", "python3"} <= {language["name"] for language in languages}
        assert all(isinstance(language["present"], bool) and language["description"] for language in languages)
        stats = client.get("/v1/stats").json()
        assert (stats["slots"], stats["max_queue"], stats["by_status"]) == (2, QUEUE, {"ok": 1})
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
    assert http_worker.metric('sandbox_jobs_total{status="ok"}') == 1


def sum_judge(**extra: Any) -> dict[str, Any]:
    package = {name: b64(data) for name, data in read_package(PROBLEMS / "sum").items()}
    source = (PROBLEMS / "solutions" / "sum_ok.py").read_bytes()
    return {"problem": package, "submission": {"lang": "python3", "source": b64(source)}, **extra}


def test_a_judge_waited_for_returns_the_report(language_image, http_worker: HttpWorker) -> None:
    with http_worker.client() as client:
        response = client.post("/v1/judge", params={"wait": "true"}, json=sum_judge(id="j1"))
        assert response.status_code == 200, response.text
        document = response.json()
        assert (document["id"], document["state"]) == ("j1", "judged")
        report = document["report"]
        assert (report["verdict"], report["score"]) == ("accepted", 100.0)
        assert [test["name"] for test in report["tests"]] == ["1", "2", "10"] == [t["name"] for t in document["tests"]]
        assert client.get("/v1/judge/j1").json() == document
        assert client.post("/v1/judge", json=sum_judge(id="j1")).status_code == 409
        unknown = client.post("/v1/judge", json={**sum_judge(), "submission": {"lang": "cobol", "source": ""}})
        assert unknown.status_code == 202  # (a language is checked as the judge runs: its outcome says)
        failed = client.get(f"/v1/judge/{unknown.json()['id']}/events")
        assert "event: error" in failed.text and "cobol" in failed.text


def test_a_judge_package_names_a_file_put_over_http(language_image, http_worker: HttpWorker) -> None:
    judge = sum_judge()
    with http_worker.client() as client:
        big_input = base64.b64decode(judge["problem"]["tests/10.in"])
        judge["problem"]["tests/10.in"] = {"file_id": put(client, big_input).json()["file_id"]}
        response = client.post("/v1/judge", params={"wait": "true"}, json=judge)
        assert response.status_code == 200, response.text
        report = response.json()["report"]
        assert (report["verdict"], [test["name"] for test in report["tests"]]) == ("accepted", ["1", "2", "10"])
        judge["problem"]["tests/10.in"] = {"file_id": "sha256:" + "0" * 64}
        refused = client.post("/v1/judge", params={"wait": "true"}, json=judge)
        assert refused.status_code == 422
        assert (refused.json()["code"], refused.json()["field"]) == ("invalid_job", "problem.tests/10.in.file_id")


def test_a_judge_reports_progress_as_server_sent_events(language_image, http_worker: HttpWorker) -> None:
    with http_worker.client() as client:
        response = client.post("/v1/judge", json=sum_judge())
        assert response.status_code == 202
        identifier = response.json()["id"]
        with client.stream("GET", f"/v1/judge/{identifier}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = read_events(stream)
        assert [name for name, _ in events] == ["test_finished"] * 3 + ["judged"]
        assert [data["test"]["name"] for _, data in events[:3]] == ["1", "2", "10"]
        assert events[-1][1]["report"]["verdict"] == "accepted"
        polled = client.get(f"/v1/judge/{identifier}").json()
        assert polled["state"] == "judged" and polled["report"] == events[-1][1]["report"]


def read_events(stream: httpx.Response, on_event: Any = None) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a stream, to its end: (name, data) pairs."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = None
    for line in stream.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            assert name is not None
            events.append((name, json.loads(line.removeprefix("data: "))))
            if on_event is not None:
                on_event(*events[-1])
    return events


def test_a_judge_is_cancelled_mid_way(language_image, http_worker: HttpWorker) -> None:
    judge = sum_judge(id="slow")
    judge["submission"] = {"lang": "cpp", "source": b64((PROBLEMS / "solutions" / "sum_slow.cpp").read_bytes())}
    with http_worker.client() as client:
        assert client.post("/v1/judge", json=judge).status_code == 202

        def cancel_after_first(name: str, data: dict[str, Any]) -> None:
            if name == "test_finished":
                assert client.delete("/v1/judge/slow").status_code == 200

        with httpx.Client(base_url=http_worker.url, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=120) as streaming, streaming.stream("GET", "/v1/judge/slow/events") as stream:
            events = read_events(stream, cancel_after_first)
        # (the test running at the cancel may still be reported before the end)
        names = [name for name, _ in events]
        assert names[0] == "test_finished" and names[-1] == "cancelled" and names.count("test_finished") < 3, names
        assert events[0][1]["test"]["status"] == "time_limit"
        document = client.get("/v1/judge/slow").json()
        assert (document["state"], len(document["tests"])) == ("cancelled", names.count("test_finished"))
        assert "report" not in document
        assert client.get("/v1/stats").json()["submitted"] <= 3  # compile, the first test, at most a second


def test_without_a_token_only_loopback_is_served_and_callbacks_cannot_be_signed(start_http) -> None:
    worker = start_http("--slots", "1", token=False)
    with worker.client(token=None) as client:
        assert client.get("/v1/stats").status_code == 200
        document = client.post("/v1/jobs", params={"wait": "true"}, json={"job": python_job("print(5)")}).json()
        assert base64.b64decode(document["result"]["stdout"]) == b"5\n"
        refused = client.post("/v1/jobs", json={"job": python_job("1"), "callback_url": "http://8.8.8.8/cb"})
        assert refused.status_code == 422 and "no secret" in refused.json()["message"]


@dataclass
class Receiver:
    """A callback target on loopback that answers each POST with the next status of
    ``answers`` (the last one from then on) and records what it got."""

    answers: list[int]
    received: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.answers[min(len(receiver.received), len(receiver.answers) - 1)]
                receiver.received.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    target = Receiver([500, 500, 200])
    yield target
    target.close()


def test_a_callback_is_retried_through_5xx_and_delivered_once_signed(http_worker: HttpWorker,
                                                                     receiver: Receiver) -> None:
    with http_worker.client() as client:
        response = client.post("/v1/jobs", json={"id": "cb", "job": python_job("print(42)"),
                                                 "callback_url": receiver.url})
        assert response.status_code == 202, response.text
        assert wait_until(lambda: http_worker.metric('sandbox_callbacks_total{outcome="delivered"}') == 1, 60)
        document = client.get("/v1/jobs/cb").json()
    assert [status for status, _, _ in receiver.received] == [500, 500, 200]  # one accepted delivery, then no more
    assert http_worker.metric("sandbox_callback_attempts_total") == 3
    for _, headers, body in receiver.received:
        expected = "sha256=" + hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Sandbox-Signature"], expected)
        assert json.loads(body) == document
    assert base64.b64decode(document["result"]["stdout"]) == b"42\n"


def test_a_callback_target_that_never_answers_gets_bounded_attempts(http_worker: HttpWorker) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/never"
        with http_worker.client() as client:
            response = client.post("/v1/jobs", json={"job": python_job("print(1)"), "callback_url": url})
            assert response.status_code == 202, response.text
        assert wait_until(lambda: http_worker.metric('sandbox_callbacks_total{outcome="failed"}') == 1, 60)
    assert http_worker.metric("sandbox_callback_attempts_total") == 3  # --callback-attempts


def test_a_callback_url_its_delivery_could_not_use_is_refused_at_submit(http_worker: HttpWorker) -> None:
    """Refused even where private targets are allowed (this worker's): each would fail
    only once the job ended, in the worker's own task."""
    with http_worker.client() as client:
        for url in ("http://127.0.0.1:9/\x01", "http://a..b/x", f"http://{'a' * 64}.example/x"):
            response = client.post("/v1/jobs", json={"job": python_job("print(1)"), "callback_url": url})
            assert (response.status_code, response.json()["field"]) == (422, "callback_url"), (url, response.text)
        assert client.get("/v1/stats").json()["submitted"] == 0


def test_a_private_callback_target_is_refused_without_the_option(start_http) -> None:
    worker = start_http("--slots", "1")
    with worker.client() as client:
        for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x", "http://169.254.169.254/x",
                    "http://[::1]/x"):
            response = client.post("/v1/jobs", json={"job": python_job("print(1)"), "callback_url": url})
            assert response.status_code == 422, url
            assert response.json()["field"] == "callback_url"
        assert client.get("/v1/stats").json()["submitted"] == 0


def test_http_off_loopback_needs_a_token(tmp_path: Path) -> None:
    done = subprocess.run([*SANDBOX_CLI, "serve", "--socket", str(tmp_path / "w.sock"), "--http", "0.0.0.0:1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 125
    assert "needs a token" in done.stderr


def test_a_session_over_http(http_worker: HttpWorker) -> None:
    with http_worker.client() as client:
        made = client.post("/v1/sessions", json={"limits": {"memory": "256M"}, "ttl": 60})
        assert made.status_code == 201, made.text
        session = made.json()["session"]
        assert made.headers["location"] == f"/v1/sessions/{session}"
        first = client.post(f"/v1/sessions/{session}/exec?wait=true",
                            json={"job": {"cmd": ["sh", "-c", "echo kept > /work/f"]}})
        assert first.json()["result"]["status"] == "ok", first.text
        second = client.post(f"/v1/sessions/{session}/exec?wait=true", json={"id": "read-f",
                                                                             "job": {"cmd": ["cat", "/work/f"]}})
        assert base64.b64decode(second.json()["result"]["stdout"]) == b"kept\n"
        assert client.get("/v1/jobs/read-f").json()["state"] == "finished"  # an exec is a job there
        shown = client.get(f"/v1/sessions/{session}").json()
        assert (shown["state"], shown["execs"]) == ("idle", 2)
        assert base64.b64decode(shown["logs"][-1]["stdout"]) == b"kept\n"
        assert client.post(f"/v1/sessions/{session}/pause").json()["state"] == "paused"
        paused = client.post(f"/v1/sessions/{session}/exec", json={"job": {"cmd": ["true"]}})
        assert (paused.status_code, paused.json()["code"]) == (409, "session_paused")
        assert client.post(f"/v1/sessions/{session}/resume").json()["state"] == "idle"
        assert client.post(f"/v1/sessions/{session}/stop", json={"grace": 1}).json()["stopped"] is False
        assert session in [s["session"] for s in client.get("/v1/sessions").json()["sessions"]]
        assert client.delete(f"/v1/sessions/{session}").status_code == 200
        gone = client.get(f"/v1/sessions/{session}")
        assert (gone.status_code, gone.json()["code"]) == (404, "unknown_session")


def test_a_bind_and_a_volume_over_http(start_http, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON door takes the same mounts: a bind below --allow-bind, refused
    elsewhere with 403 bind_not_allowed; a volume kept between jobs."""
    monkeypatch.setenv("SANDBOX_VOLUMES", str(tmp_path / "volumes"))
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "in.txt").write_text("bound\n")
    worker = start_http("--slots", "2", "--allow-bind", str(tmp_path / "allowed"))
    with worker.client() as client:
        job = {"cmd": ["sh", "-c", "cat /work/d/in.txt > /work/v/copy; cat /work/v/copy"],
               "mounts": [{"path": "/work/d", "bind": str(tmp_path / "allowed")},
                          {"path": "/work/v", "volume": "http", "size": "1M"}]}
        document = client.post("/v1/jobs", params={"wait": "true"}, json={"job": job}).json()
        assert base64.b64decode(document["result"]["stdout"]) == b"bound\n", document
        again = {"cmd": ["cat", "/work/v/copy"], "mounts": [{"path": "/work/v", "volume": "http", "writable": False}]}
        document = client.post("/v1/jobs", params={"wait": "true"}, json={"job": again}).json()
        assert base64.b64decode(document["result"]["stdout"]) == b"bound\n", document
        outside = {"cmd": ["true"], "mounts": [{"path": "/work/d", "bind": str(tmp_path)}]}
        refused = client.post("/v1/jobs", params={"wait": "true"}, json={"job": outside})
        assert (refused.status_code, refused.json()["code"], refused.json()["field"]) == (
            403, "bind_not_allowed", "mounts.0.bind"), refused.text
    pruned = subprocess.run([sys.executable, "-m", "sandbox.cli", "volume", "prune"], capture_output=True, text=True,
                            timeout=120)
    assert pruned.returncode == 0 and pruned.stdout.split() == ["http"], pruned.stderr
