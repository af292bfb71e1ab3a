#define _GNU_SOURCE
#include "channel.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "report.h"

typedef union {
    struct cmsghdr header;
    char space[CMSG_SPACE(sizeof(int) * MAX_PASSED_FDS)];
} control_buffer;

static control_buffer control; /* static: 4 KiB the program stage must not allocate after its filter */

size_t channel_receive(int channel, void *buffer, size_t size, int *fds, int max_fds, int *received_fds,
                       const char *stage) {
    struct iovec vector = {.iov_base = buffer, .iov_len = size};
    struct msghdr message = {.msg_iov = &vector, .msg_iovlen = 1};
    if (max_fds > 0) {
        message.msg_control = control.space;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)max_fds);
    }
    ssize_t length;
    do {
        length = recvmsg(channel, &message, MSG_CMSG_CLOEXEC);
    } while (length < 0 && errno == EINTR);
    if (length < 0) {
        setup_failed(stage, "receiving a message");
    }
    if (message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        errno = EMSGSIZE;
        setup_failed(stage, "receiving a message");
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

void channel_send(int channel, const void *data, size_t length, const int *fds, int count, const char *stage) {
    struct iovec vector = {.iov_base = (void *)data, .iov_len = length};
    struct msghdr message = {.msg_iov = &vector, .msg_iovlen = 1};
    if (count > 0) {
        memset(&control, 0, sizeof control);
        message.msg_control = control.space;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * (size_t)count);
    }
    if (sendmsg(channel, &message, MSG_NOSIGNAL) < 0) {
        setup_failed(stage, "sending a message");
    }
}
