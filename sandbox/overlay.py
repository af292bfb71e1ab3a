"""The read-only base of an image: an overlay of its unpacked layers, prepared once
per image in the zygote's builder (``rootfs.build_image_base``); each job adds only its
own writable layer over it (``native/root.c``).

- ``userxattr``: whiteouts are 0:0 character devices and opaque directories carry
  ``user.overlay.opaque=y`` (the only form an unprivileged unpacker can write); without
  this option the kernel would silently ignore the opaque marks.
- The base is made in two steps on a small tmpfs of its own: a writable overlay
  (``mount_image_root``) through which the sandbox's files are written into the image
  (/etc/hosts, the working directory), then, that one unmounted, the read-only overlay
  (``seal_image_root``) of its upper directory - those changes, whiteouts included -
  over the layers. Nothing of it is writable afterwards: a job's writes go to an upper
  layer of the job's own.
- The names the sandbox mounts on come from a layer of its own, on that tmpfs, above the
  image's: empty directories, which hide whatever non-directory an image has there (a
  lower non-directory ends the lookup below a directory). Replacing one in the overlay
  instead - a whiteout, then a directory over it - needs an opaque xattr on the upper,
  which tmpfs cannot store before Linux 6.6 (overlayfs answers EIO).
- Layers are passed as ``/proc/self/fd/N`` relative to ``/proc/self/fd`` (a few bytes
  each): one ``fsconfig("lowerdir+")`` per layer where the kernel has it (6.8+, up to
  500 layers), else one legacy mount(2) whose option string must fit in a page.
  ``mount_method`` says which one this kernel gets (``sandbox doctor`` prints it).
- The store path itself is never visible to the job: the base's overlay names its
  layers by those fd numbers in mountinfo, nothing of the host's tree is in its
  namespace after pivot_root, and overlayfs keeps private clones of its layer mounts.
- Overlayfs stacks two deep: the base over the store's filesystem, a job's layer over
  the base. A store on an overlayfs itself would be a third.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from sandbox.errors import SetupError
from sandbox.fspath import make_dirs_beneath, open_beneath
from sandbox.linux import syscalls as sc

MAX_LAYERS = 500  # overlayfs' OVL_MAX_STACK
# Room for what the sandbox writes into a base: two small files, and the directories on
# their way copied up.
BASE_UPPER_BYTES = 1 << 20
_PAGE = 4096
_MOUNT_ATTRS = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
IMAGE_ROOT_DIR = "root"  # the writable overlay's mount point in the base's tmpfs
BASE_DIR = "base"  # the read-only overlay's
_OWN_LAYER_DIR = "skeleton"  # the sandbox's layer of directories, on the same tmpfs
# The two ways layers reach overlayfs (``mount_method``).
LOWERDIR_PLUS = "fsconfig lowerdir+"
MOUNT_SYSCALL = "mount(2)"
# A key no filesystem has: a legacy fs context takes it, a real parser refuses it.
_NO_SUCH_KEY = "sandbox-legacy-context-probe"


def open_layers(layers: list[str]) -> list[int]:
    """O_PATH fds of ``layers`` (directories, bottom first), top-most first, as overlayfs
    lists them. Opened before anything is mounted: the store may lie under the
    workspace, which the base's tmpfs covers."""
    if len(layers) >= MAX_LAYERS:
        raise SetupError(f"image has {len(layers)} layers; overlayfs stacks at most {MAX_LAYERS - 1} of an image's")
    fds: list[int] = []
    try:
        for layer in reversed(layers):
            fds.append(os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def mount_image_root(layer_fds: list[int], upper_bytes: int, where: str, directories: tuple[str, ...]) -> int:
    """Build the writable overlay of ``layer_fds`` (``open_layers``) under a layer of the
    sandbox's own holding ``directories`` (top-level names the root must have as
    directories, whatever the image holds there), attach it at ``where``/IMAGE_ROOT_DIR,
    and return an fd of its root. ``where`` is a directory of this private mount
    namespace (it gets the tmpfs of the upper layer)."""
    upper_mount = _tmpfs(upper_bytes)
    sc.move_mount(upper_mount, "", sc.AT_FDCWD, where, sc.MOVE_MOUNT_F_EMPTY_PATH)
    fds: list[int] = []
    try:
        upper, work, mount_point, own_layer = (
            make_dirs_beneath(upper_mount, name) for name in ("upper", "work", IMAGE_ROOT_DIR, _OWN_LAYER_DIR))
        fds.extend((upper, work, mount_point, own_layer))
        for name in directories:
            os.close(make_dirs_beneath(own_layer, name))
        lowers = [str(fd) for fd in (own_layer, *layer_fds)]
        return _mount_overlay(upper_mount, IMAGE_ROOT_DIR, lowers, (str(upper), str(work)))
    finally:
        for fd in fds:
            os.close(fd)
        os.close(upper_mount)


def seal_image_root(layer_fds: list[int], where: str) -> int:
    """After ``mount_image_root`` at ``where`` and the changes made through it: unmount
    that writable overlay and attach, at ``where``/BASE_DIR, the read-only one of its
    upper directory over the sandbox's own layer and ``layer_fds``; its root's fd."""
    sc.umount2(os.path.join(where, IMAGE_ROOT_DIR), sc.MNT_DETACH)
    workspace = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fds = [workspace]
    try:
        changes, own_layer, mount_point = (
            make_dirs_beneath(workspace, name) for name in ("upper", _OWN_LAYER_DIR, BASE_DIR))
        fds.extend((changes, own_layer, mount_point))
        return _mount_overlay(workspace, BASE_DIR, [str(fd) for fd in (changes, own_layer, *layer_fds)], None)
    finally:
        for fd in fds:
            os.close(fd)


def mount_build_root(layer_fds: list[int], upper_fd: int, work_fd: int, workspace: int, name: str) -> int:
    """A build step's root (``sandbox/build/run_step.py``): the overlay of ``layer_fds``
    (``open_layers``) under the upper directory ``upper_fd`` and its overlay work
    directory ``work_fd`` - host directories, which the step's layer is written from -
    attached at ``name`` in ``workspace``; its root's fd."""
    return _mount_overlay(workspace, name, [str(fd) for fd in layer_fds], (str(upper_fd), str(work_fd)))


def detached_overlay(lowers: list[int], upper_work: tuple[int, int]) -> int:
    """The writable overlay of ``lowers`` (fds, top-most first) over the upper and work
    directories ``upper_work`` (fds), as a detached mount; its fd. Raises OSError
    (EOPNOTSUPP) on a kernel without ``lowerdir+`` (before 6.8): its mount(2) fallback
    needs a mount point."""
    with _fd_names():
        overlay = _mount_new_api([str(fd) for fd in lowers], (str(upper_work[0]), str(upper_work[1])))
    if overlay is None:
        raise OSError(errno.EOPNOTSUPP, "this kernel's overlayfs takes no lowerdir+ (Linux 6.8)")
    return overlay


@contextlib.contextmanager
def _fd_names() -> Iterator[None]:
    """In /proc/self/fd, where an fd's number names its directory: no host path is
    written into a mount's options (or the job's mount table)."""
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    os.chdir("/proc/self/fd")
    try:
        yield
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def _mount_overlay(workspace: int, name: str, lowers: list[str], upper_work: tuple[str, str] | None) -> int:
    """The overlay of ``lowers`` (fd numbers, top-most first) - writable with
    ``upper_work`` (fd numbers), else read-only - attached at ``name`` in the tmpfs
    ``workspace``; its root's fd."""
    with _fd_names():
        overlay = _mount_new_api(lowers, upper_work)
        if overlay is None:
            mount_point = open_beneath(workspace, name, os.O_PATH | os.O_DIRECTORY)
            try:
                _mount_legacy(lowers, upper_work, str(mount_point))
            finally:
                os.close(mount_point)
            # By name from the tmpfs's root: a lookup crosses onto the overlay, while
            # reopening the mount point's fd (a /proc/self/fd link) would give the
            # directory beneath it.
            return open_beneath(workspace, name, os.O_PATH | os.O_DIRECTORY)
        sc.move_mount(overlay, "", workspace, name, sc.MOVE_MOUNT_F_EMPTY_PATH)
        return overlay


def _tmpfs(size: int) -> int:
    fs_fd = sc.fsopen("tmpfs")
    try:
        sc.fsconfig_string(fs_fd, "size", str(size))
        sc.fsconfig_string(fs_fd, "mode", "0755")
        sc.fsconfig_create(fs_fd)
        return sc.fsmount(fs_fd, _MOUNT_ATTRS)
    finally:
        os.close(fs_fd)


def mount_method() -> str:
    """How this kernel's overlayfs takes an image's layers: ``LOWERDIR_PLUS`` or
    ``MOUNT_SYSCALL`` - decided by the same probe ``mount_image_root`` makes, so what it
    says is what jobs get. Needs CAP_SYS_ADMIN over the caller's mount namespace (a user
    and mount namespace of its own will do)."""
    fs_fd = _lowerdir_plus_context("/")
    if fs_fd is None:
        return MOUNT_SYSCALL
    os.close(fs_fd)
    return LOWERDIR_PLUS


def _lowerdir_plus_context(top_layer: str) -> int | None:
    """An overlay fs context holding ``top_layer`` as its first ``lowerdir+``, or None
    when this kernel's overlayfs cannot take layers that way.

    Two kinds of kernel lack it. 6.5 to 6.7 parse overlay options themselves and refuse
    ``lowerdir+`` at once. Before 6.5 (Debian 12's 6.1) overlayfs has no parser of its own:
    the kernel's legacy context accepts every key and passes the lot to the filesystem
    when the superblock is made, which then fails - with a line in the kernel log for
    every job. That context is recognised up front by its taking a key no filesystem has."""
    fs_fd = sc.fsopen("overlay")
    try:
        if _takes(fs_fd, _NO_SUCH_KEY, "") or not _takes(fs_fd, "lowerdir+", top_layer):
            os.close(fs_fd)
            return None
    except BaseException:
        os.close(fs_fd)
        raise
    return fs_fd


def _takes(fs_fd: int, key: str, value: str) -> bool:
    """Whether the fs context accepts ``key``=``value`` (EINVAL: an unknown key)."""
    try:
        sc.fsconfig_string(fs_fd, key, value)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def _mount_new_api(lowers: list[str], upper_work: tuple[str, str] | None) -> int | None:
    """One ``lowerdir+`` per layer; None when the kernel lacks ``lowerdir+``."""
    fs_fd = _lowerdir_plus_context(lowers[0])
    if fs_fd is None:
        return None
    try:
        for lower in lowers[1:]:
            sc.fsconfig_string(fs_fd, "lowerdir+", lower)
        if upper_work is not None:
            sc.fsconfig_string(fs_fd, "upperdir", upper_work[0])
            sc.fsconfig_string(fs_fd, "workdir", upper_work[1])
        sc.fsconfig_flag(fs_fd, "userxattr")
        sc.fsconfig_create(fs_fd)
        return sc.fsmount(fs_fd, _MOUNT_ATTRS if upper_work is not None else _MOUNT_ATTRS | sc.MOUNT_ATTR_RDONLY)
    finally:
        os.close(fs_fd)


def _mount_legacy(lowers: list[str], upper_work: tuple[str, str] | None, mount_point: str) -> None:
    """mount(2) for kernels before 6.8: the whole option string must fit in a page."""
    options = f"lowerdir={':'.join(lowers)}"
    flags = sc.MS_NOSUID | sc.MS_NODEV
    if upper_work is None:
        flags |= sc.MS_RDONLY
    else:
        options += f",upperdir={upper_work[0]},workdir={upper_work[1]}"
    options += ",userxattr"
    if len(options) >= _PAGE:
        raise SetupError(f"image has too many layers ({len(lowers)}) for this kernel's mount(2)")
    sc.mount("overlay", mount_point, "overlay", flags, options)
