/*
 * Files out. The job's files belong to its own id, which the supervisor's host user
 * cannot override (a job may chmod them 000); this init can (CAP_DAC_READ_SEARCH in the
 * template user namespace, where the job's ids are mapped), and it still holds the
 * job's mount namespace. So it opens them - after the program exited and every other
 * process of the job was killed and reaped, so nothing can swap a file meanwhile - and
 * hands the supervisor the open fds; the supervisor reads each with its cap.
 *
 * Every open is beneath the root with no symlink, magic link or ".." followed
 * (open_beneath), first as O_PATH | O_NOFOLLOW to look at what the name is: only a
 * regular file is ever opened for reading, so a FIFO never blocks and a device is never
 * opened. A directory is walked twice: once to count its tree's entries (stopping past
 * the entry's maximum, so a hundred thousand files cost a hundred thousand fewer
 * steps), then, if it is within it, to send its files.
 *
 * The messages (SOCK_SEQPACKET, on the job channel after "started") are records of
 * NUL-terminated fields: "f", entry index, path - with the next of the message's fds -
 * or "e", entry index, path, reason ("word: detail"); a message of the single record
 * "d" ends them.
 */
#define _GNU_SOURCE
#include "collect.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "channel.h"
#include "files.h"
#include "report.h"

enum { MAX_COLLECT = 64, BATCH_FDS = 64, MAX_DEPTH = 64, MAX_PATH = 4096 };
static const char STAGE[] = "sandbox init: collecting: ";

struct entry {
    const char *path;
    int directory;
    long max_entries;
};

static struct entry entries[MAX_COLLECT];
static int entry_count;

static char batch[1 << 16];
static size_t batch_used;
static int batch_fds[BATCH_FDS];
static int batch_fd_count;

void collect_add(const char *path, int directory, long max_entries) {
    errno = E2BIG;
    require(STAGE, entry_count < MAX_COLLECT, "too many entries");
    entries[entry_count++] = (struct entry){.path = path, .directory = directory, .max_entries = max_entries};
}

int collect_count(void) {
    return entry_count;
}

void collect_forget(void) {
    entry_count = 0;
}

static void flush(int channel) {
    if (batch_used == 0) {
        return;
    }
    channel_send(channel, batch, batch_used, batch_fds, batch_fd_count, STAGE);
    for (int i = 0; i < batch_fd_count; i++) {
        close(batch_fds[i]);
    }
    batch_used = 0;
    batch_fd_count = 0;
}

static void append_field(const char *text) {
    size_t length = strlen(text) + 1;
    memcpy(batch + batch_used, text, length);
    batch_used += length;
}

/* One record: a file (`fd` >= 0, passed with it) or an error (`reason`). */
static void record(int channel, int index, const char *path, int fd, const char *reason) {
    char number[16];
    snprintf(number, sizeof number, "%d", index);
    size_t needed = 2 + strlen(number) + 1 + strlen(path) + 1 + (reason ? strlen(reason) + 1 : 0);
    if (batch_used + needed > sizeof batch || (fd >= 0 && batch_fd_count == BATCH_FDS)) {
        flush(channel);
    }
    append_field(fd >= 0 ? "f" : "e");
    append_field(number);
    append_field(path);
    if (fd >= 0) {
        batch_fds[batch_fd_count++] = fd;
    } else {
        append_field(reason);
    }
}

static void refuse(int channel, int index, const char *path, const char *word, const char *detail) {
    char reason[256];
    snprintf(reason, sizeof reason, "%s: %s", word, detail);
    record(channel, index, path, -1, reason);
}

/* Why an open beneath the root failed, as a reason's word and detail. */
static void refuse_errno(int channel, int index, const char *path, int err) {
    if (err == ENOENT) {
        record(channel, index, path, -1, "missing");
    } else if (err == ELOOP) {
        refuse(channel, index, path, "not_regular", "symlink");
    } else if (err == ENOTDIR) {
        refuse(channel, index, path, "missing", "a part of the path is not a directory");
    } else if (err == EXDEV) {
        refuse(channel, index, path, "outside", "the path leaves the job's root");
    } else {
        refuse(channel, index, path, "unreadable", strerror(err));
    }
}

static const char *type_name(mode_t mode) {
    switch (mode & S_IFMT) {
    case S_IFREG: return "regular file";
    case S_IFDIR: return "directory";
    case S_IFLNK: return "symlink";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    case S_IFCHR: return "character device";
    case S_IFBLK: return "block device";
    default: return "unknown";
    }
}

/* What `name` beneath `parent` is, not followed: its mode, or -errno. */
static long long probe(int parent, const char *name, struct stat *seen) {
    int fd = open_beneath(parent, name, O_PATH | O_NOFOLLOW);
    if (fd < 0) {
        return -errno;
    }
    int looked = fstat(fd, seen);
    int err = errno;
    close(fd);
    return looked < 0 ? -err : (long long)seen->st_mode;
}

