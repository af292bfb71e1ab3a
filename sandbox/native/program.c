/*
 * The program stage, forked by the init (init.c) long before its job arrives: it joins
 * the job cgroup, drops every privilege and installs the job's seccomp filter, hands
 * the filter's notification listener to the init ("l" with the fd; a trace run says
 * "ready" instead and installs the filter last, so that the trace holds only the
 * program's calls), then waits for its job: NUL-terminated fields - cwd, the number of
 * rlimits, three decimal numbers per rlimit (resource, soft, hard), argc, the argv
 * strings, envc, the "NAME=value" strings - with stdin, stdout and stderr. Then stdio,
 * chdir, rlimits, exec.
 *
 * Between the filter and the exec it makes only the calls every profile lets through
 * (docs/profiles.md): recvmsg/sendmsg on its channel, dup2, close, chdir,
 * newfstatat/access (PATH search), prlimit64 on itself, write (an error report),
 * execve. It allocates nothing after the filter: its buffers are static.
 *
 * A job that cannot start (no such directory or file, not executable) is the
 * program's failure (exec_error, exit 126 or 127, as the shell says); anything else
 * before the exec is the sandbox's (setup_error, exit 125).
 */
#define _GNU_SOURCE
#include "program.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "channel.h"
#include "kernel.h"
#include "report.h"


enum { MAX_JOB = 1 << 20, MAX_FIELDS = 1 << 16 };
/* A job with an id of its own gets this share of the RLIMIT_SIGPENDING it inherits. The
 * kernel counts pending signals per user of each user namespace and again, in sum, for
 * the user that made the outermost one - the supervisor's, for every job of it - against
 * the limit that user had then. Two jobs of two ids each have their own count, and
 * while fewer than this many jobs fill theirs, the sum stays below the limit: one job's
 * queued signals never make another's fail. */
enum { SIGPENDING_SHARES = 64 };
static const char STAGE[] = "program stage: ";

static char job_buffer[MAX_JOB + 1];
static char *fields[MAX_FIELDS + 1];
static char path_buffer[4096 + 256];

static _Noreturn void exec_failed(int err, const char *prefix, const char *subject, int status) {
    report_begin("exec_error");
    report_number("errno", err);
    report_message(prefix, subject, err, NULL);
    report_end();
    _exit(status);
}

/* Install the job's filter and hand its notification listener to the init, which
 * answers the program's notified calls (its one exec, violations, a trace). */
static void install_filter(const struct program_setup *setup) {
    struct sock_fprog program = {.len = (unsigned short)(setup->filter_length / 8), .filter = setup->filter};
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                            SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &program);
    require(STAGE, listener >= 0, "installing the seccomp filter");
    int fd = (int)listener;
    channel_send(PROGRAM_CHANNEL_FD, "l", 1, &fd, 1, STAGE);
    close(fd);
}

/* No capability survives, in any set, and exec can never grant one back. */
static void drop_privileges(int cap_last) {
    require(STAGE, prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == 0, "clearing the ambient capabilities");
    for (int cap = 0; cap <= cap_last; cap++) {
        require(STAGE, prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0, "dropping the bounding set");
    }
    require(STAGE, prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "setting no_new_privs");
    struct capability_header header = {.version = LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct capability_data data[2];
    memset(data, 0, sizeof data);
    require(STAGE, syscall(SYS_capset, &header, data) == 0, "clearing the capability sets");
}

/* Default dispositions and an empty mask: an ignored signal would stay ignored across
 * exec, a blocked one blocked. */
static void reset_signals(void) {
    for (int number = 1; number < NSIG; number++) {
        if (number != SIGKILL && number != SIGSTOP) {
            signal(number, SIG_DFL); /* fails harmlessly for the C library's own */
        }
    }
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, NULL);
}

