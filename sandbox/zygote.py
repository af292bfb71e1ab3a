"""The zygote: a small, single-purpose process that starts every sandbox of one
supervisor (a CLI run, or one of a worker's launchers).

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
``{"error": ...}``. Then each request on it, ``{"image": {"layers": [...], "workdir":
...}}``, is answered with the mount namespace of that image's base (SCM_RIGHTS, with
``{}``) or ``{"error": ...}``; a second pair carries tree requests (``{"tree": PATH}``,
``{"bind": PATH}``, ``{"volume": NAME, "root": ROOT, "owner": ID}``, answered with a
detached clone of that directory, or ``{"refused": ...}`` for what the job named wrong;
with ``"cap": BYTES`` a volume is answered with its job's layer, an overlay, and the
layer's number ``{"layer": N}``, which ``{"end": N, "merge": BOOL}`` merges or drops).
EOF on the channel ends it.

The spawner's protocol (same kind of pair): a request is the C init's arguments
(``stages.init_arguments``), NUL-terminated, with its fds (``stages.init_fds``); the
answer is B's pid and a newline, or a setup_error report line.

Run as: python -S -m sandbox.zygote FD ID_MAPS (``ids.IdPlan.zygote_argument``)
"""

from __future__ import annotations

import errno
import gc
import json
import os
import select
import socket
import sys

from sandbox import child, rootfs, stages, volume_layer
from sandbox.errors import JobError, SandboxError, SetupError
from sandbox.linux import syscalls as sc
from sandbox.template import IdMaps, MountBases, enter_template

# Not typing.TYPE_CHECKING: the zygote does without the typing module (see stages.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class _Process(Protocol):
        """What the handle needs of its zygote process (``subprocess.Popen`` has it)."""

        def poll(self) -> int | None: ...

        def wait(self) -> int: ...

_MAX_REQUEST = 1 << 20
# Image bases a supervisor keeps (each a mount namespace: a handful of mounts and a small
# tmpfs); the least recently built goes first.
MAX_IMAGE_BASES = 16


