/*
 * The program's filter sends kill-listed calls (and foreign-architecture calls) to a
 * listener fd that the init holds. The init's loop polls it beside its children's
 * exits; for a violation it writes {"kind": "violation", number, arch} on the report
 * pipe and SIGKILLs every process of the job's pid namespace. The notified call is
 * never answered, so it never runs; the decision uses only the syscall number and
 * architecture, never a pointer argument the program could change underneath us.
 *
 * The filter is installed with SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: once the init
 * has read a notification, no signal handler of the program can interrupt the wait.
 * Before it reads it, a handler can (the call then fails with EINTR without running);
 * RECV then returns ENOENT, and that is reported as a violation too, with the name
 * unknown. (RECV also says ENOENT once no task uses the filter any more - the job
 * ended; the listener then polls POLLHUP, which tells the two apart. The one gap: an
 * interrupted attempt immediately followed by the end of the whole job looks like the
 * latter. The call never ran either way.)
 */
#define _GNU_SOURCE
#include "notify.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#include "kernel.h"
#include "report.h"


enum { MAX_TRACED = 4096 };
static uint64_t traced[MAX_TRACED]; /* (arch << 32 | nr) already reported */
static int traced_count;

/* True when no task uses the filter any more (RECV then says ENOENT too). */
static int orphaned(int listener) {
    struct pollfd poller = {.fd = listener, .events = POLLIN};
    return poll(&poller, 1, 0) > 0 && (poller.revents & POLLHUP);
}

static void let_run(int listener, uint64_t id) {
    struct seccomp_notif_resp response = {.id = id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &response) < 0 && errno != ENOENT) { /* ENOENT: it died */
        setup_failed("sandbox init: ", "answering a notification");
    }
}

/* From pid 1 of the job's namespace, kill(-1) reaches every other process in it. */
static void kill_job(void) {
    kill(-1, SIGKILL);
}

static int first_sighting(uint64_t call) {
    for (int i = 0; i < traced_count; i++) {
        if (traced[i] == call) {
            return 0;
        }
    }
    if (traced_count < MAX_TRACED) {
        traced[traced_count++] = call;
    }
    return 1;
}

int watcher_handle(struct watcher *watcher, int listener) {
    struct seccomp_notif notification;
    memset(&notification, 0, sizeof notification);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &notification) < 0) {
        if (errno == EINTR) {
            return 1;
        }
        if (errno == ENOENT && !orphaned(listener)) {
            if (watcher->trace) {
                return 1; /* the traced call was interrupted: nothing to name */
            }
            report_begin("violation");
            report_null("number");
            report_null("arch");
            report_end();
            kill_job();
        }
        return 0;
    }
    int nr = notification.data.nr;
    uint32_t arch = notification.data.arch;
    if (watcher->trace) {
        if (first_sighting((uint64_t)arch << 32 | (uint32_t)nr)) {
            report_begin("traced");
            report_number("number", nr);
            report_number("arch", arch);
            report_end();
        }
        let_run(listener, notification.id);
        return 1;
    }
    if (watcher->exec_budget > 0 && arch == watcher->native_arch &&
        (nr == watcher->exec_numbers[0] || nr == watcher->exec_numbers[1])) {
        /* The sandbox's own exec of the program: nothing of the program ran yet. */
        watcher->exec_budget--;
        let_run(listener, notification.id);
        return 1;
    }
    report_begin("violation");
    report_number("number", nr);
    report_number("arch", arch);
    report_end();
    kill_job();
    return 0;
}
