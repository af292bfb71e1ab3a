/* The program stage (C): the init's child that becomes the job's program. */
#ifndef SANDBOX_PROGRAM_H
#define SANDBOX_PROGRAM_H

#include <stddef.h>

/* Its channel to the init, as the seccomp filter knows it: the filter lets sendmsg and
 * recvmsg through on this fd number in every profile (sandbox/seccomp.py). */
enum { PROGRAM_CHANNEL_FD = 4 };

/* The job's uid and gid inside its sandbox (sandbox/rootfs.py SANDBOX_UID), and the
 * template's ids of the sandbox's own processes. */
enum { SANDBOX_ID = 1000 };

enum cgroup_join {
    JOIN_BY_FILES,      /* write "0" into each fd (v1: a tasks file per hierarchy) */
    JOIN_BY_DIRECTORY,  /* the one fd is the cgroup's directory: write into its cgroup.procs */
    JOIN_DONE,          /* created in the cgroup already (clone3 CLONE_INTO_CGROUP) */
};

struct program_setup {
    int cap_last;
    int trace;              /* install the filter last, just before the exec */
    int channel;            /* to the init; moved to PROGRAM_CHANNEL_FD */
    int first_cgroup_fd;    /* the job cgroup's fds: see `join` */
    int cgroup_fds;
    enum cgroup_join join;
    int own_user;           /* made in a user namespace of its own: becomes 1000 there once mapped */
    const unsigned char *filter;  /* classic BPF, 8 bytes an instruction */
    size_t filter_length;
};

_Noreturn void program_stage(const struct program_setup *setup);

#endif
