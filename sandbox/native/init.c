/*
 * The sandbox init (B, pid 1 of the job). For the host image, B is a clone of this
 * binary running as the spawner (MODE "serve", below), which the zygote
 * (sandbox/stages.py) starts once: the spawner sits in the template's mount namespace
 * and clones each B into new mount, pid, network, IPC and UTS namespaces as a child of
 * the supervisor. For an image, B enters a copy of the image's base (a read-only root
 * the zygote prepares once per image) instead of the template. Either way B mounts the
 * job's own filesystems (root.c: on an image, its writable layer first, then pivoting
 * into it), forks the program stage (program.c), waits for its job and watches it -
 * or, asked for a session (serve_session), runs one exec after another.
 *
 * Why C, in a project otherwise Python: this process and its child exist once per job
 * and everything they cost is paid per job. As Python, the init kept a forked
 * interpreter alive through the job: every page Python's reference counting wrote to
 * was copied, its job-time steps ran as Python, and a forked Python program stage was
 * torn down in its exec. Here the interpreter is gone before the job (the exec), the
 * program stage is a fork of a small process, and the job's path is a few system calls.
 * runc keeps its namespace entry in C beside Go (nsexec.c) for the same kind of reason.
 *
 * Run as: sandbox-init serve (the spawner; see serve), or
 *         a spawner's request: MODE CAP_LAST TRACE EXEC_ONCE NATIVE_ARCH EXECVE_NR EXECVEAT_NR
 *                      CPU_COUNTER_KIND CGROUP_FDS CGROUP_JOIN DISK_BYTES HOSTNAME IMAGE_BASE
 *                      WORKDIR JOB_ID
 * (MODE "spawned"; IMAGE_BASE: "-1" for the host image, else the number of the fd,
 * after all others, of the mount namespace of the image's base; WORKDIR: the directory
 * a job of its own id is to own in an image's root; JOB_ID: the id of the template user
 * namespace the program runs as, "0" for the template's 1000 - see job_identity)
 * with fd 3 the report pipe to the supervisor, 4 its job channel, 5 a memfd with the
 * seccomp program, 6 the job cgroup's CPU counter (CPU_COUNTER_KIND "cpuacct.usage" or
 * "cpu.stat"; "none": no cgroup, and no fd from 6 on), 7.. the job cgroup's tasks files
 * (CGROUP_JOIN "files", v1: one per hierarchy) or its directory ("directory", v2: the
 * program stage is created in it with clone3(CLONE_INTO_CGROUP) - no attach at all);
 * and CAP_SYS_ADMIN, CAP_SYS_CHROOT, CAP_NET_ADMIN, CAP_SETPCAP, CAP_SETUID,
 * CAP_SETGID and CAP_DAC_READ_SEARCH in its ambient set (the spawner's) - and, until its
 * root is set up, the file capabilities an image's writable layer works with
 * (drop_layer_capabilities):
 * for entering the template, its mounts, host name and loopback, the job's files and
 * its program stage's id maps, reading what the job leaves to collect whatever its
 * modes, and the program stage's cgroup namespace and bounding set (which drops them
 * with everything else).
 *
 * The supervisor's death ends B through the job channel (EOF): B waits on it before
 * its job and polls it during the job (not PR_SET_PDEATHSIG, which follows the exit of
 * a thread - the one that cloned B's parent's side - rather than of the supervisor).
 *
 * The job (sandbox/job_message.py start_job) is NUL-terminated fields - the size of the
 * writable area, the number of input files, a path and an octal mode per file, the
 * number of trees to mount and a path per tree, the number of paths to collect, a
 * path, "file" or "dir" and the most entries to walk per path, then what the program
 * stage takes (program.c) - with stdin, stdout, stderr, the input files and the trees
 * (detached mounts: trees.c) as fds.
 *
 * Messages to the supervisor (report.h): "ready" once the program stage installed its
 * filter; "violation"/"traced" (notify.c); "exited" {status, t, maxrss_kb, utime,
 * stime} when the program stage's process exits. The init then exits, and the kernel
 * kills whatever else runs in the job's pid namespace - or, for a job that names files
 * to collect, kills and reaps it all first and sends the files (collect.c). Messages
 * the supervisor reads when it needs them go on the job channel instead: "started"
 * {t, cpu_ns} when it hands the job over - the job's clock and CPU account start
 * there - and the collected files.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "collect.h"
#include "files.h"
#include "kernel.h"
#include "notify.h"
#include "program.h"
#include "report.h"
#include "root.h"
#include "trees.h"

enum { JOB_CHANNEL_FD = 4, FILTER_FD = 5, CPU_COUNTER_FD = 6, FIRST_CGROUP_FD = 7 };
enum { MAX_FILTER = 4096 * 8, MAX_JOB = 1 << 20 };
static const char STAGE[] = "sandbox init: ";

static unsigned char filter[MAX_FILTER + 1];
static char job[MAX_JOB + 1];

static long long monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

static size_t read_filter(void) {
    size_t length = 0;
    for (;;) {
        ssize_t got = pread(FILTER_FD, filter + length, sizeof filter - length, (off_t)length);
        require(STAGE, got >= 0, "reading the seccomp program");
        if (got == 0) {
            break;
        }
        length += (size_t)got;
    }
    close(FILTER_FD);
    errno = EINVAL;
    require(STAGE, length > 0 && length <= MAX_FILTER && length % 8 == 0, "a seccomp program of the wrong size");
    return length;
}

/* The job cgroup's CPU time in ns: cpuacct.usage (v1) is the number; cpu.stat (v2)
 * has it in microseconds on its "usage_usec" line. */
