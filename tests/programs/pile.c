/* Piles up one kind of kernel memory until a call refuses or TARGET bytes are held,
 * printing "held N" after every step so the total is known even if the job is killed.
 * Usage: pile KIND TARGET_BYTES. It ends with "stopped: <call> errno=N" or "reached".
 * The tests run it in a sandbox far past the job's memory limit and check the total it
 * could hold stayed bounded (the kernel memory counted against the job or capped). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <unistd.h>

static long long held;
static long long target;
static char chunk[65536];

static void report(void) { printf("held %lld\n", held); fflush(stdout); }
static int stop(const char *call) { printf("stopped: %s errno=%d\n", call, errno); return 0; }

/* Writes into fd until it would block; returns 0 when the target is reached. */
static int fill(int fd) {
    for (;;) {
        ssize_t n = write(fd, chunk, sizeof chunk);
        if (n < 0) return errno == EAGAIN ? 1 : -1;
        held += n;
        if (held >= target) return 0;
    }
}

static int pile_stream_pairs(int tcp) {
    int listener = -1;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    if (tcp) {
        listener = socket(AF_INET, SOCK_STREAM, 0);
        if (listener < 0) return stop("socket");
        if (bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 64) ||
            getsockname(listener, (struct sockaddr *)&address, &length))
            return stop("listen");
    }
    for (;;) {
        int pair[2];
        if (tcp) {
            pair[0] = socket(AF_INET, SOCK_STREAM, 0);
            if (pair[0] < 0) return stop("socket");
            if (connect(pair[0], (struct sockaddr *)&address, sizeof address)) return stop("connect");
            pair[1] = accept(listener, NULL, NULL);
            if (pair[1] < 0) return stop("accept");
        } else if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair)) {
            return stop("socketpair");
        }
        fcntl(pair[0], F_SETFL, O_NONBLOCK);
        int result = fill(pair[0]);
        report();
        if (result == 0) return 0;
        if (result < 0) return stop("write");
    }
}

static int pile_pipes(void) {
    for (;;) {
        int pipe_fds[2];
        if (pipe2(pipe_fds, O_NONBLOCK)) return stop("pipe2");
        if (fcntl(pipe_fds[1], F_SETPIPE_SZ, 1 << 20) < 0) return stop("F_SETPIPE_SZ");
        int result = fill(pipe_fds[1]);
        report();
        if (result == 0) return 0;
        if (result < 0) return stop("write");
    }
}

static int pile_sysv_messages(void) {
    struct { long type; char text[8000]; } message = {.type = 1};
    for (;;) {
        int queue = msgget(IPC_PRIVATE, 0600);
        if (queue < 0) return stop("msgget");
        while (msgsnd(queue, &message, sizeof message.text, IPC_NOWAIT) == 0) {
            held += sizeof message.text;
            if (held >= target) return 0;
        }
        if (errno != EAGAIN) return stop("msgsnd");
        report();
    }
}

static int pile_sysv_shm(void) {
    for (;;) {
        int segment = shmget(IPC_PRIVATE, 8 << 20, 0600);
        if (segment < 0) return stop("shmget");
        char *memory = shmat(segment, NULL, 0);
        if (memory == (void *)-1) return stop("shmat");
        for (size_t offset = 0; offset < (8 << 20); offset += 4096) memory[offset] = 1;
        shmdt(memory);  /* the segment stays, held by the IPC namespace */
        held += 8 << 20;
        report();
        if (held >= target) return 0;
    }
}

static int pile_posix_queues(void) {
    struct mq_attr attributes = {.mq_maxmsg = 10, .mq_msgsize = 8192};
    for (int i = 0;; i++) {
        char name[32];
        snprintf(name, sizeof name, "/pile%d", i);
        mqd_t queue = mq_open(name, O_CREAT | O_WRONLY | O_NONBLOCK, 0600, &attributes);
        if (queue < 0) return stop("mq_open");
        while (mq_send(queue, chunk, attributes.mq_msgsize, 0) == 0) {
            held += attributes.mq_msgsize;
            if (held >= target) return 0;
        }
        if (errno != EAGAIN) return stop("mq_send");
        report();
    }
}

/* Every (epoll instance, watched fd) pair is a kernel object (an epitem and its wait
 * entry, well over 128 bytes on 64-bit): counted at 128 bytes each, a lower bound. */
static int pile_epoll(void) {
    enum { WATCHED = 1000 };
    int watched[WATCHED];
    for (int i = 0; i < WATCHED; i++)
        if ((watched[i] = eventfd(0, 0)) < 0) return stop("eventfd");
    for (;;) {
        int epoll = epoll_create1(0);
        if (epoll < 0) return stop("epoll_create1");
        for (int i = 0; i < WATCHED; i++) {
            struct epoll_event event = {.events = EPOLLIN};
            if (epoll_ctl(epoll, EPOLL_CTL_ADD, watched[i], &event)) return stop("epoll_ctl");
            held += 128;
        }
        report();
        if (held >= target) return 0;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    target = atoll(argv[2]);
    memset(chunk, 'x', sizeof chunk);
    const char *kind = argv[1];
    int done;
    if (!strcmp(kind, "tcp")) done = pile_stream_pairs(1);
    else if (!strcmp(kind, "unix")) done = pile_stream_pairs(0);
    else if (!strcmp(kind, "pipe")) done = pile_pipes();
    else if (!strcmp(kind, "msg")) done = pile_sysv_messages();
    else if (!strcmp(kind, "shm")) done = pile_sysv_shm();
    else if (!strcmp(kind, "mqueue")) done = pile_posix_queues();
    else if (!strcmp(kind, "epoll")) done = pile_epoll();
    else return 2;
    report();
    if (held >= target) puts("reached");
    return done;
}
