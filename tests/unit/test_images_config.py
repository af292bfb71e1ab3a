"""The image settings: read once, and read again when their file or environment changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.images import config


def test_settings_are_read_again_when_their_file_or_environment_changes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tmp_path / "images.toml"
    monkeypatch.setenv("SANDBOX_IMAGES_CONFIG", str(settings))
    monkeypatch.delenv("SANDBOX_IMAGE_STORE", raising=False)
    settings.write_text('store = "/srv/a"\n')
    first = config.load()
    assert first.store == Path("/srv/a")
    assert config.load() is first  # nothing changed: not parsed again
    settings.write_text('store = "/srv/bb"\nmax_parallel = 2\n')
    assert (config.load().store, config.load().max_parallel) == (Path("/srv/bb"), 2)
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", "/srv/env")
    assert config.load().store == Path("/srv/env")
    monkeypatch.delenv("SANDBOX_IMAGE_STORE")
    settings.unlink()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert config.load().store == tmp_path / "data" / "sandbox" / "images"
    settings.write_text("max_parallel = [")
    with pytest.raises(config.ImageError):
        config.load()