static long long read_cpu_ns(const char *kind) {
    char text[4096];
    ssize_t got = pread(CPU_COUNTER_FD, text, sizeof text - 1, 0);
    require(STAGE, got > 0, "reading the job cgroup's CPU time");
    text[got] = '\0';
    if (strcmp(kind, "cpuacct.usage") == 0) {
        return strtoll(text, NULL, 10);
    }
    const char *usage = strstr(text, "usage_usec ");
    errno = EINVAL;
    require(STAGE, usage != NULL, "finding usage_usec in cpu.stat");
    return strtoll(usage + strlen("usage_usec "), NULL, 10) * 1000;
}

/* The next NUL-terminated field of the job at *offset (advanced past it). */
static const char *next_field(size_t length, size_t *offset) {
    const char *field = job + *offset;
    const char *end = memchr(field, '\0', length - *offset);
    errno = EINVAL;
    require(STAGE, *offset < length && end != NULL, "a job message cut short");
    *offset = (size_t)(end - job) + 1;
    return field;
}

/* Resize the writable area if the job asks for another size than the sandbox was
 * built with, copy the input files in (their fds follow stdio), mount the trees (their
 * fds follow the files'), note what to collect at the end (collect.c); returns the
 * offset of the program stage's part of the message. */
static size_t take_files(size_t length, const char *built_disk_bytes, const int *fds, int received) {
    size_t offset = 0;
    const char *disk_bytes = next_field(length, &offset);
    long files = strtol(next_field(length, &offset), NULL, 10);
    errno = EINVAL;
    require(STAGE, files >= 0 && received >= 3 + files, "a job whose fds do not match it");
    if (strcmp(disk_bytes, built_disk_bytes) != 0) {
        resize_scratch(disk_bytes);
    }
    for (long i = 0; i < files; i++) {
        const char *path = next_field(length, &offset);
        unsigned int mode = (unsigned int)strtoul(next_field(length, &offset), NULL, 8);
        copy_in(path, fds[3 + i], mode);
        close(fds[3 + i]);
    }
    long trees = strtol(next_field(length, &offset), NULL, 10);
    errno = EINVAL;
    require(STAGE, trees >= 0 && received == 3 + files + trees, "a job whose fds do not match it");
    for (long i = 0; i < trees; i++) {
        int writable = strcmp(next_field(length, &offset), "rw") == 0; /* "ro" or "rw", then the path */
        mount_tree(next_field(length, &offset), fds[3 + files + i], writable);
        close(fds[3 + files + i]);
    }
    trees_done();
    long collected = strtol(next_field(length, &offset), NULL, 10);
    for (long i = 0; i < collected; i++) {
        const char *path = next_field(length, &offset);
        int directory = strcmp(next_field(length, &offset), "dir") == 0;
        collect_add(path, directory, strtol(next_field(length, &offset), NULL, 10));
    }
    return offset;
}

static void report_exit(int status, const struct rusage *usage) {
    report_begin("exited");
    report_number("status", status);
    report_number("t", monotonic_ns());
    report_number("maxrss_kb", usage->ru_maxrss);
    report_seconds("utime", usage->ru_utime.tv_sec, usage->ru_utime.tv_usec);
    report_seconds("stime", usage->ru_stime.tv_sec, usage->ru_stime.tv_usec);
    report_end();
}

