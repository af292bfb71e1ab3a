"""Building an image (not a timed test): `sandbox build` against rootless `podman build`
on the same Dockerfile and the same base - the Debian 12 + python3 image the images part
uses, imported into each from one OCI layout (no registry, no network).

    .venv/bin/python bench/build.py [--runs N]      (or: bench/run --only build)

Each tool builds a small Python image (COPY of an app, a RUN that byte-compiles it and
writes data, ENV, WORKDIR, CMD) ``runs`` times from an empty build cache ("cold": the
sandbox's store without its cache and the built image; podman `--no-cache`) and as many
times again with everything cached ("cached"), and reports the wall times and the size
of the layers the build added to its base (gzip, as pushed). Nothing is pulled: both start from the base
already stored.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from imagebuild import debian_python_rootfs, oci_layout  # noqa: E402

from bench.common import REPO, timed, write_raw  # noqa: E402
from sandbox.images.store import remove_tree  # noqa: E402

BASE = "bench/python:3.11"
DOCKERFILE = """\
FROM {base}
ENV APP=/srv/app PYTHONDONTWRITEBYTECODE=1
WORKDIR /srv/app
COPY app/ ./
RUN python3 -m compileall -q /srv/app && \\
    python3 -c "import json; json.dump(list(range(100000)), open('/srv/data.json', 'w'))"
CMD ["python3", "/srv/app/main.py"]
"""
APP = {
    "main.py": "import lib\nprint(lib.answer())\n",
    "lib.py": "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(500)) + "def answer():\n    return 42\n",
}


def _sandbox(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox.cli", *args], capture_output=True, text=True, check=True,
                          env=env, cwd=REPO)


def _podman(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Rootless podman with a storage of its own (the bench's, removed after), on runc:
    its crun refuses a hybrid cgroup host (bench/peers.py); the overlay driver, native
    rootless overlay on this kernel (the default can fall back to vfs, a copy per layer)."""
    options = ["--runtime", "runc", "--storage-driver", "overlay", "--root", str(root / "storage"),
               "--runroot", str(root / "run")]
    done = subprocess.run(["podman", *options, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"podman {args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def _context(work: Path, base: str) -> Path:
    context = work / f"context-{base.replace('/', '-').replace(':', '-')}"
    (context / "app").mkdir(parents=True)
    (context / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    for name, text in APP.items():
        (context / "app" / name).write_text(text)
    return context


def _sandbox_side(work: Path, layout: Path, runs: int) -> dict[str, Any]:
    store = work / "store"
    env = {**os.environ, "SANDBOX_IMAGE_STORE": str(store)}
    _sandbox("import", str(layout), BASE, env=env)
    context = _context(work, BASE)
    build = ["build", "-t", "bench/app:1", str(context)]
    cold, cached = [], []
    for _ in range(runs):
        if "bench/app" in _sandbox("images", env=env).stdout:
            _sandbox("rmi", "bench/app:1", env=env)
        remove_tree(store / "build-cache")
        _sandbox("gc", env=env)
        cold.append(timed(lambda: _sandbox(*build, env=env)))
    for _ in range(runs):
        cached.append(timed(lambda: _sandbox(*build, env=env)))
    check = _sandbox("run", "--image", "bench/app:1", env=env)
    assert check.stdout.strip() == "42", check.stdout
    built = json.loads(_sandbox("inspect", "bench/app:1", env=env).stdout)
    base = json.loads(_sandbox("inspect", BASE, env=env).stdout)
    return {"cold_s": cold, "cached_s": cached,
            "added_bytes": sum(layer["size"] for layer in built["layers"][len(base["layers"]):])}


def _podman_side(work: Path, layout: Path, runs: int) -> dict[str, Any]:
    root = work / "podman"
    _podman(root, "pull", "-q", f"oci:{layout}")
    image_id = _podman(root, "images", "-q").stdout.split()[0]
    _podman(root, "tag", image_id, f"localhost/{BASE}")
    context = _context(work, f"localhost/{BASE}")
    build = ["build", "-q", "--network", "none", "-t", "localhost/bench/app:1", str(context)]
    cold = [timed(lambda: _podman(root, *build[:1], "--no-cache", *build[1:])) for _ in range(runs)]
    cached = [timed(lambda: _podman(root, *build)) for _ in range(runs)]
    check = _podman(root, "run", "--rm", "--network", "none", "localhost/bench/app:1")
    assert check.stdout.strip() == "42", check.stdout
    # What it added, measured as the sandbox's is: its layers gzip-compressed, as pushed.
    out = work / "podman-out"
    _podman(root, "push", "-q", "localhost/bench/app:1", f"oci:{out}:app")
    index = json.loads((out / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((out / "blobs/sha256" / manifest_digest).read_text())
    return {"cold_s": cold, "cached_s": cached, "added_bytes": sum(layer["size"] for layer in manifest["layers"][1:])}


def measure(runs: int) -> dict[str, Any]:
    # Hex only: podman names an image pulled from an OCI layout after its path, which must
    # then be a valid reference (mkdtemp's "_" beside "-" is not).
    work = Path(tempfile.gettempdir()) / f"sandbox-bench-build-{secrets.token_hex(6)}"
    work.mkdir(mode=0o700)
    try:
        raw = debian_python_rootfs().read_bytes()
        layout = oci_layout(work / "layout", [raw], compression="gzip", history=["mmdebstrap minbase + python3"],
                            config={"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["python3"]})
        figures = {"runs": runs, "sandbox": _sandbox_side(work, layout, runs)}
        if shutil.which("podman"):
            figures["podman"] = _podman_side(work, layout, runs)
    finally:
        if (work / "podman").exists():
            subprocess.run(["podman", "unshare", "rm", "-rf", str(work / "podman")], capture_output=True)
        remove_tree(work)
    for tool in ("sandbox", "podman"):
        if tool in figures:
            side = figures[tool]
            print(f"{tool:8} build: cold median {statistics.median(side['cold_s']):6.2f} s, "
                  f"cached median {statistics.median(side['cached_s']):6.2f} s")
    print(f"layers added to the base (gzip): sandbox {figures['sandbox']['added_bytes'] / 1e3:.0f} kB"
          + (f", podman {figures['podman']['added_bytes'] / 1e3:.0f} kB" if "podman" in figures else ""))
    return figures


def run(quick: bool) -> dict[str, Any]:
    return measure(1 if quick else 3)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    write_raw("build", measure(parser.parse_args().runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
