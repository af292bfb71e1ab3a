"""RUN: a build step's command in a sandbox of its own, on the stage's layers, as root
of a user namespace - its changes written as the step's layer.

The jobs' launch path (zygote, spawner, C init) is made for the opposite: one id per
sandbox mapped as 1000, a writable layer on a per-job tmpfs that dies with the job,
a default-deny seccomp filter and cgroup limits. A build step needs a whole id range
with root at 0 - package managers chown to their users (apt's ``_apt``) and switch to
them - and a writable layer that outlives the step on a host directory, read back by a
process that can read every id's files. So a step is one fork of the builder, which
runs out of the job path:

    builder ─ fork ─> C: root of a user namespace whose 0 is the supervisor's own
                      uid and gid and 1.. its subordinate ids (``id_namespace``);
                      unshare(mnt, pid, net, ipc, uts); the overlay of the stage's
                      layers (lowers, ``overlay.open_layers``) under ``upper`` in the
                      step's workspace (``overlay.mount_build_root``, userxattr: the
                      rootless format the layer writer reads); a read-only /dev of the
                      harmless host nodes (``rootfs.build_dev``)
      C ─ fork ─> G, pid 1 of the new pid namespace: a fresh /proc, pivot_root into
                      the overlay (the host's tree detached), lo up (nothing else in
                      the network namespace: no network), the image's WORKDIR (made if
                      missing, as Docker does), USER, Env; stdio: the builder's stderr;
                      exec the command. Its exit ends every process of the step.
      C: the step's exit status; if 0, the layer written from ``upper`` (its fd, opened
         before anything ran) by ``layer_writer`` into the blob file the builder
         opened - C is root of the namespace that maps every id the step's files can
         have, so it reads what the supervisor itself could not - and ``upper`` and
         the overlay's work directory removed, likewise, whatever happened.

Every process of the step - C, G and what G starts - runs in a cgroup of the step's
own, which C joins before it enters the user namespace, with the build's limits
(memory, pids, CPUs); past the wall-time limit C is killed, and G with it (its parent
death signal), and the cgroup's kill ends whatever is left.

What the step is not given: a seccomp filter (a build runs the Sandboxfile's author's
commands - package managers, compilers, as root of its namespace - as ``docker build``
does; its isolation is the namespaces: no host path after the pivot, no network, no host
process visible, and its cgroup), and no scratch tmpfs over /tmp or /work: in a build
every path is part of the image.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox import child, rootfs
from sandbox.cgroups import open_backend
from sandbox.cgroups.base import JobCgroup
from sandbox.errors import CgroupError, SandboxError, SetupError
from sandbox.fspath import open_beneath
from sandbox.id_namespace import IdNamespaceError, die_with_parent, run_as_range_root, setup_errors
from sandbox.images.layer_writer import LayerBlob, LayerTar, TreeWalker
from sandbox.images.store import remove_tree
from sandbox.linux import syscalls as sc
from sandbox.models import Limits
from sandbox.overlay import mount_build_root, open_layers

if TYPE_CHECKING:
    from sandbox.egress import Egress

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOSTNAME = "sandbox-build"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


class RunError(SandboxError):
    """A RUN step that failed: its command's exit status, or why it could not start."""


# What a RUN step may use unless the build says otherwise (``sandbox build --memory``,
# ``--pids``, ``--cpus``, ``--timeout``): enough for a package manager, bounded so a
# runaway step cannot take the host down with it.
STEP_LIMITS = Limits(wall_time="30m", memory="4G", pids=4096)
CGROUP_EMPTY_TIMEOUT_S = 10.0