/* The job named files to collect: once its program exited, nothing else of it may run
 * while they are opened - kill the rest of the pid namespace (this is its pid 1), reap
 * it all, then collect. A job that named none goes without: not a call more. */
static void collect_after(void) {
    if (collect_count() == 0) {
        return;
    }
    kill(-1, SIGKILL);
    /* __WALL: a child cloned with another exit signal than SIGCHLD counts too. */
    while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {
    }
    collect_send(JOB_CHANNEL_FD);
}

/* The supervisor is gone (its end of the job channel closed): so is the job. */
static int supervisor_gone(void) {
    char peek;
    ssize_t got = recv(JOB_CHANNEL_FD, &peek, 1, MSG_DONTWAIT);
    return got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* Until the program stage's process exits (then returns, having reported it): reap
 * every child as it exits (orphans of the job come to us, pid 1, and a zombie would
 * hold a pid of the job's limit) and answer the filter's notifications - on
 * `listener`, or, in a trace run, on the one the program stage sends just before its
 * exec. */
static void watch_and_reap(pid_t program, int to_program, int listener, struct watcher *watcher) {
    sigset_t child_signals;
    sigemptyset(&child_signals);
    sigaddset(&child_signals, SIGCHLD);
    int children = signalfd(-1, &child_signals, SFD_CLOEXEC | SFD_NONBLOCK);
    require(STAGE, children >= 0, "signalfd");
    struct pollfd watched[3] = {{.fd = children, .events = POLLIN},
                                {.fd = JOB_CHANNEL_FD, .events = POLLIN},
                                {.fd = listener >= 0 ? listener : to_program, .events = POLLIN}};
    int watching = 3;
    for (;;) {
        for (;;) {
            int status;
            struct rusage usage;
            pid_t pid = wait4(-1, &status, WNOHANG, &usage);
            if (pid <= 0) {
                break;
            }
            if (pid == program) {
                report_exit(status, &usage);
                close(children);
                return;
            }
        }
        if (poll(watched, (nfds_t)watching, -1) < 0) {
            require(STAGE, errno == EINTR, "poll");
            continue;
        }
        if (watched[0].revents) {
            struct signalfd_siginfo drained[16];
            ssize_t ignored = read(children, drained, sizeof drained);
            (void)ignored;
        }
        if (watched[1].revents && supervisor_gone()) {
            kill(-1, SIGKILL);
            _exit(0);
        }
        if (watching == 3 && watched[2].revents) {
            if (watched[2].fd == to_program) {
                int fds[MAX_PASSED_FDS];
                int received = 0;
                char note[16];
                channel_receive(to_program, note, sizeof note, fds, 1, &received, STAGE);
                if (received == 1) {
                    watched[2].fd = fds[0]; /* the trace run's listener */
                } else {
                    watching = 2; /* the stage failed before its filter: its exit comes */
                }
            } else if (!watcher_handle(watcher, watched[2].fd)) {
                watching = 2;
            }
        }
    }
}

/* Nothing the sandbox side prints (or a job provokes it to print) may land in the
 * supervisor's output or the worker's log: what matters travels as messages. */
static void stdio_to_null(void) {
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    require(STAGE, null >= 0, "opening /dev/null");
    for (int fd = 0; fd < 3; fd++) {
        require(STAGE, dup2(null, fd) == fd, "stdio");
    }
    close(null);
}

/* MODE "serve": the spawner, one per zygote and the supervisor's child
 * (the zygote clones it with CLONE_PARENT), started with fd 3 its request channel and
 * fd 4 the template's mount namespace, which it enters once. A request is the
 * arguments after MODE in "Run as" (NUL-terminated) with B's fds as SCM_RIGHTS, in the
 * order of their numbers in B. For each, clone B into new namespaces (an image's B
 * shares this one's mounts until it enters its base) as the supervisor's child
 * (CLONE_PARENT) and answer its pid, or a
 * setup_error line. Returns in B, its fds in place, with its arguments. EOF ends the
 * spawner.
 *
 * Why a process that stays: B is a clone of a small, idle C process - no exec, no
 * Python, no spawn per sandbox. (Before, the zygote spawned this binary per sandbox,
 * and the spawn, the exec and the zygote's Python were a tenth of a job's CPU.) */
enum { SPAWNER_CHANNEL_FD = 3, SPAWNER_NAMESPACE_FD = 4, MAX_REQUEST = 4096, REQUEST_FIELDS = 15 };
enum { IMAGE_BASE_FIELD = 13 }; /* in request_argv */
enum { SPAWN_FDS = 3, MAX_SPAWN_FDS = 16, HIGH_FD = 64 }; /* at least: report pipe, job channel, filter */
static const char SPAWNER[] = "sandbox spawner: ";

static char request[MAX_REQUEST + 1];
static char *request_argv[REQUEST_FIELDS + 2];

/* The request's NUL-terminated fields into request_argv[1..]; their count. */
static int split_request(size_t length) {
    int count = 0;
    size_t offset = 0;
    while (offset < length && count < REQUEST_FIELDS + 1) {
        const char *end = memchr(request + offset, '\0', length - offset);
        if (end == NULL) {
            return -1;
        }
        request_argv[++count] = request + offset;
        offset = (size_t)(end - request) + 1;
    }
    return offset == length ? count : -1;
}

/* (In B.) The received fds to 3, 4, ... as main expects them (they may have arrived at
 * any of those numbers: first out of the way); main's close_range closes the rest. */
static void place_fds(const int *fds, int received) {
    int high[MAX_SPAWN_FDS];
    for (int i = 0; i < received; i++) {
        high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, HIGH_FD);
        if (high[i] < 0) {
            _exit(125); /* no report pipe in place yet to say so; the supervisor sees B die */
        }
        close(fds[i]);
    }
    for (int i = 0; i < received; i++) {
        if (dup2(high[i], REPORT_FD + i) != REPORT_FD + i) {
            _exit(125);
        }
    }
}

static void answer_failure(int err, const char *what) {
    report_begin("setup_error");
    report_message(SPAWNER, what, err, NULL);
    report_end();
}

static char **serve(void) {
    prctl(PR_SET_NAME, "sandbox-spawn", 0, 0, 0);
    require(SPAWNER, syscall(SYS_close_range, SPAWNER_NAMESPACE_FD + 1, ~0U, 0) == 0, "closing inherited fds");
    require(SPAWNER, setns(SPAWNER_NAMESPACE_FD, CLONE_NEWNS) == 0, "entering the template");
    close(SPAWNER_NAMESPACE_FD);
    for (;;) {
        int fds[MAX_PASSED_FDS];
        int received = 0;
        size_t length = channel_receive(SPAWNER_CHANNEL_FD, request, MAX_REQUEST, fds, MAX_SPAWN_FDS, &received,
                                        SPAWNER);
        if (length == 0) {
            _exit(0); /* the supervisor closed the channel */
        }
        int fields = split_request(length);
        long pid = -1;
        errno = EINVAL;
        if (fields == REQUEST_FIELDS && received >= SPAWN_FDS) {
            /* An image's B enters its base and copies that instead (root.c): a copy of
             * the template would be made only to be dropped. */
            unsigned long mounts = strcmp(request_argv[IMAGE_BASE_FIELD], "-1") == 0 ? CLONE_NEWNS : 0;
            pid = syscall(SYS_clone, CLONE_PARENT | mounts | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                                         SIGCHLD,
                          NULL, NULL, NULL, NULL);
        }
        if (pid == 0) {
            prctl(PR_SET_NAME, "sandbox-init", 0, 0, 0);
            place_fds(fds, received);
            request_argv[0] = "sandbox-init";
            return request_argv;
        }
        int err = errno;
        for (int i = 0; i < received; i++) {
            close(fds[i]);
        }
        if (pid > 0) {
            char text[24];
            int length = snprintf(text, sizeof text, "%ld\n", pid);
            if (send(SPAWNER_CHANNEL_FD, text, (size_t)length, MSG_NOSIGNAL) != length) {
                _exit(1);
            }
        } else {
            answer_failure(err, fields == REQUEST_FIELDS && received >= SPAWN_FDS ? "cloning a sandbox init"
                                                                                     : "a malformed request");
        }
    }
}

/* The capabilities B holds only while it sets up the root: an image's writable layer
 * acts with its mounter's (copying up a file of the image's 1000 for a job of its own
 * id, whatever its mode, with its owner and times), and the job's working directory is
 * handed over with CAP_CHOWN. Gone before anything of the job's: B then creates the
 * job's files with the job's file system ids, and those checks must hold. */
static void drop_layer_capabilities(void) {
    static const int layer_only[] = {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID};
    struct capability_header header = {.version = LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct capability_data data[2];
    require(STAGE, syscall(SYS_capget, &header, data) == 0, "reading the capability sets");
    for (size_t i = 0; i < sizeof layer_only / sizeof layer_only[0]; i++) {
        unsigned int bit = 1U << layer_only[i];
        data[0].effective &= ~bit;
        data[0].permitted &= ~bit;
        data[0].inheritable &= ~bit;
    }
    require(STAGE, syscall(SYS_capset, &header, data) == 0, "dropping the set-up capabilities");
}

/* The arguments, in the order of "Run as" above. */
struct arguments {
    const char *cpu_counter, *cgroup_join, *disk_bytes, *hostname, *workdir;
    int cap_last, trace, exec_once, execve_nr, execveat_nr, cgroup_fds, image_base;
    unsigned int native_arch, job_id;
};

static struct arguments parse(int argc, char **argv) {
    errno = EINVAL;
    require(STAGE, argc == REQUEST_FIELDS + 1, "started with the wrong arguments");
    return (struct arguments){.cap_last = atoi(argv[2]),
                              .trace = atoi(argv[3]),
                              .exec_once = atoi(argv[4]),
                              .native_arch = (unsigned int)strtoul(argv[5], NULL, 10),
                              .execve_nr = atoi(argv[6]),
                              .execveat_nr = atoi(argv[7]),
                              .cpu_counter = argv[8],
                              .cgroup_fds = atoi(argv[9]),
                              .cgroup_join = argv[10],
                              .disk_bytes = argv[11],
                              .hostname = argv[12],
                              .image_base = atoi(argv[13]),
                              .workdir = argv[14],
                              .job_id = (unsigned int)strtoul(argv[15], NULL, 10)};
}

/* The job's own id (JOB_ID, an id of the template's job range that no other sandbox
 * runs as now; sandbox/ids.py): the program stage is made in a user namespace of its
 * own (CLONE_NEWUSER, which makes this process the namespace's owner, with every
 * capability over it), this writes its maps - uid and gid 1000 inside, JOB_ID outside -
 * and the stage becomes 1000 there (program.c). So the job looks like uid 1000 while
 * the host sees an id that owns nothing, and a job cannot act on this init or another
 * sandbox: it is another user, with no capability in the template namespace.
 *
 * The init creates what the job is to own - the scratch directories, the input files -
 * with JOB_ID as its file system ids (files_as), and writes the stage's maps as 1000,
 * the owner of the stage's /proc files until it changes its ids. */
static void files_as(unsigned int id) {
    setfsuid(id);
    setfsgid(id);
    errno = EPERM;
    require(STAGE, (unsigned int)setfsuid((uid_t)-1) == id && (unsigned int)setfsgid((gid_t)-1) == id,
            "taking the job's file system ids");
}

static void map_program_ids(pid_t program, unsigned int job_id, int to_program) {
    char line[64];
    int length = snprintf(line, sizeof line, "%d %u 1\n", SANDBOX_ID, job_id);
    static const char *const maps[] = {"uid_map", "gid_map"};
    for (size_t i = 0; i < sizeof maps / sizeof maps[0]; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/%s", (int)program, maps[i]);
        int map = open(path, O_WRONLY | O_CLOEXEC);
        require(STAGE, map >= 0 && write(map, line, (size_t)length) == length, "writing the job's id maps");
        close(map);
    }
    channel_send(to_program, "m", 1, NULL, 0, STAGE);
}

/* SCHED_OTHER for the program stage and this process. The kernel lets a process without
 * CAP_SYS_NICE over the host change the policy of its own user's processes only: a
 * stage that runs as the job's id is changed as that id, for the moment of the call
 * (CAP_SETUID in the template; no capability is lost going between two ids that are
 * not 0). */
static void leave_batch(pid_t program, unsigned int job_id) {
    struct sched_param normal = {.sched_priority = 0};
    if (job_id != 0) {
        require(STAGE, setresuid((uid_t)-1, job_id, (uid_t)-1) == 0, "taking the job's id");
    }
    long changed = syscall(SYS_sched_setscheduler, program, SCHED_OTHER, &normal);
    if (job_id != 0) {
        require(STAGE, setresuid((uid_t)-1, SANDBOX_ID, (uid_t)-1) == 0, "taking back its own id");
    }
    require(STAGE, changed == 0 && syscall(SYS_sched_setscheduler, 0, SCHED_OTHER, &normal) == 0,
            "leaving SCHED_BATCH");
}

/* The program stage, forked - or, joining by directory, cloned straight into the job
 * cgroup (clone3 CLONE_INTO_CGROUP; where the kernel lacks it, the stage writes itself
 * into the directory's cgroup.procs instead). */
static pid_t fork_program_stage(struct program_setup *setup) {
    unsigned long long own_user = setup->own_user ? CLONE_NEWUSER : 0;
    if (setup->join == JOIN_BY_DIRECTORY) {
        struct clone_arguments arguments = {.flags = CLONE_INTO_CGROUP | own_user,
                                            .exit_signal = SIGCHLD,
                                            .cgroup = (unsigned long long)setup->first_cgroup_fd};
        long pid = syscall(SYS_clone3, &arguments, sizeof arguments);
        if (pid >= 0) {
            if (pid == 0) {
                setup->join = JOIN_DONE;
            }
            return (pid_t)pid;
        }
        require(STAGE, errno == ENOSYS || errno == E2BIG || errno == EINVAL, "cloning the program stage");
    }
    if (own_user) {
        /* clone(2), not clone3: a kernel without clone3 comes this way too. No new
         * stack: the child goes on on a copy of this one, as after fork. */
        return (pid_t)syscall(SYS_clone, (unsigned long)(CLONE_NEWUSER | SIGCHLD), 0UL, 0UL, 0UL, 0UL);
    }
    return fork();
}

/* A session (sandbox/session.py): a sandbox that runs one command after another, its
 * root, writable layer and scratch kept between them. Asked for by the first message
 * on the job channel, SESSION_REQUEST, instead of a job. The program stage forked
 * ahead of time goes (it sits in the session's cgroup, which from now on holds no
 * process of its own: each exec gets a cgroup below it, and v2 lets a cgroup with
 * processes have none with controllers), and "session" answers on the job channel.
 * Then, per exec, two messages: EXEC_REQUEST with the exec cgroup's CPU counter and
 * join fds (as fd 6 and 7.. were for the one job; on v1 the session's freezer may add
 * one), and a job message as start_job sends it. A program stage is forked for it as for a job - joined to the exec's
 * cgroup, its own user namespace and id maps, the filter - and watched as a job's is;
 * once its program exits, everything else of the exec is killed and reaped (nothing of
 * an exec outlives it, so an idle session runs nothing), its files are collected, and
 * "over" on the job channel says the next exec may come. Limits and kills are the
 * supervisor's, on the exec's cgroup: this process, and with it the session, outlives
 * every exec. EOF on the job channel ends the session (and everything in it).
 * UPPER_REQUEST, between execs, asks for the writable layer's upper directory (a commit:
 * send_upper). */
static const char SESSION_REQUEST[] = "session";
static const char EXEC_REQUEST[] = "exec";
static const char UPPER_REQUEST[] = "upper";

/* The answer to UPPER_REQUEST: "upper" with the O_PATH fd of an image's upper directory
 * (root.c), or with none on the host image. The supervisor reads the layer through it,
 * from outside: no process of the session runs meanwhile (it asks between execs). */
static void send_upper(void) {
    static const char answer[] = "{\"kind\": \"upper\"}";
    int upper = writable_layer_upper();
    channel_send(JOB_CHANNEL_FD, answer, sizeof answer - 1, &upper, upper >= 0 ? 1 : 0, STAGE);
}

/* Whatever of the exec is left once its program exited: killed (this is pid 1 of the
 * sandbox, so -1 is every other process in it) and reaped. */
static void end_exec(void) {
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, __WALL) > 0 || errno == EINTR) {
    }
}

