/* The warm pool's shape with nothing of the product in it: the floor a server of this
 * design reaches on the machine (bench/shape.py).
 *
 *   shape SOCKET JOBS VIA_INIT REFILL FILTER [JOIN_FILE CGROUP_PARENT...]
 *
 * A spawner process prepares boxes: pid 1 of six new namespaces (user, pid, mount, net,
 * ipc, uts), which forks a stage that waits to exec `busybox true`. The server takes a
 * one-byte request on SOCKET from one client, releases a box - a byte straight to the
 * stage, or with VIA_INIT to pid 1, which forwards it - reads the program's stdout to
 * EOF and pid 1's report of its wait status, and answers with the status. With REFILL the
 * spawner prepares 4 boxes and one more after each job, while the next jobs run (as a
 * warm pool does); without, all JOBS boxes before the first. With FILTER (a file of BPF
 * instructions) the stage installs it with a listener; with cgroup parents, pid 1
 * mounts a tmpfs on /tmp and a /proc of its pid namespace, and the stage joins a
 * directory made for its box under each parent (through JOIN_FILE: "tasks" on v1,
 * "cgroup.procs" on v2), which the spawner removes once the box is used. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define WARM 4
#define MAX_CGROUPS 4
#define MAX_BOXES 100000

struct box {
    pid_t init;
    int release, report, out;
};

static int via_init;
static struct sock_filter filter[4096];
static unsigned short filter_length;
static const char *join_file;
static const char *cgroup_parents[MAX_CGROUPS];
static int cgroup_count;
static int join_fds[MAX_CGROUPS];

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* The stage: join the box's cgroups, install the filter, wait for the release, exec. */
static _Noreturn void stage(int release, int out) {
    for (int i = 0; i < cgroup_count; i++) {
        if (write(join_fds[i], "0", 1) != 1) _exit(10);
    }
    if (filter_length) {
        struct sock_fprog program = {.len = filter_length, .filter = filter};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                                                              SECCOMP_FILTER_FLAG_NEW_LISTENER, &program) < 0) {
            _exit(11);
        }
    }
    char byte;
    if (read(release, &byte, 1) != 1 || dup2(out, 1) != 1) _exit(12);
    execl("/usr/bin/busybox", "busybox", "true", (char *)NULL);
    _exit(127);
}

/* Pid 1 of the box's namespaces: its mounts, the stage, the forwarding, the report. */
static _Noreturn void init(int release, int forward_read, int forward_write, int report, int out) {
    signal(SIGCHLD, SIG_DFL);
    if (cgroup_count && (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
                         mount("scratch", "/tmp", "tmpfs", 0, "size=64m") ||
                         mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))) {
        _exit(13);
    }
    pid_t child = fork();
    if (child == 0) stage(via_init ? forward_read : release, out);
    close(out);
    char byte;
    if (via_init && (read(release, &byte, 1) != 1 || write(forward_write, &byte, 1) != 1)) _exit(14);
    int status = -1;
    if (waitpid(child, &status, 0) != child || write(report, &status, sizeof status) != sizeof status) _exit(15);
    _exit(0);
}

static void cgroup_path(char *path, size_t size, int parent, int box) {
    snprintf(path, size, "%s/shape-%d-%d", cgroup_parents[parent], (int)getpid(), box);
}

static struct box make_box(int number) {
    char path[512];
    for (int i = 0; i < cgroup_count; i++) {
        cgroup_path(path, sizeof path, i, number);
        if (mkdir(path, 0755)) die("mkdir");
        strncat(path, "/", sizeof path - strlen(path) - 1);
        strncat(path, join_file, sizeof path - strlen(path) - 1);
        if ((join_fds[i] = open(path, O_WRONLY | O_CLOEXEC)) < 0) die("open join file");
    }
    int release[2], forward[2], report[2], out[2];
    if (pipe2(release, O_CLOEXEC) || pipe2(forward, O_CLOEXEC) || pipe2(report, O_CLOEXEC) || pipe2(out, O_CLOEXEC)) {
        die("pipe");
    }
    long pid = syscall(SYS_clone, CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC |
                       CLONE_NEWUTS | SIGCHLD, 0, 0, 0, 0);
    if (pid < 0) die("clone");
    if (pid == 0) init(release[0], forward[0], forward[1], report[1], out[1]);
    close(release[0]), close(forward[0]), close(forward[1]), close(report[1]), close(out[1]);
    for (int i = 0; i < cgroup_count; i++) close(join_fds[i]);
    return (struct box){(pid_t)pid, release[1], report[0], out[0]};
}

static int send_box(int channel, struct box box) {
    int fds[3] = {box.release, box.report, box.out};
    char control[CMSG_SPACE(sizeof fds)] = {0};
    struct iovec data = {.iov_base = &box.init, .iov_len = sizeof box.init};
    struct msghdr message = {.msg_iov = &data, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = sizeof control};
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET, header->cmsg_type = SCM_RIGHTS, header->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(header), fds, sizeof fds);
    ssize_t sent = sendmsg(channel, &message, MSG_NOSIGNAL);
    close(box.release), close(box.report), close(box.out);
    return sent < 0 ? -1 : 0;
}