/* The job cgroup now, long before the job's clock starts; then a cgroup namespace
 * rooted there, so the job sees its own cgroup as "/". On v1 the fds are the
 * hierarchies' "tasks" files: writing "0" there moves this thread alone - the whole
 * stage, single-threaded - and the kernel then skips the global threadgroup lock
 * whose first writer after a quiet spell waits 5-15 ms for an RCU grace period. */
static void join_cgroups(const struct program_setup *setup) {
    for (int fd = setup->first_cgroup_fd; setup->join != JOIN_DONE && fd < setup->first_cgroup_fd + setup->cgroup_fds;
         fd++) {
        int file = setup->join == JOIN_BY_DIRECTORY ? openat(fd, "cgroup.procs", O_WRONLY | O_CLOEXEC) : fd;
        require(STAGE, file >= 0 && write(file, "0", 1) == 1, "joining the job cgroup");
        if (file != fd) {
            close(file);
        }
    }
    require(STAGE, unshare(CLONE_NEWCGROUP) == 0, "creating the cgroup namespace");
}

/* Report pipe and channel to the init, both closed by the exec; nothing else open. */
static void keep_own_fds(int channel) {
    if (channel != PROGRAM_CHANNEL_FD) {
        require(STAGE, dup2(channel, PROGRAM_CHANNEL_FD) == PROGRAM_CHANNEL_FD, "moving its channel");
    }
    require(STAGE, syscall(SYS_close_range, PROGRAM_CHANNEL_FD + 1, ~0U, 0) == 0, "closing inherited fds");
    require(STAGE, fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC) == 0 && fcntl(PROGRAM_CHANNEL_FD, F_SETFD, FD_CLOEXEC) == 0,
                "closing inherited fds");
}

static int is_executable_file(const char *path) {
    struct stat status;
    return stat(path, &status) == 0 && S_ISREG(status.st_mode) && access(path, X_OK) == 0;
}

/* The file execvpe would run (first executable match on PATH), or NULL. */
static const char *resolve(const char *command, const char *search_path) {
    if (strchr(command, '/')) {
        return command;
    }
    size_t command_length = strlen(command);
    const char *start = search_path;
    for (;;) {
        const char *end = strchrnul(start, ':');
        size_t length = (size_t)(end - start);
        if (length == 0) {
            start = ".", length = 1;
        }
        if (length + 1 + command_length < sizeof path_buffer) {
            memcpy(path_buffer, start, length);
            path_buffer[length] = '/';
            memcpy(path_buffer + length + 1, command, command_length + 1);
            if (is_executable_file(path_buffer)) {
                return path_buffer;
            }
        }
        if (*end == '\0') {
            return NULL;
        }
        start = end + 1;
    }
}

/* Split the job message into its NUL-terminated fields; returns their number. */
static size_t split_fields(size_t length) {
    size_t count = 0;
    size_t start = 0;
    errno = EINVAL;
    require(STAGE, length > 0 && job_buffer[length - 1] == '\0', "a job message not made of NUL-terminated fields");
    for (size_t i = 0; i < length; i++) {
        if (job_buffer[i] == '\0') {
            errno = E2BIG;
            require(STAGE, count < MAX_FIELDS, "a job message with too many fields");
            fields[count++] = job_buffer + start;
            start = i + 1;
        }
    }
    fields[count] = NULL;
    return count;
}

static size_t number_field(size_t index, size_t count) {
    errno = EINVAL;
    require(STAGE, index < count, "a job message cut short");
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull(fields[index], &end, 10);
    int malformed = errno != 0 || end == fields[index] || *end != '\0';
    errno = EINVAL;
    require(STAGE, !malformed, "a job message with a malformed number");
    return (size_t)value;
}

/* (In a user namespace of its own, init.c map_program_ids.) Once the init has mapped
 * uid and gid 1000 here to the job's id, become 1000 - the job's id on the host - with
 * no supplementary group (the supervisor's would reach host files), and take the
 * job's share of pending signals. */