static void collect_file(int channel, int index, int parent, const char *name, const char *path) {
    struct stat seen, opened;
    long long mode = probe(parent, name, &seen);
    if (mode < 0) {
        refuse_errno(channel, index, path, (int)-mode);
        return;
    }
    if (!S_ISREG((mode_t)mode)) {
        refuse(channel, index, path, "not_regular", type_name((mode_t)mode));
        return;
    }
    int fd = open_beneath(parent, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        refuse_errno(channel, index, path, errno);
        return;
    }
    if (fstat(fd, &opened) < 0 || opened.st_ino != seen.st_ino || opened.st_dev != seen.st_dev) {
        close(fd);
        record(channel, index, path, -1, "changed");
        return;
    }
    record(channel, index, path, fd, NULL);
}

/* The type of a directory entry; DT_UNKNOWN (a file system that does not say) is
 * looked up, not followed. */
static unsigned char entry_type(int directory, const struct dirent *item) {
    if (item->d_type != DT_UNKNOWN) {
        return item->d_type;
    }
    struct stat seen;
    if (fstatat(directory, item->d_name, &seen, AT_SYMLINK_NOFOLLOW) < 0) {
        return DT_UNKNOWN;
    }
    return S_ISDIR(seen.st_mode) ? DT_DIR : DT_REG;
}

static int is_dot(const char *name) {
    return strcmp(name, ".") == 0 || strcmp(name, "..") == 0;
}

/* The entries of the tree beneath `directory` (which this closes), counting stopped
 * once past `budget`. */
static long count_entries(int directory, long budget, int depth) {
    DIR *listing = fdopendir(directory);
    if (listing == NULL) {
        close(directory);
        return 0;
    }
    long seen = 0;
    struct dirent *item;
    while (seen <= budget && (item = readdir(listing)) != NULL) {
        if (is_dot(item->d_name)) {
            continue;
        }
        seen++;
        if (depth < MAX_DEPTH && entry_type(dirfd(listing), item) == DT_DIR) {
            int sub = open_beneath(dirfd(listing), item->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
            if (sub >= 0) {
                seen += count_entries(sub, budget - seen, depth + 1);
            }
        }
    }
    closedir(listing);
    return seen;
}

/* Every file of the tree beneath `directory` (which this closes), named `path`
 * (`length` bytes of the buffer, extended and restored per entry). */
static void send_tree(int channel, int index, int directory, char *path, size_t length, int depth) {
    DIR *listing = fdopendir(directory);
    if (listing == NULL) {
        refuse_errno(channel, index, path, errno);
        close(directory);
        return;
    }
    struct dirent *item;
    while ((item = readdir(listing)) != NULL) {
        if (is_dot(item->d_name)) {
            continue;
        }
        size_t name_length = strlen(item->d_name);
        if (length + 1 + name_length >= MAX_PATH) {
            refuse(channel, index, path, "too_long", "a name beneath it makes a path over 4096 bytes");
            continue;
        }
        path[length] = '/';
        memcpy(path + length + 1, item->d_name, name_length + 1);
        if (entry_type(dirfd(listing), item) != DT_DIR) {
            collect_file(channel, index, dirfd(listing), item->d_name, path);
        } else if (depth >= MAX_DEPTH) {
            refuse(channel, index, path, "too_deep", "more directory levels than the walk takes");
        } else {
            int sub = open_beneath(dirfd(listing), item->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
            if (sub < 0) {
                refuse_errno(channel, index, path, errno);
            } else {
                send_tree(channel, index, sub, path, length + 1 + name_length, depth + 1);
            }
        }
        path[length] = '\0';
    }
    closedir(listing);
}

static void collect_directory(int channel, int index, int root, const struct entry *entry) {
    static char path[MAX_PATH];
    size_t length = strlen(entry->path);
    while (length > 1 && entry->path[length - 1] == '/') {
        length--;
    }
    if (length >= MAX_PATH) {
        refuse(channel, index, entry->path, "too_long", "the path");
        return;
    }
    memcpy(path, entry->path, length);
    path[length] = '\0';
    struct stat seen;
    long long mode = probe(root, path + 1, &seen);
    if (mode < 0) {
        refuse_errno(channel, index, entry->path, (int)-mode);
        return;
    }
    if (!S_ISDIR((mode_t)mode)) {
        refuse(channel, index, entry->path, "not_directory", type_name((mode_t)mode));
        return;
    }
    int counted = open_beneath(root, path + 1, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (counted < 0) {
        refuse_errno(channel, index, entry->path, errno);
        return;
    }
    if (count_entries(counted, entry->max_entries, 0) > entry->max_entries) {
        char detail[32];
        snprintf(detail, sizeof detail, "over %ld", entry->max_entries);
        refuse(channel, index, entry->path, "too_many_files", detail);
        return;
    }
    int walked = open_beneath(root, path + 1, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (walked < 0) {
        refuse_errno(channel, index, entry->path, errno);
        return;
    }
    send_tree(channel, index, walked, path, length, 0);
}

void collect_send(int channel) {
    /* Up to BATCH_FDS fds per message, a few messages queued: more in flight than a low
     * soft limit allows (the kernel counts a sender's in-flight fds against it). */
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    require(STAGE, root >= 0, "opening the root");
    for (int index = 0; index < entry_count; index++) {
        const struct entry *entry = &entries[index];
        if (entry->directory) {
            collect_directory(channel, index, root, entry);
        } else {
            collect_file(channel, index, root, entry->path + 1, entry->path);
        }
    }
    close(root);
    flush(channel);
    channel_send(channel, "d", 2, NULL, 0, STAGE);
}