/* 1 and the box, 0 when none is waiting and DONTWAIT was asked. */
static int receive_box(int channel, struct box *box, int flags) {
    int fds[3];
    char control[CMSG_SPACE(sizeof fds)];
    struct iovec data = {.iov_base = &box->init, .iov_len = sizeof box->init};
    struct msghdr message = {.msg_iov = &data, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = sizeof control};
    ssize_t got = recvmsg(channel, &message, flags | MSG_CMSG_CLOEXEC);
    if (got < 0 && errno == EAGAIN) return 0;
    if (got <= 0 || CMSG_FIRSTHDR(&message) == NULL) die("recvmsg");
    memcpy(fds, CMSG_DATA(CMSG_FIRSTHDR(&message)), sizeof fds);
    box->release = fds[0], box->report = fds[1], box->out = fds[2];
    return 1;
}

/* Boxes are used in the order made: remove the cgroups of the used ones whose processes
 * are gone, oldest first. */
static void remove_cgroups(int *oldest, int used) {
    char path[512];
    for (; *oldest < used; ++*oldest) {
        for (int i = 0; i < cgroup_count; i++) {
            cgroup_path(path, sizeof path, i, *oldest);
            if (rmdir(path) && errno == EBUSY) return;
        }
    }
}

/* Its boxes' pid 1s are its children, reaped as they end (SIGCHLD ignored); each is
 * also held by a pidfd, so that ending the ones left is safe from pid reuse. */
static _Noreturn void spawner(int channel, int first) {
    static int pidfds[MAX_BOXES];
    int made = 0, used = 0, oldest = 0;
    signal(SIGCHLD, SIG_IGN);
    char byte;
    for (;;) {
        if (made >= first) { /* the first ones made, one more for each box the server used */
            if (read(channel, &byte, 1) != 1) break;
            used++;
        }
        if (made >= MAX_BOXES) break;
        struct box box = make_box(made);
        pidfds[made++] = (int)syscall(SYS_pidfd_open, box.init, 0);
        remove_cgroups(&oldest, used);
        if (send_box(channel, box) < 0) break;
    }
    for (int i = 0; i < made; i++) {
        struct pollfd ended = {.fd = pidfds[i], .events = POLLIN};
        syscall(SYS_pidfd_send_signal, pidfds[i], SIGKILL, NULL, 0);
        poll(&ended, 1, 5000);
    }
    for (int tries = 0; tries < 500 && oldest < made; tries++) {
        remove_cgroups(&oldest, made);
        usleep(10000);
    }
    _exit(0);
}

static void load_filter(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(path);
    ssize_t length = read(fd, filter, sizeof filter);
    if (length <= 0 || length % sizeof filter[0]) die("filter");
    filter_length = (unsigned short)(length / sizeof filter[0]);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 6 || argc - 7 > MAX_CGROUPS) {
        fprintf(stderr, "usage: shape SOCKET JOBS VIA_INIT REFILL FILTER [JOIN_FILE CGROUP_PARENT...]\n");
        return 2;
    }
    int jobs = atoi(argv[2]), refill = atoi(argv[4]);
    via_init = atoi(argv[3]);
    if (strcmp(argv[5], "-") != 0) load_filter(argv[5]);
    if (argc > 6) {
        join_file = argv[6];
        for (int i = 7; i < argc; i++) cgroup_parents[cgroup_count++] = argv[i];
    }
    int first = refill ? WARM : jobs;
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair)) die("socketpair");
    pid_t spawner_pid = fork();
    if (spawner_pid == 0) {
        close(pair[0]);
        spawner(pair[1], first);
    }
    close(pair[1]);

    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, argv[1], sizeof address.sun_path - 1);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 1)) die("listen");
    struct box *queue = calloc((size_t)jobs + WARM, sizeof *queue);
    int head = 0, tail = 0;
    while (tail < first) tail += receive_box(pair[0], &queue[tail], 0);
    printf("ready\n");
    fflush(stdout);

    int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    for (int done = 0; done < jobs; done++) {
        char byte;
        if (read(client, &byte, 1) != 1) break;
        while (tail < jobs + WARM && receive_box(pair[0], &queue[tail], MSG_DONTWAIT)) tail++;
        if (head == tail) tail += receive_box(pair[0], &queue[tail], 0);
        struct box *box = &queue[head++];
        char sink[512];
        int status = -1;
        if (write(box->release, "x", 1) != 1) die("release");
        while (read(box->out, sink, sizeof sink) > 0) {}
        if (read(box->report, &status, sizeof status) != sizeof status) die("report");
        if (write(client, &status, sizeof status) != sizeof status) die("answer");
        close(box->release), close(box->report), close(box->out);
        if (refill && done + 1 < jobs && write(pair[0], "r", 1) != 1) die("refill");
    }
    close(pair[0]);
    waitpid(spawner_pid, NULL, 0);
    return 0;
}