def run_step(layer_dirs: list[str], config: dict[str, Any], argv: list[str], workspace: Path,
             limits: Limits = STEP_LIMITS, egress: Sequence[str] | None = None) -> LayerBlob:
    """Run ``argv`` on ``layer_dirs`` (bottom first) with the image ``config`` (Env,
    WorkingDir, User) under ``limits`` (wall time, memory, pids, CPUs); the layer of
    what it changed, written to ``workspace``/layer. No network but ``lo``, unless
    ``egress`` (the blocked ranges it allows, as a job's ``allow_net``): then the
    outside through a stack of the step's own, as an egress job has. Raises RunError."""
    for name in ("upper", "work", "root", "empty"):
        (workspace / name).mkdir()
    blob_path = workspace / "layer"
    cgroup = _step_cgroup(limits)
    stacks: list[Egress] = []

    def give_egress(pid: int) -> None:  # C's network namespace, made with its user namespace
        from sandbox.egress import start

        stacks.append(start(pid, list(egress or ())))

    with open(blob_path, "xb") as blob:
        try:
            messages = run_as_range_root(lambda report: _step(report, blob.fileno(), layer_dirs, config, argv,
                                                              workspace, egress is not None),
                                         before=cgroup.join, timeout=limits.wall_time_ms / 1000,
                                         namespaces=sc.CLONE_NEWNET,
                                         on_mapped=None if egress is None else give_egress)
        except IdNamespaceError as exc:
            raise RunError(f"RUN needs {exc}") from None
        except SetupError as exc:
            raise RunError(f"RUN could not run: {exc}") from None
        finally:
            for stack in stacks:
                stack.stop()
            oom_kills = cgroup.usage().oom_kills
            _remove_cgroup(cgroup)
            _remove_left_over(workspace)
    errors = setup_errors(messages)
    if errors:
        raise RunError(f"RUN could not run: {errors[0]}")
    outcome: dict[str, Any] = messages[-1] if messages else {"kind": "exit", "status": None}
    if outcome.get("kind") == "expired":
        raise RunError(f"RUN {json.dumps(argv)} ran past its time limit ({limits.wall_time_ms / 1000:g} s)")
    if outcome.get("kind") != "layer":
        why = "; out of memory" if oom_kills else ""
        raise RunError(f"RUN {json.dumps(argv)} failed (exit status {outcome.get('status')}{why})")
    return LayerBlob(blob_path, outcome["digest"], outcome["diff_id"], int(outcome["size"]))


def _step_cgroup(limits: Limits) -> JobCgroup:
    """The step's cgroup, with its limits written: every process of the step runs in
    it, the layer writer too. A build needs a delegated cgroup as a worker does
    (``sandbox setup-cgroups``): a RUN's command is code like any job's."""
    try:
        cgroup = open_backend().create_job(cpu_quota=limits.cpus is not None)
    except CgroupError as exc:
        raise RunError(f"RUN needs a cgroup for its limits: {exc}") from None
    try:
        cgroup.apply_limits(limits)
    except BaseException:
        cgroup.destroy()
        raise
    return cgroup


def _remove_cgroup(cgroup: JobCgroup) -> None:
    """Kill what is left of the step and remove its cgroup. A killed step's processes
    are not ours to reap: G, pid 1 of its namespace, goes to the host's init once C is
    gone, and leaves the cgroup only when every process of its namespace is dead and it
    is reaped - so removing is retried until then, within a bound."""
    deadline = time.monotonic() + CGROUP_EMPTY_TIMEOUT_S
    while True:
        try:
            cgroup.destroy()
            return
        except CgroupError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)  # (no event says a v1 cgroup emptied: the kernel's reaping, polled)


def _remove_left_over(workspace: Path) -> None:
    """What a step killed before its own clean-up left (files of any id of the range):
    removed as the supervisor where it can, else as root of the range."""
    left = [workspace / name for name in ("upper", "work") if (workspace / name).exists()]
    try:
        _remove(left)
    except PermissionError:
        run_as_range_root(lambda report: _remove(left))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        remove_tree(path)


