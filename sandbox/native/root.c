#define _GNU_SOURCE
#include "root.h"

#include <errno.h>
#include <sched.h>
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

/* The writable layer's upper directory (an image's), as an O_PATH fd - the one thing of
 * it that a session's commit needs and that nothing can reach once the scratch root is
 * covered (mount_scratch). Kept above every number the init moves fds to (its fixed
 * slots, 3 to 7 and each exec's cgroup fds after them): a dup2 there would close it.
 * (The init's own moves out of the way start at the same floor, and take the lowest
 * free number there, so they pass it by.) */
enum { UPPER_FD_FLOOR = 64 };
static int upper_directory = -1;

int writable_layer_upper(void) {
    return upper_directory;
}

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

/* The scratch tmpfs (`scratch`, which this closes) is attached at /tmp, its
 * subdirectories are bound to /work and /dev/shm, and its "tmp" subdirectory last on
 * /tmp itself: the scratch root ends up covered (two mounts on /tmp in mountinfo) and
 * needs no unmount, which would cost an RCU grace period per job. */
static void mount_scratch(int root, int scratch) {
    static const struct {
        const char *destination, *directory;
        mode_t mode;
    } binds[] = {{"work", "work", 0755}, {"dev/shm", "shm", 01777}, {"tmp", "tmp", 01777}};
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

/* Whether `path` (absolute) is one of the directories the scratch is mounted on. */
static int on_scratch(const char *path) {
    return strcmp(path, "/work") == 0 || strcmp(path, "/tmp") == 0 || strcmp(path, "/dev/shm") == 0;
}

/* Make the directory `root` the root, the tree it came from (the image's base) put on
 * its /tmp - where the scratch then covers it, as it covers its own root: an unmount
 * would cost an RCU grace period per job, one that grows with the machine's load. The
 * base's /proc stays in the namespace until the job's is mounted (a new procfs can only
 * be mounted where a full one is visible). */
static void pivot_into(int root) {
    require(STAGE, fchdir(root) == 0 && syscall(SYS_pivot_root, ".", "tmp") == 0 && chdir("/") == 0,
            "pivoting into the image root");
}

/* (An image's B, in its private copy of the image's base: a read-only root with the
 * image's layers, its generated files and /dev, prepared once per image by the zygote,
 * sandbox/rootfs.py.) The job's own writable layer: an overlay of that root whose upper
 * and work directories are on the job's scratch tmpfs (`scratch`), so that --disk caps
 * everything the job writes and no other filesystem is made per job. It is attached at
 * the base's /tmp, with the base's /dev moved onto it; its fd. Nothing of the base is
 * writable and no other job shares the upper layer; the scratch root, which holds it,
 * is covered once mounted (mount_scratch). The upper and work directories are named
 * relative to the scratch (the working directory for the moment), so the job's
 * mountinfo shows "upper", "upper.work" and "/" - no host path (beside the scratch's
 * own "work", "shm" and "tmp"). One lower layer, by the key
 * every overlayfs takes ("lowerdir"): kernels before 6.5 pass the keys as one option
 * string when the superblock is made, which is also when the relative names are
 * resolved. */
static int writable_layer(int scratch, unsigned int job_id, const char *workdir) {
    /* Made with the job's file system ids: the overlay's root is the upper directory,
     * so the job owns its root, as a job of the template's 1000 owns an image's. */
    require(STAGE, mkdirat(scratch, "upper", 0755) == 0 && mkdirat(scratch, "upper.work", 0755) == 0,
            "making the writable layer's directories");
    int upper = openat(scratch, "upper", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    require(STAGE, upper >= 0, "opening the writable layer's upper directory");
    upper_directory = fcntl(upper, F_DUPFD_CLOEXEC, UPPER_FD_FLOOR);
    require(STAGE, upper_directory >= 0, "keeping the writable layer's upper directory");
    close(upper);
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    require(STAGE, cwd >= 0 && fchdir(scratch) == 0, "entering the scratch");
    int context = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
    require(STAGE, context >= 0, "overlay");
    require(STAGE, syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "lowerdir", "/", 0) == 0 &&
                    syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "upperdir", "upper", 0) == 0 &&
                    syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "workdir", "upper.work", 0) == 0 &&
                    syscall(SYS_fsconfig, context, FSCONFIG_SET_FLAG, "userxattr", NULL, 0) == 0 &&
                    syscall(SYS_fsconfig, context, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0,
                "the job's writable layer over the image");
    int layer = (int)syscall(SYS_fsmount, context, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    require(STAGE, layer >= 0, "mounting the job's writable layer");
    require(STAGE, fchdir(cwd) == 0, "leaving the scratch");
    close(cwd);
    close(context);
    require(STAGE, syscall(SYS_move_mount, layer, "", AT_FDCWD, "/tmp", MOVE_MOUNT_F_EMPTY_PATH) == 0,
            "attaching the job's root");
    int dev = open_beneath(layer, "dev", O_PATH | O_DIRECTORY);
    require(STAGE, dev >= 0 && syscall(SYS_move_mount, AT_FDCWD, "/dev", dev, "", MOVE_MOUNT_T_EMPTY_PATH) == 0,
            "moving /dev onto the job's root");
    close(dev);
    if (job_id != 0 && !on_scratch(workdir)) {
        /* The base made the working directory, as the image's 1000 owns everything: a
         * job of its own id owns it too (a copy-up of its attributes into this job's
         * upper layer). One the scratch covers is the job's already. */
        int directory = open_beneath(layer, workdir + 1, O_RDONLY | O_DIRECTORY);
        require(STAGE, directory >= 0 && fchown(directory, job_id, job_id) == 0, "handing over the working directory");
        close(directory);
    }
    return layer;
}

void set_up_job_root(const char *hostname, const char *disk_bytes, int image_base, unsigned int job_id,
                     const char *workdir) {
    require(STAGE, sethostname(hostname, strlen(hostname)) == 0 && setdomainname("(none)", 6) == 0, "host name");
    loopback_up();
    int scratch = new_filesystem("tmpfs", disk_bytes, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    int root = -1;
    if (image_base >= 0) {
        /* Enter the image's base and copy it: this job's mounts stay its own. */
        require(STAGE, setns(image_base, CLONE_NEWNS) == 0 && unshare(CLONE_NEWNS) == 0, "entering the image's base");
        close(image_base);
        /* The scratch is attached (at the base's /tmp, which the job's root then covers)
         * before it holds the writable layer: kernels before 6.8 refuse an overlay whose
         * upper directory is on a mount of no namespace ("failed to clone upperpath"). */
        require(STAGE, syscall(SYS_move_mount, scratch, "", AT_FDCWD, "/tmp", MOVE_MOUNT_F_EMPTY_PATH) == 0,
                "attaching the scratch");
        root = writable_layer(scratch, job_id, workdir);
        pivot_into(root);
    } else {
        root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        require(STAGE, root >= 0, "opening the root");
    }
    attach(new_filesystem("proc", NULL, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC), root, "proc");
    mount_scratch(root, scratch);
    close(root);
}