class Zygote:
    """The supervisor's handle on its zygote process and the zygote's spawner (both
    started here, children of ours).

    Starting one does not wait for it: the template is built and the spawner started
    while the supervisor goes on (a Runner loads its profile meanwhile, ``sandbox run``
    its modules: ``StartedZygote``); ``wait_started``, or the first use that needs the
    spawner, waits for its answer."""

    def __init__(self, id_maps: str, *, forked: bool = False) -> None:
        """``id_maps``: the template's id maps (``ids.IdPlan.zygote_argument``).
        ``forked``: the zygote is a fork of this process instead of a fresh interpreter
        (``ForkedZygote``: for a supervisor that starts one sandbox and exits)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.trees, trees_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs, trees_theirs:
            self.process: _Process = (
                ForkedZygote(theirs, trees_theirs, id_maps) if forked else _interpreter(theirs, trees_theirs, id_maps)
            )
        self.channel = ours
        # Image bases by what they were built from (``image_base``); the fds are ours.
        self._bases: dict[tuple[tuple[tuple[str, int], ...], str], int] = {}
        self._spawner: socket.socket | None = None
        self._spawner_pid = 0
        self._spawner_exit = -1  # a pidfd: readable once the spawner has exited
        self._start_error: str | None = None  # why it did not start; None: started, or not known yet

    @property
    def spawner(self) -> socket.socket:
        """The spawner's request channel (waits for the zygote's start). Raises
        SetupError if it did not start."""
        self._started()
        assert self._spawner is not None  # or _started raised
        return self._spawner

    @property
    def spawner_pid(self) -> int:
        """The spawner's pid (waits for the zygote's start). Raises SetupError."""
        self._started()
        return self._spawner_pid

    def wait_started(self) -> None:
        """Wait for the start under way; whether it failed, ``alive`` says (and the
        first use raises why)."""
        try:
            self._started()
        except SetupError:
            pass

    def _started(self) -> None:
        """Read the zygote's first answer - the spawner's pid and channel, or why it
        did not start - once; raises SetupError if it did not."""
        if self._spawner is None and self._start_error is None:
            try:
                raw, fds, _, _ = socket.recv_fds(self.channel, _MAX_REQUEST, 1)
                if fds:
                    os.set_inheritable(fds[0], False)
                    self._spawner = socket.socket(fileno=fds[0])
                self._spawner_pid = int(_decoded(raw, self.process)["spawner"])
                self._spawner_exit = os.pidfd_open(self._spawner_pid)
                if self._spawner is None:
                    raise SetupError("the zygote sent no spawner channel")
            except (SetupError, OSError) as exc:
                self._start_error = f"cannot start the zygote: {exc}"
        if self._start_error is not None:
            raise SetupError(self._start_error)

    def spawn(self, arguments: list[str], fds: list[int]) -> None:
        """Ask the spawner for a sandbox's init (our child): ``arguments``
        and ``fds`` as ``stages.init_arguments`` and ``stages.init_fds`` make them;
        ``spawned`` gives its pid."""
        _send(self.spawner, b"".join(argument.encode() + b"\0" for argument in arguments), fds, "spawner")

    def spawned(self) -> int:
        """The pid of the init of the spawner's oldest unanswered request (waits for
        it). Raises SetupError if it could not be started."""
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
        return self._clone({"tree": path})[0]

    def clone_bind(self, path: str) -> int:
        """A detached clone of the host directory ``path`` for a bind: opened with no
        symlink followed in any of its components. Raises JobError for a path that is
        not such a directory, SetupError for the zygote's own failure."""
        return self._clone({"bind": path})[0]

    def volume_layer(self, root: str, name: str, owner: int, cap_bytes: int) -> tuple[int, int]:
        """A job's layer over the volume ``name`` under ``root`` (``volume_layer.py``),
        its files first given to ``owner`` as ``clone_volume`` does: an fd of the
        overlay to mount, and the layer's number for ``end_volume_layer``, which the
        caller must send once every process of the job is gone."""
        fd, answer = self._clone({"volume": name, "root": root, "owner": owner, "cap": cap_bytes})
        return fd, int(answer["layer"])

    def end_volume_layer(self, layer: int, *, merge: bool) -> None:
        """Merge the layer into its volume (``merge``), or drop it; either way the
        zygote lets go of it. Raises SetupError if the merge failed (the volume holds
        what was merged so far, each file whole)."""
        self._started()
        _send(self.trees, json.dumps({"end": layer, "merge": merge}).encode(), [], "zygote")
        try:
            raw = self.trees.recv(_MAX_REQUEST)
        except OSError as exc:
            raise SetupError(f"the zygote is gone: {exc}") from exc
        _decoded(raw, self.process)

    def clone_volume(self, root: str, name: str, owner: int | None) -> int:
        """A detached clone of the volume ``name`` under ``root`` (made if missing), its
        files first given to ``owner`` - an id of the template namespace: the job's, so
        that its files are its own; the template's 1000 gives them back to the
        supervisor's user; None leaves them as they are. Raises JobError or SetupError
        as ``clone_bind``."""
        return self._clone({"volume": name, "root": root, "owner": owner})[0]

    def open_as(self, owner: int, paths: list[str]) -> list[int]:
        """``paths`` opened for writing as ``owner``, an id of the template namespace (a
        job's): cgroup v1 lets a process join a cgroup through a tasks file only if the
        file's opener was that process's user. Raises SetupError."""
        self._started()
        _send(self.trees, json.dumps({"open_as": owner, "paths": paths}).encode(), [], "zygote")
        try:
            raw, fds, _, _ = socket.recv_fds(self.trees, _MAX_REQUEST, len(paths))
        except OSError as exc:
            raise SetupError(f"the zygote is gone: {exc}") from exc
        if len(fds) == len(paths):
            return fds
        for fd in fds:
            os.close(fd)
        _decoded(raw, self.process)  # raises its error
        raise SetupError("the zygote opened nothing")

    def _clone(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self._started()
        _send(self.trees, json.dumps(request).encode(), [], "zygote")
        try:
            raw, fds, _, _ = socket.recv_fds(self.trees, _MAX_REQUEST, 1)
        except OSError as exc:
            raise SetupError(f"the zygote is gone: {exc}") from exc
        if fds:
            os.set_inheritable(fds[0], False)
            return fds[0], json.loads(raw)
        if raw and "refused" in (answer := json.loads(raw)):
            raise JobError(answer["refused"])
        _decoded(raw, self.process)  # raises its error
        raise SetupError("the zygote sent no tree")

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
            self._started()  # (its answer comes first on the channel)
            if len(self._bases) >= MAX_IMAGE_BASES:
                os.close(self._bases.pop(next(iter(self._bases))))
            _send(self.channel, json.dumps({"image": {"layers": layers, "workdir": workdir}}).encode(), [], "zygote")
            base = self._bases[key] = self._answer(self.channel, "image base")
        return base

    def _answer(self, channel: socket.socket, what: str) -> int:
        """The fd the zygote answered a request with; raises SetupError for its error."""
        try:
            raw, fds, _, _ = socket.recv_fds(channel, _MAX_REQUEST, 1)
        except OSError as exc:
            raise SetupError(f"the zygote is gone: {exc}") from exc
        if fds:
            os.set_inheritable(fds[0], False)
            return fds[0]
        _decoded(raw, self.process)  # raises its error
        raise SetupError(f"the zygote sent no {what}")

    def alive(self) -> bool:
        """False once the zygote or its spawner has exited, or it did not start (does
        not wait for a start under way)."""
        if self._start_error is not None or self.process.poll() is not None:
            return False
        if self._spawner_exit < 0:
            return True
        # poll(2), not select(2): a launcher supervising many jobs holds fds past 1024.
        exited = select.poll()
        exited.register(self._spawner_exit, select.POLLIN)
        return not exited.poll(0)

    def close(self) -> None:
        """EOF tells the zygote and the spawner to exit; neither has children left by
        then (a spawner's Bs are ours). A start under way is waited for first: the
        spawner is our child, to be reaped here."""
        self.wait_started()
        self.channel.close()
        self.trees.close()
        self.process.wait()
        for base in self._bases.values():
            os.close(base)
        self._bases.clear()
        if self._spawner is not None:
            self._spawner.close()
        if self._spawner_pid > 0:
            try:
                os.waitpid(self._spawner_pid, 0)
            except ChildProcessError:
                pass  # reaped already (a waitpid(-1) of the supervisor's)
        self._spawner_pid = 0
        if self._spawner_exit >= 0:
            os.close(self._spawner_exit)
            self._spawner_exit = -1


class StartedZygote:
    """A forked zygote started before its Runner, with what the Runner's supply takes
    over with it: ``sandbox run`` starts it before it imports the rest of the engine,
    so that the template is built while it does. (A plain class: see ``stages.py``.)"""

    __slots__ = ("fingerprint", "id_plan", "zygote")

    def __init__(self) -> None:
        from sandbox.ids import plan_ids  # the supervisor's: not the zygote process's

        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)  # as a Runner makes itself, before its first child
        self.id_plan = plan_ids()
        self.fingerprint = rootfs.host_image_fingerprint()  # what the template is built from
        self.zygote = Zygote(self.id_plan.zygote_argument(), forked=True)


