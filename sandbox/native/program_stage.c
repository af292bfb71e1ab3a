/*
 * The program stage (C) of a sandbox: the process that becomes the job's program.
 *
 * Why C and not the Python the rest of the sandbox is written in: this process exists
 * once per job, and everything it costs is paid per job. Forked from the Python init,
 * it copied the init's page tables, faulted in the interpreter pages Python's reference
 * counting writes to, ran ~100 lines of Python and finally tore the interpreter's memory
 * down in the exec - about 2 ms of CPU a job and ~0.5 ms of its latency. The init now
 * starts this static binary with posix_spawn (vfork semantics: nothing copied) and it
 * does the same steps in a few hundred microseconds. runc keeps its namespace entry in
 * C beside Go (nsexec.c) for a similar reason.
 *
 * Started by the init (sandbox/stages.py) as
 *     program-stage CAP_LAST TRACE NUMBER_OF_CGROUP_FDS
 * with fd 3 the report pipe to the supervisor (one JSON object per line), fd 4 its
 * SOCK_SEQPACKET channel to the init, fds 5.. the job cgroup's cgroup.procs files, and
 * CAP_SYS_ADMIN (for the cgroup namespace) and CAP_SETPCAP (to empty the bounding set)
 * in its ambient set, dropped with the rest.
 *
 * Conversation on fd 4:
 *   init -> stage   the seccomp program (classic BPF, 8 bytes an instruction)
 *   stage -> init   "l" with the filter's notification listener (SCM_RIGHTS), or,
 *                   in a trace run, "ready" (the filter comes last, just before exec)
 *   init -> stage   the job: NUL-terminated fields - cwd, the number of rlimits, three
 *                   decimal numbers per rlimit (resource, soft, hard), argc, the argv
 *                   strings, envc, the "NAME=value" strings - with stdin, stdout and
 *                   stderr as SCM_RIGHTS
 *   stage -> init   (trace run only) "l" with the listener
 * then the exec. Between the filter and the exec this stage makes only the calls every
 * profile lets through (docs/profiles.md): recvmsg/sendmsg on fd 4, dup2, close, chdir,
 * newfstatat/access (PATH search), prlimit64 on itself, write (an error report), execve.
 * It allocates nothing after the filter: its buffers are static.
 *
 * Errors before the job are the sandbox's (setup_error, exit 125); a job that cannot
 * start (no such directory or file, not executable) is the program's (exec_error, exit
 * 126 or 127), as in sandbox/child.py and the shell.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The kernel ABI this stage uses, spelled out here rather than taken from the kernel's
 * headers: the C library it is best built with (musl, see setup.py) ships none. */
#define SECCOMP_SET_MODE_FILTER 1
#define SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#define LINUX_CAPABILITY_VERSION_3 0x20080522
struct sock_filter {
    unsigned short code;
    unsigned char jt, jf;
    unsigned int k;
};
struct sock_fprog {
    unsigned short len;
    struct sock_filter *filter;
};
struct capability_header {
    unsigned int version;
    int pid;
};
struct capability_data {
    unsigned int effective, permitted, inheritable;
};

enum { REPORT_FD = 3, INIT_FD = 4, FIRST_CGROUP_FD = 5 };
enum { MAX_FILTER = 4096 * sizeof(struct sock_filter), MAX_JOB = 1 << 20, MAX_FIELDS = 1 << 16 };
/* A report line holds at most three quoted fields of MAX_QUOTED bytes each and stays
 * below PIPE_BUF, so that its write is atomic. */
enum { MAX_QUOTED = 1000, MAX_REPORT = 4000 };

static unsigned char filter_buffer[MAX_FILTER + 1];
static char job_buffer[MAX_JOB + 1];
static char *fields[MAX_FIELDS + 1];
static char report_line[MAX_REPORT];
static char path_buffer[4096 + 256];

/* Append `text` to `out` (at `*used`) as the inside of a JSON string, cut at
 * MAX_QUOTED bytes of output (the text - a command name - is the job's: six bytes of
 * escape per byte of it must not overrun the line). Bytes from 0x80 up pass as they
 * are; the reader decodes with replacement, so a name that is not UTF-8 still arrives. */
static void json_quote(char *out, size_t *used, const char *text) {
    static const char hex[] = "0123456789abcdef";
    size_t n = *used;
    size_t end = *used + MAX_QUOTED - 6;
    for (size_t i = 0; text[i] && n <= end; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            memcpy(out + n, "\\u00", 4);
            out[n + 4] = hex[c >> 4];
            out[n + 5] = hex[c & 15];
            n += 6;
        } else {
            out[n++] = (char)c;
        }
    }
    *used = n;
}