/* The exec's CPU counter to CPU_COUNTER_FD and its cgroup fds to FIRST_CGROUP_FD..,
 * where the program stage expects them (moved out of the way first, as place_fds). */
static void place_exec_fds(const int *fds, int received) {
    errno = EINVAL;
    require(STAGE, received >= 2, "an exec without its cgroup");
    int high[MAX_SPAWN_FDS];
    for (int i = 0; i < received; i++) {
        high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, HIGH_FD);
        require(STAGE, high[i] >= 0, "moving an exec's fds");
        close(fds[i]);
    }
    for (int i = 0; i < received; i++) {
        int target = i == 0 ? CPU_COUNTER_FD : FIRST_CGROUP_FD + i - 1;
        require(STAGE, dup2(high[i], target) == target, "moving an exec's fds");
        close(high[i]);
    }
}

static void session_answer(const char *kind) {
    report_begin(kind);
    report_end_on(JOB_CHANNEL_FD);
}

static _Noreturn void serve_session(struct program_setup *setup, struct watcher *watcher,
                                    const struct arguments *arguments, pid_t idle_program, int to_idle_program,
                                    int idle_listener) {
    close(to_idle_program); /* EOF: the idle stage exits ("discarded unused") */
    if (idle_listener >= 0) {
        close(idle_listener);
    }
    while (waitpid(idle_program, NULL, __WALL) < 0 && errno == EINTR) {
    }
    session_answer("session");
    int exec_budget = watcher->exec_budget;
    enum cgroup_join join = setup->join;
    static int passed[MAX_PASSED_FDS];
    for (;;) {
        int received = 0;
        char header[16];
        size_t length = channel_receive(JOB_CHANNEL_FD, header, sizeof header - 1, passed, MAX_SPAWN_FDS, &received,
                                        STAGE);
        if (length == 0) {
            _exit(0);
        }
        header[length] = '\0';
        if (strcmp(header, UPPER_REQUEST) == 0) {
            send_upper();
            continue;
        }
        errno = EPROTO;
        require(STAGE, strcmp(header, EXEC_REQUEST) == 0, "a session request it does not know");
        place_exec_fds(passed, received);
        setup->cgroup_fds = received - 1; /* (v1: the session's freezer may be one more) */
        int pair[2];
        require(STAGE, socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0, "socketpair");
        setup->channel = pair[1];
        setup->join = join;
        pid_t program = fork_program_stage(setup);
        require(STAGE, program >= 0, "forking the program stage");
        if (program == 0) {
            close(pair[0]);
            program_stage(setup);
        }
        close(pair[1]);
        int to_program = pair[0];
        if (setup->own_user) {
            map_program_ids(program, arguments->job_id, to_program);
        }
        for (int fd = FIRST_CGROUP_FD; fd < FIRST_CGROUP_FD + setup->cgroup_fds; fd++) {
            close(fd);
        }
        char note[16];
        int listener_fds[1];
        int got = 0;
        int stage_ready = channel_receive(to_program, note, sizeof note, listener_fds, 1, &got, STAGE) > 0;
        int listener = got == 1 ? listener_fds[0] : -1;
        size_t job_length = channel_receive(JOB_CHANNEL_FD, job, MAX_JOB, passed, MAX_PASSED_FDS, &received, STAGE);
        if (job_length == 0) {
            kill(-1, SIGKILL);
            _exit(0);
        }
        if (setup->own_user) {
            files_as(arguments->job_id);
        }
        size_t program_offset = take_files(job_length, arguments->disk_bytes, passed, received);
        if (stage_ready) {
            leave_batch(program, arguments->job_id);
        }
        long long cpu_ns = read_cpu_ns(arguments->cpu_counter);
        long long started_ns = monotonic_ns();
        if (stage_ready) { /* else it failed and said why: its exit is reported below */
            channel_send(to_program, job + program_offset, job_length - program_offset, passed, 3, STAGE);
        }
        for (int i = 0; i < 3; i++) {
            close(passed[i]);
        }
        report_begin("started");
        report_number("t", started_ns);
        report_number("cpu_ns", cpu_ns);
        report_end_on(JOB_CHANNEL_FD);
        watcher->exec_budget = exec_budget;
        watch_and_reap(program, to_program, listener, watcher);
        close(to_program);
        if (listener >= 0) {
            close(listener);
        }
        close(CPU_COUNTER_FD);
        end_exec();
        if (collect_count() > 0) {
            collect_send(JOB_CHANNEL_FD);
            collect_forget();
        }
        if (setup->own_user) { /* as before the first stage: the next one's maps are written as 1000 */
            files_as(SANDBOX_ID);
            require(STAGE, prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) == 0, "staying dumpable");
        }
        session_answer("over");
    }
}