def _step(report: int, blob: int, layer_dirs: list[str], config: dict[str, Any], argv: list[str],
          workspace: Path, egress: bool) -> None:
    """C, root of the range (its network namespace made with it): runs G, then writes
    the layer."""
    sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS)
    sc.mount_propagation("/", sc.MS_REC | sc.MS_PRIVATE)
    upper = os.open(workspace / "upper", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        status = _run_command(upper, report, layer_dirs, config, argv, workspace, egress)
        if status != 0:
            child.send(report, "exit", status=status)
            return
        with open(blob, "wb", closefd=False) as out:
            layer = LayerTar(out)
            TreeWalker(layer, upper=True).add_contents(upper, "")
            digest, diff_id, size = layer.finish()
        child.send(report, "layer", digest=digest, diff_id=diff_id, size=size)
    finally:
        os.close(upper)
        for name in ("upper", "work"):
            remove_tree(workspace / name)


def _run_command(upper: int, report: int, layer_dirs: list[str], config: dict[str, Any], argv: list[str],
                 workspace: Path, egress: bool) -> int:
    """Mount the step's root and run G in it; G's exit status (128+N: killed by N)."""
    layers = open_layers(layer_dirs or [str(workspace / "empty")])
    work = os.open(workspace / "work", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    where = os.open(workspace, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        root = mount_build_root(layers, upper, work, where, "root")
    finally:
        for fd in [*layers, work, where]:
            os.close(fd)
    try:
        rootfs.build_dev(root)
        if egress:
            _resolver(root, workspace)
        pid = os.fork()
        if pid == 0:
            child.guard(report, lambda: _command(root, config, argv))
    finally:
        os.close(root)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _command(root: int, config: dict[str, Any], argv: list[str]) -> None:
    """G: pid 1 of the step; becomes the command."""
    rootfs.mount_proc(root)
    os.fchdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    socket.sethostname(HOSTNAME)
    _loopback_up()
    workdir = str(config.get("WorkingDir") or "/")
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": HOSTNAME}
    for item in config.get("Env") or []:
        key, sep, value = str(item).partition("=")
        if sep:
            env[key] = value
    uid, gid = _user(str(config.get("User") or "0"))
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    die_with_parent()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    child.close_fds_except(set())
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        os.write(2, f"sandbox build: cannot run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)


def _resolver(root: int, workspace: Path) -> None:
    """An egress step's /etc/resolv.conf names the stack's resolver: a file of the
    workspace bound over the image's (made empty in the layer where the image has none
    and has an /etc), as ``docker build`` binds its own; what the step writes there stays
    out of the layer."""
    source = workspace / "resolv.conf"
    source.write_text(f"nameserver {rootfs.STACK_RESOLVER}\n")
    try:
        etc = open_beneath(root, "etc", os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return  # an image without /etc: nothing names a resolver
    try:
        try:
            target = open_beneath(etc, "resolv.conf", os.O_PATH)
        except FileNotFoundError:
            os.close(open_beneath(etc, "resolv.conf", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            target = open_beneath(etc, "resolv.conf", os.O_PATH)
        try:
            clone = sc.open_tree(sc.AT_FDCWD, str(source), sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
            try:
                sc.move_mount(clone, "", target, "", sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH)
            finally:
                os.close(clone)
        finally:
            os.close(target)
    finally:
        os.close(etc)


def _user(user: str) -> tuple[int, int]:
    """USER's ``name[:group]`` or ``uid[:gid]``, looked up in the image's own files."""
    name, _, group = user.partition(":")
    passwd = _entries("/etc/passwd")
    if name.isdigit():
        uid = int(name)
        gid = next((int(fields[3]) for fields in passwd.values() if fields[2] == name), uid)
    elif name in passwd:
        uid, gid = int(passwd[name][2]), int(passwd[name][3])
    else:
        raise SetupError(f"USER {name}: not in the image's /etc/passwd")
    if group.isdigit():
        gid = int(group)
    elif group:
        groups = _entries("/etc/group")
        if group not in groups:
            raise SetupError(f"USER {user}: {group} is not in the image's /etc/group")
        gid = int(groups[group][2])
    return uid, gid


def _entries(path: str) -> dict[str, list[str]]:
    """name -> fields of a passwd or group file of the image (none: {})."""
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    entries = (line.split(":") for line in lines)
    return {fields[0]: fields for fields in entries if len(fields) >= 4 and fields[2].isdigit()
            and (path == "/etc/group" or fields[3].isdigit())}


def _loopback_up() -> None:
    """lo up (SIOCSIFFLAGS, as the jobs' init does): 127.0.0.1 works, nothing else
    exists in the step's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(control, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(control, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))