static void append(char *out, size_t *used, const char *text) {
    size_t length = strlen(text);
    memcpy(out + *used, text, length);
    *used += length;
}

/* One report line: {"kind": KIND, "errno": ERR (if >= 0), "message": PREFIX SUBJECT
 * ": " strerror(ERR)}. Only write(2): safe after the filter. */
static void report(const char *kind, int err, const char *prefix, const char *subject) {
    size_t used = 0;
    char number[16];
    append(report_line, &used, "{\"kind\": \"");
    append(report_line, &used, kind);
    append(report_line, &used, "\"");
    if (err >= 0) {
        snprintf(number, sizeof number, "%d", err);
        append(report_line, &used, ", \"errno\": ");
        append(report_line, &used, number);
    }
    append(report_line, &used, ", \"message\": \"");
    json_quote(report_line, &used, prefix);
    json_quote(report_line, &used, subject);
    if (err >= 0) {
        append(report_line, &used, ": ");
        json_quote(report_line, &used, strerror(err));
    }
    append(report_line, &used, "\"}\n");
    ssize_t ignored = write(REPORT_FD, report_line, used);
    (void)ignored;
}

static _Noreturn void setup_failed(const char *what) {
    report("setup_error", errno ? errno : -1, "program stage: ", what);
    _exit(125);
}

static _Noreturn void exec_failed(int err, const char *prefix, const char *subject, int status) {
    report("exec_error", err, prefix, subject);
    _exit(status);
}

/* Receive one message on INIT_FD into `buffer`; its fds (up to `max_fds`) into `fds`.
 * Returns the length; 0 is the init's EOF (the sandbox was discarded). */
static size_t receive(void *buffer, size_t size, int *fds, int max_fds, int *received_fds) {
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int) * 3)];
    } control;
    struct iovec vector = {.iov_base = buffer, .iov_len = size};
    struct msghdr message = {.msg_iov = &vector, .msg_iovlen = 1};
    if (max_fds > 0) {
        message.msg_control = control.space;
        message.msg_controllen = sizeof control.space;
    }
    ssize_t length = recvmsg(INIT_FD, &message, MSG_CMSG_CLOEXEC);
    if (length < 0) {
        setup_failed("receiving from the init");
    }
    if (message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        errno = EMSGSIZE;
        setup_failed("receiving from the init");
    }
    *received_fds = 0;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_RIGHTS) {
            int count = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds, CMSG_DATA(header), sizeof(int) * (size_t)count);
            *received_fds = count;
        }
    }
    return (size_t)length;
}

static void send_to_init(const char *text, int fd) {
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    struct iovec vector = {.iov_base = (void *)text, .iov_len = strlen(text)};
    struct msghdr message = {.msg_iov = &vector, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        message.msg_control = control.space;
        message.msg_controllen = sizeof control.space;
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(header), &fd, sizeof(int));
    }
    if (sendmsg(INIT_FD, &message, MSG_NOSIGNAL) < 0) {
        setup_failed("sending to the init");
    }
}

/* Install the job's filter and hand its notification listener to the init, which
 * answers the program's notified calls (its one exec, violations, a trace). */
static void install_filter(unsigned char *program, size_t length) {
    struct sock_fprog prog = {.len = (unsigned short)(length / sizeof(struct sock_filter)),
                              .filter = (struct sock_filter *)program};
    long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                            SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &prog);
    if (listener < 0) {
        setup_failed("installing the seccomp filter");
    }
    send_to_init("l", (int)listener);
    close((int)listener);
}

/* No capability survives, in any set, and exec can never grant one back. */
static void drop_privileges(int cap_last) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0) {
        setup_failed("clearing the ambient capabilities");
    }
    for (int cap = 0; cap <= cap_last; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            setup_failed("dropping the bounding set");
        }
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        setup_failed("setting no_new_privs");
    }
    struct capability_header header = {.version = LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct capability_data data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) < 0) {
        setup_failed("clearing the capability sets");
    }
}

/* Default dispositions and an empty mask: the init ignores SIGPIPE and SIGXFSZ (Python
 * does), and an ignored signal would stay ignored across exec. */
static void reset_signals(void) {
    for (int number = 1; number < NSIG; number++) {
        if (number != SIGKILL && number != SIGSTOP) {
            signal(number, SIG_DFL);  /* fails harmlessly for glibc's own 32, 33 */
        }
    }
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, NULL);
}