static void become_job_user(int channel) {
    char note[4];
    int received = 0;
    errno = EPROTO;
    require(STAGE, channel_receive(channel, note, sizeof note, NULL, 0, &received, STAGE) == 1 && note[0] == 'm',
            "waiting for the job's id maps");
    require(STAGE, setgroups(0, NULL) == 0, "dropping the supplementary groups");
    require(STAGE, setresgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID) == 0, "taking the job's gid");
    require(STAGE, setresuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID) == 0, "taking the job's uid");
    struct rlimit pending;
    require(STAGE, getrlimit(RLIMIT_SIGPENDING, &pending) == 0, "reading RLIMIT_SIGPENDING");
    if (pending.rlim_cur != RLIM_INFINITY) {
        pending.rlim_cur = pending.rlim_max = pending.rlim_cur / SIGPENDING_SHARES;
        require(STAGE, setrlimit(RLIMIT_SIGPENDING, &pending) == 0, "sharing RLIMIT_SIGPENDING");
    }
}

_Noreturn void program_stage(const struct program_setup *setup) {
    prctl(PR_SET_NAME, "sandbox-program", 0, 0, 0);
    join_cgroups(setup);
    if (setup->own_user) {
        become_job_user(setup->channel);
    }
    require(STAGE, setsid() >= 0, "setsid");
    reset_signals();
    drop_privileges(setup->cap_last);
    keep_own_fds(setup->channel);
    if (setup->trace) {
        channel_send(PROGRAM_CHANNEL_FD, "ready", 5, NULL, 0, STAGE);
    } else {
        install_filter(setup);
    }

    int stdio[MAX_PASSED_FDS];
    int received;
    size_t job_length = channel_receive(PROGRAM_CHANNEL_FD, job_buffer, MAX_JOB, stdio, 3, &received, STAGE);
    if (job_length == 0) {
        _exit(0); /* discarded unused */
    }
    errno = EINVAL;
    require(STAGE, received == 3, "a job without its three stdio fds");
    size_t count = split_fields(job_length);
    for (int target = 0; target < 3; target++) {
        require(STAGE, dup2(stdio[target], target) == target, "stdio");
    }
    for (int target = 0; target < 3; target++) {
        if (stdio[target] > 2) {
            close(stdio[target]);
        }
    }

    size_t index = 0;
    const char *cwd = fields[index++];
    size_t rlimit_count = number_field(index++, count);
    size_t rlimit_first = index;
    errno = EINVAL;
    require(STAGE, rlimit_count < count, "a job message with the wrong number of fields");
    index += 3 * rlimit_count;
    size_t argument_count = number_field(index++, count);
    require(STAGE, argument_count > 0 && argument_count < count, "a job message with the wrong number of fields");
    char **arguments = fields + index;
    index += argument_count;
    size_t environment_count = number_field(index++, count);
    char **environment = fields + index;
    require(STAGE, index + environment_count == count, "a job message with the wrong number of fields");
    fields[index - 1] = NULL; /* argv's terminator, in place of the envc field read above */
    const char *search_path = "";
    for (size_t i = 0; i < environment_count; i++) {
        if (strncmp(environment[i], "PATH=", 5) == 0) {
            search_path = environment[i] + 5;
        }
    }

    if (chdir(cwd) < 0) {
        exec_failed(errno, "cannot enter ", cwd, 126);
    }
    const char *path = resolve(arguments[0], search_path);
    if (setup->trace) {
        install_filter(setup);
    }
    for (size_t i = 0; i < rlimit_count; i++) {
        struct rlimit limit = {.rlim_cur = number_field(rlimit_first + 3 * i + 1, count),
                               .rlim_max = number_field(rlimit_first + 3 * i + 2, count)};
        require(STAGE, setrlimit((int)number_field(rlimit_first + 3 * i, count), &limit) == 0, "setting an rlimit");
    }
    if (path == NULL) {
        exec_failed(ENOENT, arguments[0], "", 127);
    }
    execve(path, arguments, environment);
    exec_failed(errno, arguments[0], "", errno == ENOENT ? 127 : 126);
}
