/* The init's side of SECCOMP_RET_USER_NOTIF: name violations, allow one exec, record
 * traces (see notify.c). */
#ifndef SANDBOX_NOTIFY_H
#define SANDBOX_NOTIFY_H

struct watcher {
    int exec_budget;  /* execs still let through: 1 for an exec-once profile, for the program's own */
    int trace;        /* record each distinct call and let it run */
    unsigned int native_arch;
    int exec_numbers[2];  /* execve, execveat */
};

/* Take the pending notification (the listener polled readable or hung up); 0 once the
 * listener is done with: the job ended or was killed. */
int watcher_handle(struct watcher *watcher, int listener);

#endif
