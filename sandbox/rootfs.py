"""Assemble the job's root filesystem.

Everything is built with the fd-based mount API (fsopen/fsmount/open_tree/move_mount/
mount_setattr): mount points are opened beneath the new root without following
symlinks, and attributes such as read-only are set on a mount without re-stating (and
tripping over) the flags the kernel locked.

The built-in ``host`` image is built once per zygote, as the root of the template mount
namespace (``build_template``, ``template.py``); a sandbox init gets a private copy of
it and adds only what is its own: /proc and the scratch tmpfs, mounted by the C init
(``native/root.c``). An image's read-only base is built once per zygote and image, the
root of a mount namespace of its own (``build_image_base``): the overlay of its layers
with its /etc/hosts, working directory, /dev and mount points. A sandbox init copies
that namespace and adds what is its own: its writable layer (an overlay of the base
under a size-capped tmpfs of the job's), /proc and the scratch tmpfs, then pivots into
it (``native/root.c``).

Layout seen by the job::

    /            tmpfs, read-only
    /usr ...     the image (host: the host's /usr, /bin, /lib*, a safe part of /etc)
    /proc        a fresh procfs of the job's pid namespace
    /dev         null zero full random urandom (host nodes), fd, std*, shm; read-only
    /work /tmp /dev/shm   one size-capped tmpfs ("scratch"): the only writable place
"""

from __future__ import annotations

import os
import stat

from sandbox.fspath import create_file_beneath, make_dirs_beneath, open_beneath
from sandbox.linux import syscalls as sc
from sandbox.overlay import BASE_UPPER_BYTES, mount_image_root, open_layers, seal_image_root

SANDBOX_UID = 1000
SANDBOX_GID = 1000
HOSTNAME = "sandbox"
# The resolver every sandbox's /etc/resolv.conf names: the egress stack's (egress.py),
# which forwards to the host's. Only an egress job has a route to it; any other job's
# lookups fail at once (no route), instead of asking the host's resolver or waiting.
STACK_RESOLVER = "10.0.2.3"

_RO = sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
_HOST_TOP_LEVEL = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# /etc entries a program may legitimately read; secrets and host identity stay out: these
# names, and those that start with one of the prefixes. A set and a prefix test, not glob
# patterns: /etc has a few hundred entries, each tried by every template build and every
# check of the host files - and compiling the patterns cost each ``sandbox run`` a
# millisecond before its zygote could start.
_HOST_ETC_NAMES = frozenset((
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
    "nsswitch.conf", "ssl", "ca-certificates", "ca-certificates.conf",
    "perl", "mime.types", "os-release", "debian_version", "protocols", "services",
    "gai.conf", "host.conf", "magic", "magic.mime", "inputrc", "bash.bashrc", "fonts",
))
_HOST_ETC_PREFIXES = ("java-", "python3")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}