def _interpreter(channel: socket.socket, trees: socket.socket, id_maps: str) -> _Process:
    """The zygote as a fresh, lean interpreter (``python -S``, only the modules a
    sandbox's set-up runs): what a supervisor that lives on forks its sandboxes from."""
    import subprocess  # here, not at the top: the zygote process imports this module too

    return subprocess.Popen(
        [sys.executable, "-S", "-m", "sandbox.zygote", str(channel.fileno()), str(trees.fileno()), id_maps],
        pass_fds=(channel.fileno(), trees.fileno()),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(_import_path())},
    )


class ForkedZygote:
    """The zygote as a fork of the supervisor, for a supervisor that starts one sandbox
    and exits (``sandbox run``). A fresh interpreter costs that run tens of milliseconds
    of start-up and imports; what it saves - a lean process to fork image bases' builders
    and the spawner from, with few pages to copy - pays off only over many sandboxes. The fork does
    exactly what the fresh interpreter does (``serve``), with the same fds: the two
    channels and stdio, the rest closed as ``Popen`` would close them. The caller makes
    sure this process has one thread: a fork copies only the calling one, and a lock
    another thread held would stay held in the child."""

    def __init__(self, channel: socket.socket, trees: socket.socket, id_maps: str) -> None:
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            status = 1
            try:
                # Nothing of the supervisor's is collected here: its objects hold fds
                # closed below, whose numbers the zygote's own fds may take.
                gc.freeze()
                child.close_fds_except({channel.fileno(), trees.fileno()})
                null = os.open("/dev/null", os.O_RDWR)
                for stdio in (0, 1):
                    os.dup2(null, stdio)
                os.close(null)
                serve(channel, trees, IdMaps.parse(id_maps))
                status = 0
            finally:
                os._exit(status)  # never back into the supervisor's code

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0  # reaped already (a waitpid(-1) of the supervisor's)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = 0
        return self.returncode


