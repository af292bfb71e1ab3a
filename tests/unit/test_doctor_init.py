"""The doctor's look at the sandbox init (``sandbox/doctor.py``): an init built before
a change of its sources is stale (it speaks the older protocol), not merely built."""

from __future__ import annotations

import os

from sandbox.doctor import _init_binary


def _tree(tmp_path, source_age_s: int):
    binary = tmp_path / "sandbox-init"
    binary.write_bytes(b"")
    binary.chmod(0o755)
    source = tmp_path / "init.c"
    source.write_text("")
    built = binary.stat().st_mtime_ns
    os.utime(source, ns=(built, built - source_age_s * 1_000_000_000))
    return str(binary)


def test_an_init_newer_than_its_sources_is_ok(tmp_path):
    [check] = _init_binary(_tree(tmp_path, source_age_s=60))
    assert check.level == "ok"


def test_an_init_older_than_its_sources_fails(tmp_path):
    [check] = _init_binary(_tree(tmp_path, source_age_s=-60))
    assert check.level == "FAIL"
    assert "init.c" in check.what