/* The job cgroup now, long before the job's clock starts; then a cgroup namespace
 * rooted there, so the job sees its own cgroup as "/". */
static void join_cgroups(int count) {
    for (int fd = FIRST_CGROUP_FD; fd < FIRST_CGROUP_FD + count; fd++) {
        if (write(fd, "0", 1) != 1) {
            setup_failed("joining the job cgroup");
        }
    }
    if (unshare(CLONE_NEWCGROUP) < 0) {
        setup_failed("creating the cgroup namespace");
    }
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
    if (length == 0 || job_buffer[length - 1] != '\0') {
        errno = EINVAL;
        setup_failed("a job message not made of NUL-terminated fields");
    }
    for (size_t i = 0; i < length; i++) {
        if (job_buffer[i] == '\0') {
            if (count == MAX_FIELDS) {
                errno = E2BIG;
                setup_failed("a job message with too many fields");
            }
            fields[count++] = job_buffer + start;
            start = i + 1;
        }
    }
    fields[count] = NULL;
    return count;
}

static size_t number_field(size_t index, size_t count) {
    char *end;
    if (index >= count) {
        errno = EINVAL;
        setup_failed("a job message cut short");
    }
    errno = 0;
    unsigned long long value = strtoull(fields[index], &end, 10);
    if (errno || *end || end == fields[index]) {
        errno = EINVAL;
        setup_failed("a job message with a malformed number");
    }
    return (size_t)value;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        errno = EINVAL;
        setup_failed("started with the wrong arguments");
    }
    int cap_last = atoi(argv[1]);
    int trace = atoi(argv[2]);
    int cgroup_fds = atoi(argv[3]);
    prctl(PR_SET_NAME, "sandbox-program", 0, 0, 0);  /* for ps until the exec; not the fd it was run from */

    join_cgroups(cgroup_fds);
    if (setsid() < 0) {
        setup_failed("setsid");
    }
    reset_signals();
    drop_privileges(cap_last);
    /* The report pipe and the channel to the init, closed by the exec; nothing else
     * stays open. */
    if (syscall(SYS_close_range, FIRST_CGROUP_FD, ~0U, 0) < 0 || fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC) < 0 ||
        fcntl(INIT_FD, F_SETFD, FD_CLOEXEC) < 0) {
        setup_failed("closing inherited fds");
    }

    int ignored_fds[3];
    int count_fds;
    size_t filter_length = receive(filter_buffer, sizeof filter_buffer, ignored_fds, 0, &count_fds);
    if (filter_length == 0) {
        _exit(0);
    }
    if (filter_length % sizeof(struct sock_filter) || filter_length > MAX_FILTER) {
        errno = EINVAL;
        setup_failed("a seccomp program of the wrong size");
    }
    if (trace) {
        send_to_init("ready", -1);
    } else {
        install_filter(filter_buffer, filter_length);
    }

    int stdio[3];
    int received;
    size_t job_length = receive(job_buffer, MAX_JOB, stdio, 3, &received);
    if (job_length == 0) {
        _exit(0);  /* discarded unused */
    }
    if (received != 3) {
        errno = EINVAL;
        setup_failed("a job without its three stdio fds");
    }
    size_t count = split_fields(job_length);
    for (int target = 0; target < 3; target++) {
        if (dup2(stdio[target], target) < 0) {
            setup_failed("stdio");
        }
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
    index += 3 * rlimit_count;
    size_t argument_count = number_field(index++, count);
    char **arguments = fields + index;
    index += argument_count;
    size_t environment_count = number_field(index++, count);
    char **environment = fields + index;
    if (argument_count == 0 || index + environment_count != count) {
        errno = EINVAL;
        setup_failed("a job message with the wrong number of fields");
    }
    fields[index - 1] = NULL;  /* argv's terminator, in place of the envc field read above */
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
    if (trace) {
        install_filter(filter_buffer, filter_length);
    }
    for (size_t i = 0; i < rlimit_count; i++) {
        struct rlimit limit = {.rlim_cur = number_field(rlimit_first + 3 * i + 1, count),
                               .rlim_max = number_field(rlimit_first + 3 * i + 2, count)};
        if (setrlimit((int)number_field(rlimit_first + 3 * i, count), &limit) < 0) {
            setup_failed("setting an rlimit");
        }
    }
    if (path == NULL) {
        exec_failed(ENOENT, arguments[0], "", 127);
    }
    execve(path, arguments, environment);
    exec_failed(errno, arguments[0], "", errno == ENOENT ? 127 : 126);
}