def _send(channel: socket.socket, message: bytes, fds: list[int], name: str) -> None:
    try:
        socket.send_fds(channel, [message], fds)
    except OSError as exc:
        raise SetupError(f"the {name} is gone: {exc}") from exc


def _decoded(raw: bytes, process: _Process) -> dict[str, Any]:
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


def serve(channel: socket.socket, trees: socket.socket, id_maps: IdMaps | None) -> None:
    sc.set_process_name("sandbox-zygote")
    # SCHED_BATCH (inherited by every sandbox init and program stage until its job
    # arrives, stages.py): the same share of the CPU, but a zygote or a sandbox being
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
    # copying) those pages in every sandbox.
    gc.freeze()
    layers: dict[int, volume_layer.Layer] = {}  # volumes' layers of running jobs, by number
    while True:
        if trees in select.select([channel, trees], [], [])[0]:
            raw = trees.recv(_MAX_REQUEST)
            if not raw:
                return
            request = json.loads(raw)
            if "end" in request:
                _end_layer(trees, layers.pop(request["end"]), request["merge"])
            elif "open_as" in request:
                _open_as(trees, request, bases)
            else:
                _clone_tree(trees, request, bases, layers)
            continue
        raw = channel.recv(_MAX_REQUEST)
        if not raw:
            return
        _image_base(channel, json.loads(raw)["image"], bases)


# Binds and volumes resolve no symlink: a host path is opened as it is spelt, and a
# volume beneath its root, so neither can be sent elsewhere by a link a job (or anyone)
# left on the way.
_NO_LINKS = sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS
_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def _clone_tree(trees: socket.socket, request: dict[str, Any], bases: MountBases,
                layers: dict[int, volume_layer.Layer]) -> None:
    """Answer a tree, bind or volume request (``Zygote.clone_tree``, ``clone_bind``,
    ``clone_volume``, ``volume_layer``): a detached clone or a volume's layer, seen from
    the copy of the host's tree; or ``{"refused": why}`` for what the job named wrong,
    ``{"error": why}`` for the rest."""
    name = request.get("tree") or request.get("bind") or request.get("volume")
    answer = b"{}"
    try:
        sc.setns(bases.host_fd, sc.CLONE_NEWNS)
        if "tree" in request:
            clone = sc.open_tree(sc.AT_FDCWD, request["tree"], sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
        elif "cap" in request:
            layer = _volume_layer(request)
            number = len(layers) and max(layers) + 1
            layers[number] = layer
            clone, answer = os.dup(layer.overlay), json.dumps({"layer": number}).encode()
            os.set_inheritable(clone, False)
        else:
            directory = _bind_directory(request) if "bind" in request else _volume_directory(request)
            try:
                clone = sc.open_tree(directory, "", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_EMPTY_PATH)
            finally:
                os.close(directory)
    except _Refused as exc:
        trees.send(json.dumps({"refused": str(exc)}).encode())
        return
    except OSError as exc:
        trees.send(json.dumps({"error": f"cannot clone {name}: {exc.strerror}"}).encode())
        return
    try:
        socket.send_fds(trees, [answer], [clone])
    finally:
        os.close(clone)


def _open_as(trees: socket.socket, request: dict[str, Any], bases: MountBases) -> None:
    """Answer an open request (``Zygote.open_as``): the files, opened on the host's tree
    with the job's id as the effective one (this process's capabilities in the template
    namespace stay: the files are the supervisor's), then the zygote's own id again."""
    opened: list[int] = []
    own = os.geteuid()
    try:
        sc.setns(bases.host_fd, sc.CLONE_NEWNS)
        os.setresuid(-1, request["open_as"], -1)
        try:
            opened = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in request["paths"]]
        finally:
            os.setresuid(-1, own, -1)
        socket.send_fds(trees, [b"{}"], opened)
    except OSError as exc:
        trees.send(json.dumps({"error": f"cannot open {request['paths']} as {request['open_as']}: {exc}"}).encode())
    finally:
        for fd in opened:
            os.close(fd)


