"""The zygote: a small, single-purpose process that starts every sandbox of one
supervisor (a CLI run, or one worker slot's launcher).

Why a separate process: it lives in the template user namespace and holds the
template's mount namespace (``template.py``), so a sandbox's namespaces are one setns(2)
and one clone(2) away. It starts the spawner once (the C init in MODE "serve",
``native/init.c``), a child of the supervisor that the supervisor asks for each sandbox
directly, and builds each image's read-only base once, when the supervisor first asks
for it (``stages.build_image_base``): a sandbox of that image is then spawned as a
host-image one is, on a copy of the base. A fork copies the parent's page tables and afterwards every
page either side writes is copied again (copy-on-write): forking sandboxes from the
supervisor - a Python with the runner, cgroups, protocol and image code loaded, busy
between forks - made page faults the largest single cost of a job. The zygote is a
fresh interpreter (``python -S``, only the modules a sandbox runs) that does nothing but
wait for requests and start sandboxes, so there is little to copy.

Protocol on a SOCK_SEQPACKET pair: at start-up the zygote answers ``{"spawner": PID}``
with the spawner's request channel (SCM_RIGHTS) once the template is built, or
``{"error": ...}``. Then each request is answered before the next: ``{"tree": PATH}``
with a detached clone of that host directory, ``{"image": {"layers": [...], "workdir":
...}}`` with the mount namespace of that image's base, each as SCM_RIGHTS with ``{}``,
or ``{"error": ...}``. EOF on the channel ends it.

The spawner's protocol (same kind of pair): a request is the C init's arguments
(``stages.init_arguments``), NUL-terminated, with its fds (``stages.init_fds``); the
answer is B's pid and a newline, or a setup_error report line.

Run as: python -S -m sandbox.zygote FD ID_MAPS (``ids.IdPlan.zygote_argument``)
"""

from __future__ import annotations

import gc
import json
import os
import select
import socket
import sys

from sandbox import stages
from sandbox.errors import SandboxError, SetupError
from sandbox.linux import syscalls as sc
from sandbox.template import IdMaps, MountBases, enter_template

# Not typing.TYPE_CHECKING: the zygote does without the typing module (see stages.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_MAX_REQUEST = 1 << 20
# Image bases a supervisor keeps (each a mount namespace: a handful of mounts and a small
# tmpfs); the least recently built goes first.
MAX_IMAGE_BASES = 16


class Zygote:
    """The supervisor's handle on its zygote process and the zygote's spawner (both
    started here, children of ours)."""

    def __init__(self, id_maps: str) -> None:
        """``id_maps``: the template's id maps (``ids.IdPlan.zygote_argument``)."""
        import subprocess  # here, not at the top: the zygote process imports this module too

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-S", "-m", "sandbox.zygote", str(theirs.fileno()), id_maps],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(_import_path())},
            )
        self.channel = ours
        # Image bases by what they were built from (``image_base``); the fds are ours.
        self._bases: dict[tuple[tuple[tuple[str, int], ...], str], int] = {}
        self.spawner: socket.socket | None = None
        self.spawner_pid = 0
        self._spawner_exit = -1  # a pidfd: readable once the spawner has exited
        try:
            raw, fds, _, _ = socket.recv_fds(ours, _MAX_REQUEST, 1)
            if fds:
                os.set_inheritable(fds[0], False)
                self.spawner = socket.socket(fileno=fds[0])
            self.spawner_pid = int(_decoded(raw, self.process)["spawner"])
            self._spawner_exit = os.pidfd_open(self.spawner_pid)
            if self.spawner is None:
                raise SetupError("the zygote sent no spawner channel")
        except (SetupError, OSError) as exc:
            self.close()
            raise SetupError(f"cannot start the zygote: {exc}") from exc

    def spawn(self, arguments: list[str], fds: list[int]) -> None:
        """Ask the spawner for a sandbox's init (our child): ``arguments``
        and ``fds`` as ``stages.init_arguments`` and ``stages.init_fds`` make them;
        ``spawned`` gives its pid."""
        assert self.spawner is not None  # set by __init__, or it raised
        _send(self.spawner, b"".join(argument.encode() + b"\0" for argument in arguments), fds, "spawner")

    def spawned(self) -> int:
        """The pid of the init of the spawner's oldest unanswered request (waits for
        it). Raises SetupError if it could not be started."""
        assert self.spawner is not None
        try:
            raw = self.spawner.recv(_MAX_REQUEST)
        except OSError as exc:
            raise SetupError(f"the sandbox spawner is gone: {exc}") from exc
        if raw.endswith(b"\n") and raw[:-1].isdigit():
            return int(raw)
        if not raw:
            raise SetupError("the sandbox spawner exited")
        report = json.loads(raw)  # a setup_error line (native/report.c)
        raise SetupError(report.get("message", "the sandbox spawner failed"))

    def clone_tree(self, path: str) -> int:
        """A detached clone of the host directory ``path`` (an fd the caller owns), for a
        sandbox init to mount a tree from (read-only: ``native/trees.c``). Raises
        SetupError."""
        return self._ask({"tree": path}, "tree")

    def image_base(self, layers: list[str], workdir: str) -> int:
        """The mount namespace of the read-only base of the image of ``layers`` with
        ``workdir`` (an fd this object keeps): built by the zygote on first use, then
        kept for as long as the zygote lives. A layer directory replaced since (removed
        by gc, unpacked again) makes another base: a base keeps the directories it was
        built from. Raises SetupError."""
        try:
            key = (tuple((layer, os.stat(layer).st_ino) for layer in layers), workdir)
        except OSError as exc:
            raise SetupError(f"cannot find the image's layers: {exc}") from exc
        base = self._bases.get(key)
        if base is None:
            if len(self._bases) >= MAX_IMAGE_BASES:
                os.close(self._bases.pop(next(iter(self._bases))))
            base = self._bases[key] = self._ask({"image": {"layers": layers, "workdir": workdir}}, "image base")
        return base

    def _ask(self, request: dict[str, Any], what: str) -> int:
        _send(self.channel, json.dumps(request).encode(), [], "zygote")
        try:
            raw, fds, _, _ = socket.recv_fds(self.channel, _MAX_REQUEST, 1)
        except OSError as exc:
            raise SetupError(f"the zygote is gone: {exc}") from exc
        if fds:
            os.set_inheritable(fds[0], False)
            return fds[0]
        _decoded(raw, self.process)  # raises its error
        raise SetupError(f"the zygote sent no {what}")

    def alive(self) -> bool:
        return self.process.poll() is None and not select.select([self._spawner_exit], [], [], 0)[0]

    def close(self) -> None:
        """EOF tells the zygote and the spawner to exit; neither has children left by
        then (a spawner's Bs are ours)."""
        self.channel.close()
        self.process.wait()
        for base in self._bases.values():
            os.close(base)
        self._bases.clear()
        if self.spawner is not None:
            self.spawner.close()
        if self.spawner_pid > 0:
            try:
                os.waitpid(self.spawner_pid, 0)
            except ChildProcessError:
                pass  # reaped already (a waitpid(-1) of the supervisor's)
        if self._spawner_exit >= 0:
            os.close(self._spawner_exit)