def generated_etc() -> dict[str, str]:
    return {
        "passwd": (
            "root:x:0:0:root:/root:/bin/sh\n"
            f"sandbox:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:/work:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\nsandbox:x:{SANDBOX_GID}:\nnogroup:x:65534:\n",
        "hosts": f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost\n",
        "hostname": f"{HOSTNAME}\n",
        "resolv.conf": f"nameserver {STACK_RESOLVER}\n",
    }


def new_filesystem(fs_type: str, options: dict[str, str], attrs: int) -> int:
    """A detached mount of a fresh filesystem (tmpfs, proc); returns its fd."""
    fs_fd = sc.fsopen(fs_type)
    try:
        for key, value in options.items():
            sc.fsconfig_string(fs_fd, key, value)
        sc.fsconfig_create(fs_fd)
        return sc.fsmount(fs_fd, attrs)
    finally:
        os.close(fs_fd)


def attach(mount_fd: int, root_fd: int, dest: str, *, directory: bool = True) -> None:
    """Attach a detached mount at ``dest`` beneath ``root_fd``, creating the mount point
    (a directory, or an empty file for a single-file bind) without following symlinks."""
    if directory:
        target = make_dirs_beneath(root_fd, dest)
    else:
        os.close(create_file_beneath(root_fd, dest))
        target = open_beneath(root_fd, dest)
    try:
        sc.move_mount(mount_fd, "", target, "", sc.MOVE_MOUNT_F_EMPTY_PATH | sc.MOVE_MOUNT_T_EMPTY_PATH)
    finally:
        os.close(target)
        os.close(mount_fd)


def bind_readonly(source: str, root_fd: int, dest: str) -> None:
    """Recursive read-only, nosuid, nodev bind of a host path (trusted: the host's own)."""
    tree = sc.open_tree(sc.AT_FDCWD, source, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE)
    sc.mount_setattr(tree, "", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, _RO)
    attach(tree, root_fd, dest, directory=os.path.isdir(source))


def _host_etc_entry(name: str) -> bool:
    return name in _HOST_ETC_NAMES or name.startswith(_HOST_ETC_PREFIXES)


def populate_host_image(root_fd: int) -> None:
    """The built-in ``host`` image: the host's system directories and the allow-listed
    part of /etc, each bound read-only at its own path, and generated passwd, group,
    hosts, hostname and resolv.conf. (One bind of a prepared copy of /etc would be cheaper, but its
    source path - in the user's home - would show in the job's /proc/self/mountinfo.)"""
    for name in _HOST_TOP_LEVEL:
        host_path = "/" + name
        if os.path.islink(host_path):
            os.symlink(os.readlink(host_path), name, dir_fd=root_fd)
        elif os.path.isdir(host_path):
            bind_readonly(host_path, root_fd, name)
    os.close(make_dirs_beneath(root_fd, "etc"))
    for entry in sorted(os.listdir("/etc")):
        if not _host_etc_entry(entry):
            continue
        host_path = os.path.join("/etc", entry)
        if os.path.islink(host_path):
            os.symlink(os.readlink(host_path), f"etc/{entry}", dir_fd=root_fd)
        elif os.path.isdir(host_path) or os.path.isfile(host_path):
            bind_readonly(host_path, root_fd, f"etc/{entry}")
    for name, content in generated_etc().items():
        fd = create_file_beneath(root_fd, f"etc/{name}")
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)