def _volume_layer(request: dict[str, Any]) -> volume_layer.Layer:
    directory = _volume_directory(request)
    try:
        return volume_layer.make(directory, request["cap"])
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (a volume's size cap needs an overlay with a tmpfs upper "
                                 "layer from a detached mount: Linux 6.15 or later)") from None


def _end_layer(trees: socket.socket, layer: volume_layer.Layer, merge: bool) -> None:
    """Answer an end request: the layer merged into its volume, or dropped."""
    try:
        if merge:
            volume_layer.merge(layer.upper, layer.volume)
    except OSError as exc:
        trees.send(json.dumps({"error": f"merging a job's changes into its volume: {exc}"}).encode())
        return
    finally:
        layer.close()
    trees.send(b"{}")


class _Refused(Exception):
    """A bind or volume the job named that cannot be mounted (the job's fault)."""


def _bind_directory(request: dict[str, Any]) -> int:
    path = request["bind"]
    try:
        return sc.openat2(sc.AT_FDCWD, path, _DIRECTORY, _NO_LINKS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refused(f"cannot bind {path}: it is, or passes through, a symlink (binds follow none)") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
            raise _Refused(f"cannot bind {path}: {exc.strerror} (a bind is of a directory)") from None
        raise


def _volume_directory(request: dict[str, Any]) -> int:
    """The volume's directory, made if missing, its files given to the job's id."""
    name = request["volume"]
    root = os.open(request["root"], _DIRECTORY)
    try:
        try:
            os.mkdir(name, 0o755, dir_fd=root)
        except FileExistsError:
            pass
        try:
            directory = sc.openat2(root, name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                                   sc.RESOLVE_BENEATH | _NO_LINKS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Refused(f"the volume {name} is not a directory") from None
            raise
    finally:
        os.close(root)
    try:
        if request["owner"] is not None:
            _give(directory, request["owner"])
    except BaseException:
        os.close(directory)
        raise
    return directory


def _give(directory: int, owner: int) -> None:
    """Every file of the tree at ``directory`` to ``owner`` (user and group), symlinks
    included as themselves, never followed; a file already its own is only looked at.
    Only rw jobs ask, one at a time (the supervisor's lock on the volume), so nothing
    changes the tree meanwhile but a leftover of its last job: fwalk opens each
    directory with O_NOFOLLOW beneath its parent's fd, and a swapped name only fails."""
    if os.fstat(directory).st_uid != owner:
        os.fchown(directory, owner, owner)
    for _, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=directory, follow_symlinks=False):
        for entry in (*dirnames, *filenames):
            if os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_uid != owner:
                os.chown(entry, owner, owner, dir_fd=dir_fd, follow_symlinks=False)


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
    with socket.socket(fileno=int(argv[1])) as channel, socket.socket(fileno=int(argv[2])) as trees:
        serve(channel, trees, IdMaps.parse(argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
