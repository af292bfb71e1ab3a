#define _GNU_SOURCE
#include "root.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "files.h"
#include "kernel.h"
#include "report.h"


static const char STAGE[] = "sandbox init: ";

/* `lo` up with the SIOCSIFFLAGS ioctl (as nsjail does) rather than a netlink request:
 * one system call on a throw-away socket. Nothing else exists in the namespace, so
 * nothing outside is reachable while programs talking to 127.0.0.1 still work. */
static void loopback_up(void) {
    int control = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strcpy(request.ifr_name, "lo");
    require(STAGE, control >= 0 && ioctl(control, SIOCGIFFLAGS, &request) == 0, "reading lo's flags");
    request.ifr_flags |= IFF_UP;
    require(STAGE, ioctl(control, SIOCSIFFLAGS, &request) == 0, "bringing lo up");
    close(control);
}

/* A detached mount of a fresh filesystem; its fd. */
static int new_filesystem(const char *type, const char *size, unsigned int attributes) {
    int context = (int)syscall(SYS_fsopen, type, FSOPEN_CLOEXEC);
    require(STAGE, context >= 0, type);
    if (size) {
        require(STAGE, syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "size", size, 0) == 0 &&
                        syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "mode", "0755", 0) == 0,
                    "configuring the scratch tmpfs");
    }
    require(STAGE, syscall(SYS_fsconfig, context, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0, type);
    int mount = (int)syscall(SYS_fsmount, context, FSMOUNT_CLOEXEC, attributes);
    require(STAGE, mount >= 0, type);
    close(context);
    return mount;
}

/* Attach a detached mount on the directory `path` beneath `root` (which the root
 * builder made; never through a symlink: an image's content is not trusted). Closes
 * `mount`. */
static void attach(int mount, int root, const char *path) {
    int target = open_beneath(root, path, O_PATH | O_DIRECTORY);
    require(STAGE, target >= 0, path);
    require(STAGE, syscall(SYS_move_mount, mount, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) == 0,
                path);
    close(target);
    close(mount);
}

/* The scratch tmpfs is attached at /tmp, its subdirectories are bound to /work and
 * /dev/shm, and its "tmp" subdirectory last on /tmp itself: the scratch root ends up
 * covered (two mounts on /tmp in mountinfo) and needs no unmount, which would cost an
 * RCU grace period per job. */
static void mount_scratch(int root, const char *disk_bytes) {
    static const struct {
        const char *destination, *directory;
        mode_t mode;
    } binds[] = {{"work", "work", 0755}, {"dev/shm", "shm", 01777}, {"tmp", "tmp", 01777}};
    int scratch = new_filesystem("tmpfs", disk_bytes, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    int scratch_root = dup(scratch);
    attach(scratch, root, "tmp");
    for (size_t i = 0; i < sizeof binds / sizeof binds[0]; i++) {
        /* A tmpfs made a moment ago by this process: nothing in it can be a symlink. */
        require(STAGE, mkdirat(scratch_root, binds[i].directory, binds[i].mode) == 0 &&
                        fchmodat(scratch_root, binds[i].directory, binds[i].mode, 0) == 0,
                    "making the scratch directories");
        int tree = (int)syscall(SYS_open_tree, scratch_root, binds[i].directory, OPEN_TREE_CLONE | O_CLOEXEC);
        require(STAGE, tree >= 0, binds[i].destination);
        attach(tree, root, binds[i].destination);
    }
    close(scratch_root);
}

/* Make the directory `root` the root and drop the tree it came from. */
static void pivot_into(int root) {
    require(STAGE, fchdir(root) == 0 && syscall(SYS_pivot_root, ".", ".") == 0 && umount2(".", MNT_DETACH) == 0 &&
                    chdir("/") == 0,
                "pivoting into the image root");
}

void set_up_job_root(const char *hostname, const char *disk_bytes, const char *root_path) {
    require(STAGE, sethostname(hostname, strlen(hostname)) == 0 && setdomainname("(none)", 6) == 0, "host name");
    loopback_up();
    int root = open(root_path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    require(STAGE, root >= 0, "opening the root");
    attach(new_filesystem("proc", NULL, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC), root, "proc");
    mount_scratch(root, disk_bytes);
    if (strcmp(root_path, "/") != 0) {
        pivot_into(root);
    }
    close(root);
}
