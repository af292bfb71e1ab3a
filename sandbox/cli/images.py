"""The image subcommands of ``sandbox``: pull, push, images, import (load), save,
inspect, rmi, gc.

Thin like the rest of the CLI: argparse in, store operations, plain text out. Errors
raise ``SandboxError`` and the main CLI turns them into exit status 125. Progress bars
(rich) only when stderr is a terminal, so scripts and CI logs stay clean. The image code
(the registry client and httpx with it) is imported by the commands that use it: every
``sandbox`` command builds this parser, and ``sandbox run`` on the host image must not
pay for importing an HTTP client.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.images.config import ImagesConfig
    from sandbox.images.pull import Progress
    from sandbox.images.store import Store


def add_commands(commands: Any) -> None:
    pull = commands.add_parser("pull", help="download an image from a registry into the local store")
    pull.add_argument("reference", help="e.g. 127.0.0.1:5000/judge/python:3.11 or python@sha256:...")
    pull.add_argument("--platform", help="os/arch[/variant] to pick from a multi-platform index")
    pull.set_defaults(handler=_pull)

    images = commands.add_parser("images", help="list stored images")
    images.add_argument("--json", action="store_true")
    images.set_defaults(handler=_images)

    push = commands.add_parser("push", help="upload a stored image to a registry (the blobs it lacks, then the "
                                            "manifest)")
    push.add_argument("image", help="a stored image, e.g. 127.0.0.1:5000/judge/python:3.11")
    push.add_argument("destination", nargs="?", help="where to, e.g. registry.internal/judge/python:3.11 "
                                                     "(default: the image's own reference)")
    push.set_defaults(handler=_push)

    save = commands.add_parser("save", help="write a stored image as an OCI layout archive (for sandbox load, "
                                            "skopeo, podman)")
    save.add_argument("image")
    save.add_argument("-o", "--output", type=Path, required=True, help="the archive to write")
    save.set_defaults(handler=_save)

    imp = commands.add_parser("import", aliases=["load"],
                              help="store an OCI layout directory or archive, or a docker save archive")
    imp.add_argument("source", type=Path)
    imp.add_argument("name", help="reference to tag it with, e.g. judge/cpp:13")
    imp.add_argument("--platform", help="os/arch[/variant] when the source is multi-platform")
    imp.set_defaults(handler=_import)

    inspect = commands.add_parser("inspect", help="show a stored image as JSON")
    inspect.add_argument("image")
    inspect.set_defaults(handler=_inspect)

    rmi = commands.add_parser("rmi", help="remove image references (the data goes at the next gc)")
    rmi.add_argument("images", nargs="+")
    rmi.set_defaults(handler=_rmi)

    gc = commands.add_parser("gc", help="delete what no reference and no running job uses")
    gc.set_defaults(handler=_gc)


def _store() -> tuple[Store, ImagesConfig]:
    from sandbox.images import config as images_config
    from sandbox.images.store import Store

    config = images_config.load()
    return Store(config.store), config


class _RichProgress:
    """One bar per layer download, on stderr."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn
        from rich.progress import Progress as Bars

        self.bars = Bars(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                         transient=False)
        self.tasks: dict[str, Any] = {}

    def start(self, key: str, total: int | None) -> None:
        self.tasks[key] = self.bars.add_task(key, total=total)

    def advance(self, key: str, amount: int) -> None:
        self.bars.update(self.tasks[key], advance=amount)

    def finish(self, key: str) -> None:
        self.bars.update(self.tasks[key], description=f"{key} done")


def _pull(args: argparse.Namespace) -> int:
    from sandbox.images.pull import NoProgress, pull

    store, config = _store()
    progress: Progress = NoProgress()
    if sys.stderr.isatty():
        progress = _RichProgress()
        with progress.bars:
            ref, record = pull(store, config, args.reference, platform=args.platform, progress=progress)
    else:
        ref, record = pull(store, config, args.reference, platform=args.platform, progress=progress)
    print(f"{ref} {record.id}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from sandbox.images.importer import import_image

    store, config = _store()
    ref, record = import_image(store, config, args.source, args.name, args.platform)
    print(f"{ref} {record.id}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from sandbox.images.push import push

    store, config = _store()
    report = push(store, config, args.image, args.destination)
    print(f"{report.reference}@{report.digest} ({report.uploaded} blobs uploaded, {report.skipped} there already)")
    return 0


def _save(args: argparse.Namespace) -> int:
    from sandbox.images.export import save

    store, _ = _store()
    digest = save(store, args.image, args.output)
    print(f"{args.output} {digest}")
    return 0


def _images(args: argparse.Namespace) -> int:
    from sandbox.images.reference import parse

    store, _ = _store()
    records = {r.id: r for r in store.records()}
    uses: dict[str, int] = {}
    for record in records.values():
        for layer in record.layers:
            uses[layer.chain_id] = uses.get(layer.chain_id, 0) + 1
    rows: list[dict[str, Any]] = []
    for name, image in sorted(store.refs().items()):
        found = records.get(image)
        if found is None:
            continue
        ref = parse(name)
        rows.append({
            "repository": ref.name, "tag": ref.tag or "<none>", "id": image, "digest": found.manifest_digest,
            "size": sum(layer.size for layer in found.layers), "layers": len(found.layers),
            "shared_layers": sum(1 for layer in found.layers if uses[layer.chain_id] > 1),
        })
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    print(f"{'REPOSITORY':40} {'TAG':12} {'IMAGE ID':14} {'SIZE':>10} LAYERS (SHARED)")
    for row in rows:
        print(f"{row['repository']:40} {row['tag']:12} {row['id'][7:19]:14} {_human(row['size']):>10} "
              f"{row['layers']} ({row['shared_layers']})")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    store, _ = _store()
    _, record = store.lookup(args.image)
    data = asdict(record)
    data["references"] = sorted(n for n, i in store.refs().items() if i == record.id)
    json.dump(data, sys.stdout, indent=1)
    print()
    return 0


def _rmi(args: argparse.Namespace) -> int:
    store, _ = _store()
    with store.shared():
        for text in args.images:
            name, record = store.lookup(text)
            names = [name] if name != record.id else [n for n, i in store.refs().items() if i == record.id]
            for ref_name in names:
                store.remove_ref(ref_name)
                print(f"untagged {ref_name}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    store, _ = _store()
    report = store.gc()
    print(f"removed {report.images} images, {report.layers} layers, {report.blobs} blobs ({_human(report.bytes)})")
    return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(size)
