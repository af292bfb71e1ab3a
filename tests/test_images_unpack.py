"""Hostile layers: every one is rejected with an error naming the entry, or neutralised;
a canary directory outside the store proves nothing was written through it."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zlib
from pathlib import Path

import pytest
from imagebuild import Entry, compress, layer_tar

from sandbox.images.config import UnpackLimits
from sandbox.images.errors import UnpackError
from sandbox.images.unpack import unpack_layer

SYM, LNK, DIR, CHR, BLK = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    path.mkdir()
    (path / "file").write_text("precious")
    return path


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    found = {}
    for item in sorted(path.rglob("*")):
        st = item.lstat()
        found[str(item)] = (st.st_mode, item.read_bytes() if item.is_file() and not item.is_symlink() else b"")
    return found


def unpack(tmp_path: Path, raw: bytes, how: str = "gzip", limits: UnpackLimits | None = None) -> Path:
    dest = tmp_path / "layer"
    dest.mkdir(exist_ok=True)
    blob, _ = compress(raw, how)
    unpack_layer(io.BytesIO(blob), dest, limits or UnpackLimits())
    return dest


def hostile_cases(canary: str) -> dict[str, tuple[list[Entry], str]]:
    """name -> (entries, the entry the error must name)"""
    return {
        "absolute path": ([Entry(f"{canary}/evil", data=b"x")], f"{canary}/evil"),
        "dot-dot": ([Entry("a/../../canary/evil", data=b"x")], "a/../../canary/evil"),
        "symlink then file": ([Entry("link", SYM, linkname=canary), Entry("link/evil", data=b"x")], "link/evil"),
        "symlink then dir": ([Entry("link", SYM, linkname=canary), Entry("link/sub", DIR)], "link/sub"),
        "symlink named dot": ([Entry(".", SYM, linkname=canary), Entry("evil", data=b"x")], "."),
        "hardlink outside": ([Entry("h", LNK, linkname="../canary/file")], "h"),
        "hardlink absolute": ([Entry("h", LNK, linkname=f"{canary}/file")], "h"),
        "hardlink to escaping symlink": (
            [Entry("s", SYM, linkname=f"{canary}/file"), Entry("h", LNK, linkname="s")], "h"),
        "hardlink through symlinked dir": (
            [Entry("d", SYM, linkname=canary), Entry("h", LNK, linkname="d/file")], "h"),
        "whiteout with traversal": ([Entry("a", DIR), Entry("a/.wh..."), ], "a/.wh..."),
        "whiteout of dot": ([Entry(".wh..", data=b"")], ".wh.."),
        "file then child": ([Entry("f", data=b"x"), Entry("f/evil", data=b"x")], "f/evil"),
    }


@pytest.mark.parametrize("case", list(hostile_cases("/c")))
def test_hostile_layer_is_rejected_naming_the_entry(tmp_path, canary, case):
    entries, culprit = hostile_cases(str(canary))[case]
    before = snapshot(canary)
    with pytest.raises(UnpackError) as caught:
        unpack(tmp_path, layer_tar(entries))
    assert caught.value.entry == culprit, str(caught.value)
    assert repr(culprit) in str(caught.value)
    assert snapshot(canary) == before


def test_devices_are_skipped_setuid_stripped_overlay_xattrs_dropped(tmp_path, canary):
    before = snapshot(canary)
    layer = unpack(tmp_path, layer_tar([
        Entry("null", CHR, devmajor=1, devminor=3),
        Entry("sda", BLK, devmajor=8, devminor=0),
        Entry("whiteout-lookalike", CHR, devmajor=0, devminor=0),
        Entry("suid", data=b"#!/bin/sh\n", mode=0o6755),
        Entry("sticky", DIR, mode=0o1777),
        Entry("x", data=b"x", xattrs={
            "user.overlay.opaque": "y", "trusted.overlay.opaque": "y", "user.overlay.redirect": "/etc",
            "security.capability": "\x01", "user.keep": "kept"}),
        Entry("d", DIR, xattrs={"user.overlay.opaque": "y"}),
    ]))
    assert sorted(os.listdir(layer)) == ["d", "sticky", "suid", "x"]
    assert stat.S_IMODE((layer / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((layer / "sticky").stat().st_mode) == 0o1777
    assert os.listxattr(layer / "x") == ["user.keep"]
    assert os.listxattr(layer / "d") == []
    assert snapshot(canary) == before


def test_whiteouts_and_opaque_dirs_become_the_rootless_overlay_format(tmp_path):
    layer = unpack(tmp_path, layer_tar([
        Entry("etc", DIR), Entry("etc/.wh.passwd"), Entry("opq", DIR), Entry("opq/.wh..wh..opq"),
        Entry("opq/new", data=b"n")]))
    st = (layer / "etc/passwd").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(layer / "opq", "user.overlay.opaque") == b"y"
    assert not (layer / "opq/.wh..wh..opq").exists()


def test_decompression_bomb_is_stopped_at_the_byte_cap(tmp_path):
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    header = tarfile.TarInfo("bomb")
    header.size = 256 << 20
    parts = [compressor.compress(header.tobuf(format=tarfile.PAX_FORMAT))]
    zeros = bytes(1 << 20)
    parts += [compressor.compress(zeros) for _ in range(256)]
    parts.append(compressor.flush())
    blob = b"".join(parts)
    assert len(blob) < 2 << 20
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(UnpackError, match="decompression bomb") as caught:
        unpack_layer(io.BytesIO(blob), dest, UnpackLimits(max_bytes=32 << 20))
    assert caught.value.entry == "bomb"


def test_too_many_entries_are_refused(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for number in range(100_000):
            tar.addfile(tarfile.TarInfo(f"f{number}"))
    with pytest.raises(UnpackError, match="more than 50000 entries") as caught:
        unpack(tmp_path, out.getvalue(), how="none")
    assert caught.value.entry == "f50000"


def test_type_flip_across_layers_stays_in_each_layer(tmp_path, canary):
    """A lower layer's symlink is never followed by an upper layer's entries: each layer
    unpacks into its own directory."""
    before = snapshot(canary)
    lower = unpack(tmp_path / "1" if (tmp_path / "1").mkdir() is None else tmp_path,
                   layer_tar([Entry("x", SYM, linkname=str(canary))]))
    upper = unpack(tmp_path / "2" if (tmp_path / "2").mkdir() is None else tmp_path,
                   layer_tar([Entry("x", DIR), Entry("x/file", data=b"evil")]))
    assert (lower / "x").is_symlink()
    assert (upper / "x").is_dir() and not (upper / "x").is_symlink()
    assert snapshot(canary) == before


def test_within_a_layer_later_entries_replace_earlier_ones(tmp_path, canary):
    layer = unpack(tmp_path, layer_tar([
        Entry("d", DIR), Entry("d/f", data=b"old"), Entry("d", SYM, linkname=str(canary)),
        Entry("f", data=b"one"), Entry("f", data=b"two"), Entry("l", LNK, linkname="f"),
        Entry("ro", DIR, mode=0o555), Entry("ro/child", data=b"c", mode=0o444)]))
    assert (layer / "d").is_symlink()
    assert (layer / "f").read_bytes() == b"two" and (layer / "l").stat().st_ino == (layer / "f").stat().st_ino
    assert (layer / "ro/child").read_bytes() == b"c"
    assert stat.S_IMODE((layer / "ro").stat().st_mode) == 0o555
    os.chmod(layer / "ro", 0o755)  # let pytest's tmp_path cleanup in


@pytest.mark.parametrize("how", ["gzip", "zstd", "none"])
def test_compressions_and_diff_id(tmp_path, how):
    raw = layer_tar([Entry("a", data=b"hello")])
    import hashlib
    dest = tmp_path / "layer"
    dest.mkdir()
    blob, _ = compress(raw, how)
    stats = unpack_layer(io.BytesIO(blob), dest, UnpackLimits(), "sha256:" + hashlib.sha256(raw).hexdigest())
    assert (dest / "a").read_bytes() == b"hello" and stats.entries == 1
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(UnpackError, match="hashes to"):
        unpack_layer(io.BytesIO(blob), other, UnpackLimits(), "sha256:" + "0" * 64)


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    blob = gzip.compress(layer_tar([Entry("a", data=b"x" * 5000)]))
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(UnpackError, match="corrupt layer"):
        unpack_layer(io.BytesIO(blob[: len(blob) // 2]), dest, UnpackLimits())
