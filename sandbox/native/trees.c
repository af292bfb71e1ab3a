/*
 * A tree is mounted as a read-only overlay whose lower layers are the tree and an empty
 * tmpfs, not as a bind mount of the tree: a bind's mountinfo line shows, as its root,
 * the tree's path within its filesystem - the worker's cache directory on the host -
 * while an overlay's shows "/", and its layers by what they were given as, here fd
 * numbers ("lowerdir+=5"). The empty layer is there because overlayfs needs two lower
 * layers when it has no upper one, and may not take one directory twice. The tree
 * counts only as it is: every job that mounts it reads the same inodes, never a copy.
 *
 * The layers go in as "N" relative to /proc/self/fd (as sandbox/overlay.py passes an
 * image's), one fsconfig("lowerdir+") each - which overlayfs has from Linux 6.8; an
 * older kernel fails the job, naming the tree's path, as does one whose overlayfs will
 * not take a detached mount as a layer.
 */
#define _GNU_SOURCE
#include "trees.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "files.h"
#include "kernel.h"
#include "report.h"

static const char MOUNTING[] = "sandbox init: mounting a tree at ";

static int empty_layer = -1; /* made for the job's first tree, shared by the rest */

static _Noreturn void mount_failed(const char *path, const char *why) {
    int err = errno;
    report_begin("setup_error");
    report_message(MOUNTING, path, err, why);
    report_end();
    _exit(125);
}

static int make_empty_layer(const char *path) {
    int context = (int)syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
    if (context < 0 || syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "size", "4k", 0) < 0 ||
        syscall(SYS_fsconfig, context, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        mount_failed(path, " (its empty layer)");
    }
    int layer = (int)syscall(SYS_fsmount, context, FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID |
                                                                         MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    if (layer < 0) {
        mount_failed(path, " (its empty layer)");
    }
    close(context);
    return layer;
}

/* The overlay of `tree` over the empty layer, as a detached mount; its fd. */
static int tree_overlay(const char *path, int tree) {
    char top[16], bottom[16];
    snprintf(top, sizeof top, "%d", tree);
    snprintf(bottom, sizeof bottom, "%d", empty_layer);
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    int context = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
    if (cwd < 0 || context < 0 || chdir("/proc/self/fd") < 0) {
        mount_failed(path, NULL);
    }
    if (syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "lowerdir+", top, 0) < 0 ||
        syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "lowerdir+", bottom, 0) < 0) {
        mount_failed(path, " (overlayfs takes lowerdir+ from Linux 6.8)");
    }
    if (syscall(SYS_fsconfig, context, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        mount_failed(path, " (an overlay of a detached mount)");
    }
    if (fchdir(cwd) < 0) {
        mount_failed(path, NULL);
    }
    close(cwd);
    int overlay = (int)syscall(SYS_fsmount, context, FSMOUNT_CLOEXEC,
                               MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    if (overlay < 0) {
        mount_failed(path, NULL);
    }
    close(context);
    return overlay;
}

/* A writable tree - a host directory bound read-write, a volume - is the clone itself,
 * moved beneath the root: its writes must reach the directory, which an overlay would
 * keep in an upper layer of its own. nosuid and nodev, as every mount of a job's; its
 * read-only flag is left as the host's mount has it (a read-only filesystem stays one,
 * and the kernel locks it so in a user namespace anyway). Not recursive: the mounts
 * below the directory on the host are not the job's to see. */
static int writable_tree(const char *path, int tree) {
    struct mount_attributes attr = {.attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV};
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
        mount_failed(path, " (its attributes)");
    }
    return tree;
}

void mount_tree(const char *path, int tree, int writable) {
    if (!writable && empty_layer < 0) {
        empty_layer = make_empty_layer(path);
    }
    int target = directory_beneath(path, MOUNTING);
    int mount = writable ? writable_tree(path, tree) : tree_overlay(path, tree);
    if (syscall(SYS_move_mount, mount, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0) {
        mount_failed(path, NULL);
    }
    if (mount != tree) {
        close(mount);
    }
    close(target);
}

void trees_done(void) {
    if (empty_layer >= 0) {
        close(empty_layer);
        empty_layer = -1;
    }
}
