/* SOCK_SEQPACKET messages with fds (SCM_RIGHTS): the init's channels to its supervisor
 * and to its program stage. */
#ifndef SANDBOX_CHANNEL_H
#define SANDBOX_CHANNEL_H

#include <stddef.h>

/* A job brings stdin, stdout, stderr and up to 1024 input files. */
enum { MAX_PASSED_FDS = 1024 + 3 };

/* One message into `buffer` and up to `max_fds` fds (close-on-exec) into `fds`;
 * returns its length, 0 at EOF. A message or fds that do not fit are the sandbox's
 * failure (setup_failed with `stage`). */
size_t channel_receive(int channel, void *buffer, size_t size, int *fds, int max_fds, int *received_fds,
                       const char *stage);
void channel_send(int channel, const void *data, size_t length, const int *fds, int count, const char *stage);

#endif
