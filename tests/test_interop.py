"""A non-Python client drives the worker: Node.js with @msgpack/msgpack (from npm),
tests/interop/client.mjs. Proves the protocol is plain msgpack frames, nothing Python."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

INTEROP = Path(__file__).parent / "interop"


@pytest.fixture(scope="session")
def node_client(tmp_path_factory) -> Path:
    """The interop client with its npm dependency installed in a scratch directory."""
    directory = tmp_path_factory.mktemp("interop")
    for name in ("package.json", "client.mjs"):
        shutil.copy(INTEROP / name, directory / name)
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=directory, check=True, capture_output=True, timeout=300,
    )
    return directory / "client.mjs"


def test_node_client_runs_a_job(worker, node_client):
    done = subprocess.run(["node", str(node_client), worker.socket_path], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["status"] == "ok"
    assert result["stdout"] == "node says hi\n"
    assert result["usage"]["memory_peak_bytes"] > 0