def build_dev(root_fd: int) -> None:
    """A read-only /dev tmpfs: the harmless host device nodes, std* links, a shm mount point."""
    dev = new_filesystem("tmpfs", {"size": "64k", "mode": "0755"}, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NOEXEC)
    dev_root = os.dup(dev)
    attach(dev, root_fd, "dev")
    try:
        for name in _DEVICES:
            node = sc.open_tree(sc.AT_FDCWD, f"/dev/{name}", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
            # Read-only: the node is the host's own inode, so its times and mode must not
            # be the job's to change (a channel to the host and to other jobs); reading and
            # writing the device itself is unaffected by the mount flag.
            read_only_node = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NOEXEC | sc.MOUNT_ATTR_RDONLY
            sc.mount_setattr(node, "", sc.AT_EMPTY_PATH, read_only_node)
            attach(node, dev_root, name, directory=False)
        for name, target in _DEV_LINKS.items():
            os.symlink(target, name, dir_fd=dev_root)
        os.close(make_dirs_beneath(dev_root, "shm"))
        sc.mount_setattr(dev_root, "", sc.AT_EMPTY_PATH, sc.MOUNT_ATTR_RDONLY)
    finally:
        os.close(dev_root)


def mount_proc(root_fd: int) -> None:
    proc = new_filesystem("proc", {}, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC)
    attach(proc, root_fd, "proc")


# --- image roots --------------------------------------------------------------------
# Names the sandbox mounts on or writes into. An image may ship any of them as a symlink
# (say /dev -> /host/dev): the base's own layer (``mount_image_root``) makes them
# directories whatever the image holds there, and every later step opens paths with
# RESOLVE_NO_SYMLINKS anyway, so nothing can be redirected to a host file.
_IMAGE_MOUNT_POINTS = ("proc", "dev", "work", "tmp", "etc")
# Where an image's base is built, in its builder's private copy of the host's tree (the
# base's tmpfs covers it, so nothing of the host's /tmp shows).
IMAGE_WORKSPACE = "/tmp"
_IMAGE_GENERATED_ETC = ("hosts", "hostname", "resolv.conf")


def populate_image_root(root_fd: int, workdir: str) -> None:
    """Write /etc/hosts, /etc/hostname and /etc/resolv.conf into an image root (replacing the image's
    files or symlinks there), and make the job's working directory."""
    etc = make_dirs_beneath(root_fd, "etc")
    try:
        generated = generated_etc()
        for name in _IMAGE_GENERATED_ETC:
            try:
                if not stat.S_ISREG(os.stat(name, dir_fd=etc, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=etc)
            except FileNotFoundError:
                pass
            fd = create_file_beneath(etc, name)
            try:
                os.write(fd, generated[name].encode())
            finally:
                os.close(fd)
    finally:
        os.close(etc)
    if workdir != "/":
        os.close(make_dirs_beneath(root_fd, workdir))


def pivot_into(root_fd: int) -> None:
    """Make ``root_fd`` the root, drop the tree it came from, and seal the root read-only."""
    os.fchdir(root_fd)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    sc.mount_setattr(sc.AT_FDCWD, "/", sc.AT_EMPTY_PATH, sc.MOUNT_ATTR_RDONLY)


def build_template() -> None:
    """Build the host image once, in a fresh user and mount namespace, and make it that
    namespace's read-only root; each sandbox's mount namespace is then a copy of it (a
    few dozen mounts copied by the kernel) plus its own /proc and scratch
    (``native/root.c``)."""
    sc.mount_propagation("/", sc.MS_REC | sc.MS_PRIVATE)
    root = new_filesystem("tmpfs", {"size": "4m", "mode": "0755"}, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    root_fd = os.dup(root)
    sc.move_mount(root, "", sc.AT_FDCWD, "/tmp", sc.MOVE_MOUNT_F_EMPTY_PATH)
    os.close(root)
    try:
        populate_host_image(root_fd)
        build_dev(root_fd)
        for mount_point in ("work", "tmp"):
            os.close(make_dirs_beneath(root_fd, mount_point))
        mount_proc(root_fd)
        pivot_into(root_fd)
    finally:
        os.close(root_fd)


def build_image_base(layers: list[str], workdir: str) -> None:
    """(In the image's builder: pid 1 of a pid namespace of its own, on a private copy of
    the host's tree, which overlayfs needs its layers in.) Build the image's read-only
    base - the overlay of its layers under a layer holding /etc/hosts, /etc/hostname,
    /etc/resolv.conf, ``workdir`` and the sandbox's mount points - with /dev and a /proc of this empty pid
    namespace (what lets each sandbox mount its own there), and make it this namespace's
    root. Each sandbox copies the namespace and adds its writable layer
    (``native/root.c``)."""
    sc.mount_propagation("/", sc.MS_REC | sc.MS_PRIVATE)
    layer_fds = open_layers(layers)
    try:
        writable = mount_image_root(layer_fds, BASE_UPPER_BYTES, IMAGE_WORKSPACE, _IMAGE_MOUNT_POINTS)
        try:
            populate_image_root(writable, workdir)
        finally:
            os.close(writable)
        root_fd = seal_image_root(layer_fds, IMAGE_WORKSPACE)
    finally:
        for fd in layer_fds:
            os.close(fd)
    try:
        build_dev(root_fd)
        mount_proc(root_fd)
        pivot_into(root_fd)
    finally:
        os.close(root_fd)


def host_image_fingerprint() -> tuple[tuple[str, int, int], ...]:
    """What the host image was built from (name, inode, mtime of each source): a
    template built earlier is stale when this changes (a package added a file to /etc,
    ldconfig replaced ld.so.cache by rename, which a file bind would not follow)."""
    entries = ["/etc", *(f"/etc/{e}" for e in sorted(os.listdir("/etc")) if _host_etc_entry(e))]
    entries += [f"/{name}" for name in _HOST_TOP_LEVEL]
    found = []
    for path in entries:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        found.append((path, st.st_ino, st.st_mtime_ns))
    return tuple(found)
