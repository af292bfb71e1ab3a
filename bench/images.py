"""Image benchmark (not a timed test): cold pull + unpack of a Debian 12 python3 image
against `skopeo copy` + `umoci unpack` in the same run, and what a cached image adds
to a job's start-up.

    .venv/bin/python bench/images.py [--runs N]      (or everything: bench/run)

Starts its own docker-registry on 127.0.0.1, builds the image with mmdebstrap (cached
like the tests' one), prints figures and writes raw JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from imagebuild import debian_python_layout  # noqa: E402
from registries import skopeo_push, start_registry  # noqa: E402

from bench.common import Worker, show, target, timed, write_raw  # noqa: E402
from sandbox.images.config import ImagesConfig  # noqa: E402
from sandbox.images.pull import pull  # noqa: E402
from sandbox.images.runtime import lease_image  # noqa: E402
from sandbox.images.store import Store, remove_tree  # noqa: E402
from sandbox.models import Job, Limits, Result  # noqa: E402
from sandbox.runner import Runner  # noqa: E402
from worker.client import Client  # noqa: E402


def through_warm_worker(image: str, jobs: int) -> dict[str, list[float]]:
    """``alternating_walls`` through a worker that keeps sandboxes of both prepared
    (``--warm-for``): what a job on an image costs where the image is one a worker is
    told to expect."""
    with Worker(slots=2, warm=4, warm_for=(f"count=4,image={image}",)) as worker, Client(worker.socket) as client:
        return alternating_walls(client.run, image, jobs, warm_up=10)


def alternating_walls(run: Callable[[Job], Result], image: str, jobs: int, *, warm_up: int = 0,
                      between: Callable[[], object] = lambda: None) -> dict[str, list[float]]:
    """ms per /bin/true job by ``run``, on the host image and on ``image`` in turn,
    ``jobs`` of each after ``warm_up`` rounds; ``between`` runs after each job, untimed."""
    walls: dict[str, list[float]] = {"host": [], "image": []}
    for round_ in range(warm_up + jobs):
        for name in ("host", image):
            start = time.perf_counter()
            result = run(Job(cmd=["/bin/true"], image=name, limits=Limits(wall_time="10s")))
            elapsed = (time.perf_counter() - start) * 1e3
            assert result.status.value == "ok", result
            if round_ >= warm_up:
                walls["host" if name == "host" else "image"].append(elapsed)
            between()
    return walls


def measure(runs: int, jobs: int) -> dict:
    """Cold pulls per tool (``runs``) and ``jobs`` /bin/true jobs per image."""
    work = Path(tempfile.mkdtemp(prefix="sandbox-bench-images-"))
    users_store = os.environ.get("SANDBOX_IMAGE_STORE")
    registry = start_registry(work / "registry")
    try:
        layout = debian_python_layout(work / "layout", "gzip")  # umoci 0.4.7 has no zstd
        ref = f"{registry.host}/bench/python:3.11"
        skopeo_push(f"oci:{layout}", ref, work)
        ours, theirs = [], []
        for run in range(runs):
            store_dir = work / f"store-{run}"
            config = ImagesConfig(store=store_dir, insecure=frozenset({registry.host}))
            ours.append(timed(lambda store_dir=store_dir, config=config: pull(Store(store_dir), config, ref)))
            oci, bundle = work / f"oci-{run}", work / f"bundle-{run}"

            def skopeo_umoci(oci: Path = oci, bundle: Path = bundle) -> None:
                env = {**os.environ, "REGISTRY_AUTH_FILE": str(work / "skopeo-auth.json")}
                subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:b"],
                               check=True, env=env)
                subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{oci}:b", str(bundle)], check=True,
                               capture_output=True)

            theirs.append(timed(skopeo_umoci))
            remove_tree(bundle)
            shutil.rmtree(oci)
        store_dir = work / "store-0"
        os.environ["SANDBOX_IMAGE_STORE"] = str(store_dir)
        lease_us = []
        for _ in range(200):
            start = time.perf_counter()
            lease_image("bench/python:3.11").release()
            lease_us.append((time.perf_counter() - start) * 1e6)
        runner = Runner()
        try:  # (the finished sandbox's cleanup between jobs, outside the timed part)
            walls = alternating_walls(runner.run, "bench/python:3.11", jobs, warm_up=10, between=runner.tidy)
        finally:
            runner.close()
        warm_walls = through_warm_worker("bench/python:3.11", jobs)
        figures = {
            "pull_unpack_s": {"sandbox": ours, "skopeo+umoci": theirs},
            "image_bytes": sum(p.stat().st_size for p in (store_dir / "blobs/sha256").iterdir()),
            "lease_us_median": statistics.median(lease_us),
            "job_ms_median": {k: statistics.median(v) for k, v in walls.items()},
            "job_ms_raw": walls,
            "start_up_added_ms": statistics.median(walls["image"]) - statistics.median(walls["host"]),
            "warm_worker_ms_median": {k: statistics.median(v) for k, v in warm_walls.items()},
            "warm_start_up_added_ms": statistics.median(warm_walls["image"]) - statistics.median(warm_walls["host"]),
            "machine": os.uname().release,
        }
    finally:
        # The runner found the image through the variable: the later parts must use the
        # user's own store again, not recreate this one (the judge part stores its
        # language image there).
        if users_store is None:
            os.environ.pop("SANDBOX_IMAGE_STORE", None)
        else:
            os.environ["SANDBOX_IMAGE_STORE"] = users_store
        registry.stop()
        remove_tree(work)
    figures["targets"] = [
        target("start-up a cached image adds to a job (ms)", figures["start_up_added_ms"], 0.5),
        target("start-up a cached image adds to a job through a worker keeping it warm (ms)",
               figures["warm_start_up_added_ms"], 0.5),
    ]
    print(f"cold pull + unpack, Debian 12 + python3 ({figures['image_bytes'] / 1e6:.0f} MB compressed):")
    print(f"  sandbox pull          median {statistics.median(ours):6.2f} s  runs {[round(x, 2) for x in ours]}")
    print(f"  skopeo copy + umoci   median {statistics.median(theirs):6.2f} s  runs {[round(x, 2) for x in theirs]}")
    print(f"store lookup + lease of a cached image: median {figures['lease_us_median']:.0f} us")
    print(f"job wall (runner.run, /bin/true): host image {figures['job_ms_median']['host']:.2f} ms, "
          f"cached image {figures['job_ms_median']['image']:.2f} ms -> "
          f"image adds {figures['start_up_added_ms']:.2f} ms")
    warm = figures["warm_worker_ms_median"]
    print(f"job wall (a worker warm for both, /bin/true): host image {warm['host']:.2f} ms, cached image "
          f"{warm['image']:.2f} ms -> image adds {figures['warm_start_up_added_ms']:.2f} ms")
    for figure in figures["targets"]:
        show(figure)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="cold pulls per tool")
    parser.add_argument("--jobs", type=int, default=200, help="jobs per image for the start-up figure")
    args = parser.parse_args()
    write_raw("images", measure(args.runs, args.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