def _send(channel: socket.socket, message: bytes, fds: list[int], name: str) -> None:
    try:
        socket.send_fds(channel, [message], fds)
    except OSError as exc:
        raise SetupError(f"the {name} is gone: {exc}") from exc


def _decoded(raw: bytes, process: Any) -> dict[str, Any]:
    """A zygote's JSON answer; raises SetupError for its error or its end."""
    if not raw:
        raise SetupError(f"the zygote exited (status {process.wait()})")
    answer: dict[str, Any] = json.loads(raw)
    if "error" in answer:
        raise SetupError(answer["error"])
    return answer


def _import_path() -> list[str]:
    """Where this process finds its modules: the project (an editable install is found
    through a hook in site, which ``-S`` skips) and then its own search path."""
    project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [project, *(entry for entry in sys.path if entry and os.path.isdir(entry))]


def serve(channel: socket.socket, id_maps: IdMaps | None) -> None:
    sc.set_process_name("sandbox-zygote")
    # SCHED_BATCH (inherited by the spawner, and so by every sandbox init and program
    # stage until its job arrives): the same share of the CPU, but a zygote or a sandbox being
    # prepared never preempts a running task when it wakes. Otherwise the zygote, woken
    # by an order, took the CPU from the launcher that sent it - and a job arriving then
    # waited behind a clone and a sandbox's set-up.
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        init_fd = stages.open_init_binary()
        bases = enter_template(id_maps)
        # What the C init needs (entering the template, its mounts, host name and
        # loopback; the job's id: its files and its program stage's id maps; the files
        # a job leaves to collect, whatever their modes) and its program stage before it
        # drops everything (the cgroup namespace, the bounding set), and, until its root
        # is set up, what an image's writable layer acts with (copying up any file of
        # the image's, with its owner, times and mode bits; the working directory handed
        # to the job's id): kept across the exec of the C init.
        sc.keep_across_exec(sc.CAP_SYS_ADMIN, sc.CAP_SYS_CHROOT, sc.CAP_NET_ADMIN, sc.CAP_SETPCAP, sc.CAP_SETUID,
                            sc.CAP_SETGID, sc.CAP_DAC_READ_SEARCH, sc.CAP_CHOWN, sc.CAP_DAC_OVERRIDE, sc.CAP_FOWNER,
                            sc.CAP_FSETID)
        spawner, spawner_pid = stages.start_spawner(bases.template_fd, init_fd)
    except (SandboxError, OSError) as exc:
        channel.send(json.dumps({"error": str(exc)}).encode())
        return
    with spawner:
        socket.send_fds(channel, [json.dumps({"spawner": spawner_pid}).encode()], [spawner.fileno()])
    # Everything loaded so far is permanent: keep the collector from touching (and so
    # copying) those pages in every image's builder.
    gc.freeze()
    while True:
        raw = channel.recv(_MAX_REQUEST)
        if not raw:
            return
        request = json.loads(raw)
        if "tree" in request:
            _clone_tree(channel, request["tree"], bases)
        else:
            _image_base(channel, request["image"], bases)


def _clone_tree(channel: socket.socket, path: str, bases: MountBases) -> None:
    """Answer a tree request: the clone of ``path``, seen from the copy of the host's tree."""
    try:
        sc.setns(bases.host_fd, sc.CLONE_NEWNS)
        clone = sc.open_tree(sc.AT_FDCWD, path, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
    except OSError as exc:
        channel.send(json.dumps({"error": f"cannot clone the tree {path}: {exc.strerror}"}).encode())
        return
    try:
        socket.send_fds(channel, [b"{}"], [clone])
    finally:
        os.close(clone)


def _image_base(channel: socket.socket, image: dict[str, Any], bases: MountBases) -> None:
    """Answer an image request: the mount namespace of its base."""
    try:
        base = stages.build_image_base(image["layers"], image["workdir"], bases.host_fd)
    except (SandboxError, OSError) as exc:
        channel.send(json.dumps({"error": str(exc)}).encode())
        return
    try:
        socket.send_fds(channel, [b"{}"], [base])
    finally:
        os.close(base)


def main(argv: list[str]) -> int:
    with socket.socket(fileno=int(argv[1])) as channel:
        serve(channel, IdMaps.parse(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
