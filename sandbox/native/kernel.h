/* The kernel ABI the sandbox's C code uses, spelled out here rather than taken from the
 * kernel's headers: the C library it is best built with (musl, see setup.py) ships
 * none. */
#ifndef SANDBOX_KERNEL_H
#define SANDBOX_KERNEL_H

#include <stdint.h>

/* clone3 */
#define CLONE_INTO_CGROUP 0x200000000ULL
struct clone_arguments {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
        cgroup;
};

/* capabilities */
#define CAP_CHOWN 0
#define CAP_DAC_OVERRIDE 1
#define CAP_FOWNER 3
#define CAP_FSETID 4
#define LINUX_CAPABILITY_VERSION_3 0x20080522
struct capability_header {
    uint32_t version;
    int pid;
};
struct capability_data {
    uint32_t effective, permitted, inheritable;
};

/* seccomp */
#define SECCOMP_SET_MODE_FILTER 1
#define SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#define SECCOMP_IOCTL_NOTIF_RECV 0xC0502100UL
#define SECCOMP_IOCTL_NOTIF_SEND 0xC0182101UL
#define SECCOMP_USER_NOTIF_FLAG_CONTINUE 1U
struct sock_fprog {
    unsigned short len;
    const void *filter;
};
struct seccomp_data {
    int nr;
    uint32_t arch;
    uint64_t instruction_pointer;
    uint64_t args[6];
};
struct seccomp_notif {
    uint64_t id;
    uint32_t pid;
    uint32_t flags;
    struct seccomp_data data;
};
struct seccomp_notif_resp {
    uint64_t id;
    int64_t val;
    int32_t error;
    uint32_t flags;
};

/* openat2 */
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_NO_SYMLINKS 0x04
#define RESOLVE_BENEATH 0x08
struct open_how {
    uint64_t flags, mode, resolve;
};

/* the fd-based mount API (glibc's <sys/mount.h> has these since 2.36; musl's has not) */
#ifndef FSOPEN_CLOEXEC
#define FSOPEN_CLOEXEC 0x01
#define FSPICK_CLOEXEC 0x01
#define FSPICK_SYMLINK_NOFOLLOW 0x02
#define FSMOUNT_CLOEXEC 0x01
#define FSCONFIG_SET_FLAG 0
#define FSCONFIG_SET_STRING 1
#define FSCONFIG_CMD_CREATE 6
#define FSCONFIG_CMD_RECONFIGURE 7
#define MOUNT_ATTR_RDONLY 0x01
#define MOUNT_ATTR_NOSUID 0x02
#define MOUNT_ATTR_NODEV 0x04
#define MOUNT_ATTR_NOEXEC 0x08
#define MOVE_MOUNT_F_EMPTY_PATH 0x04
#define MOVE_MOUNT_T_EMPTY_PATH 0x40
#define OPEN_TREE_CLONE 1
#endif

/* mount_setattr (Linux 5.12; a name of our own for its argument, which glibc's
 * <sys/mount.h> may define too) */
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
struct mount_attributes {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

#endif