int main(int argc, char **argv) {
    prctl(PR_SET_NAME, "sandbox-init", 0, 0, 0);
    if (argc == 2 && strcmp(argv[1], "serve") == 0) {
        argv = serve(); /* returns in each B */
        argc = REQUEST_FIELDS + 1;
    }
    struct arguments arguments = parse(argc, argv);
    /* Only what the layout names stays open (the zygote's own fds may have come along). */
    int first_unused = arguments.image_base >= 0 ? arguments.image_base + 1 : FIRST_CGROUP_FD + arguments.cgroup_fds;
    require(STAGE, syscall(SYS_close_range, first_unused, ~0U, 0) == 0, "closing inherited fds");
    stdio_to_null();
    int own_user = arguments.job_id != 0;
    if (own_user) {
        files_as(arguments.job_id);
    }
    set_up_job_root(arguments.hostname, arguments.disk_bytes, arguments.image_base, arguments.job_id,
                    arguments.workdir);
    drop_layer_capabilities();
    if (own_user) {
        /* Back to its own ids, and dumpable again (a change of ids made it not): its
         * program stage, a fork, keeps that, and its /proc files - the id maps this
         * writes - stay this user's. The job, another user, cannot reach it either way. */
        files_as(SANDBOX_ID);
        require(STAGE, prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) == 0, "staying dumpable");
    }
    struct watcher watcher = {.trace = arguments.trace,
                              .native_arch = arguments.native_arch,
                              .exec_numbers = {arguments.execve_nr, arguments.execveat_nr}};
    watcher.exec_budget = arguments.exec_once && !watcher.trace ? 1 : 0;
    size_t filter_length = read_filter();

    /* Children's exits arrive through a signalfd; the mask is the program stage's to
     * clear (it resets its signals). */
    sigset_t child_signals;
    sigemptyset(&child_signals);
    sigaddset(&child_signals, SIGCHLD);
    sigprocmask(SIG_BLOCK, &child_signals, NULL);

    int pair[2];
    require(STAGE, socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0, "socketpair");
    struct program_setup setup = {.cap_last = arguments.cap_last,
                                  .trace = watcher.trace,
                                  .channel = pair[1],
                                  .first_cgroup_fd = FIRST_CGROUP_FD,
                                  .cgroup_fds = arguments.cgroup_fds,
                                  .join = strcmp(arguments.cgroup_join, "directory") == 0 ? JOIN_BY_DIRECTORY
                                                                                          : JOIN_BY_FILES,
                                  .own_user = own_user,
                                  .filter = filter,
                                  .filter_length = filter_length};
    pid_t program = fork_program_stage(&setup);
    require(STAGE, program >= 0, "forking the program stage");
    if (program == 0) {
        close(pair[0]);
        program_stage(&setup);
    }
    int to_program = pair[0];
    close(pair[1]);
    if (own_user) {
        map_program_ids(program, arguments.job_id, to_program);
    }
    for (int fd = FIRST_CGROUP_FD; fd < FIRST_CGROUP_FD + arguments.cgroup_fds; fd++) {
        close(fd);
    }

    /* Ready once the stage's filter is installed (it sends the listener) or, in a
     * trace run, once it says so. The warm pool hands out ready sandboxes first. */
    char note[16];
    int fds[MAX_PASSED_FDS];
    int received = 0;
    if (channel_receive(to_program, note, sizeof note, fds, 1, &received, STAGE) == 0) {
        _exit(0); /* the stage failed and reported why */
    }
    int listener = received == 1 ? fds[0] : -1;
    report_begin("ready");
    report_end();

    static int passed[MAX_PASSED_FDS];
    size_t job_length = channel_receive(JOB_CHANNEL_FD, job, MAX_JOB, passed, MAX_PASSED_FDS, &received, STAGE);
    if (job_length == 0) {
        _exit(0); /* discarded unused: the kernel takes the stage down with us */
    }
    if (strcmp(job, SESSION_REQUEST) == 0) {
        serve_session(&setup, &watcher, &arguments, program, to_program, listener);
    }
    if (own_user) {
        files_as(arguments.job_id);
    }
    size_t program_offset = take_files(job_length, arguments.disk_bytes, passed, received);
    /* Prepared at SCHED_BATCH (sandbox/zygote.py); the job runs like any other task.
     * (The system call itself: musl's wrapper is a stub, POSIX and Linux disagree.) */
    leave_batch(program, arguments.job_id);
    /* The job's clock and CPU account start now: none of the stage's set-up (the filter
     * alone is most of a millisecond) is charged to the job. */
    int counted = strcmp(arguments.cpu_counter, "none") != 0;
    long long cpu_ns = counted ? read_cpu_ns(arguments.cpu_counter) : 0;
    long long started_ns = monotonic_ns();
    channel_send(to_program, job + program_offset, job_length - program_offset, passed, 3, STAGE);
    for (int i = 0; i < 3; i++) {
        close(passed[i]);
    }
    /* On the job channel, not the report pipe: the supervisor reads it when it needs it
     * (a limit check, the usage at the end) instead of being woken for it just as the
     * program starts (warm static p50 and CPU per job through the worker: -2 %). It is
     * written before anything else can be reported. */
    report_begin("started");
    report_number("t", started_ns);
    if (counted) {
        report_number("cpu_ns", cpu_ns);
    } else {
        report_null("cpu_ns");
    }
    report_end_on(JOB_CHANNEL_FD);
    watch_and_reap(program, to_program, listener, &watcher);
    collect_after();
    _exit(0);
}
