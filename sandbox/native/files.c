#define _GNU_SOURCE
#include "files.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernel.h"
#include "report.h"


static const char STAGE[] = "sandbox init: ";
static char chunk[1 << 16];

/* `doing` ("copying ", "mounting a tree at ") `path` failed: the job cannot start. */
static _Noreturn void path_failed(const char *doing, const char *path) {
    int err = errno;
    report_begin("setup_error");
    report_message(doing, path, err, " (is --disk big enough?)");
    report_end();
    _exit(125);
}

static _Noreturn void copy_failed(const char *path) {
    path_failed("sandbox init: copying ", path);
}

int open_beneath(int directory, const char *name, int flags) {
    struct open_how how = {.flags = (unsigned long long)(flags | O_CLOEXEC),
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    return (int)syscall(SYS_openat2, directory, name, &how, sizeof how);
}

/* mkdir -p of `path`'s parent beneath the root; its fd (O_PATH) and, in *name, the
 * last component. `path` is modified (split at its slashes); a failure is `doing` the
 * path `shown`. */
static int parent_beneath(char *path, const char **name, const char *shown, const char *doing) {
    int current = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    char *part = path;
    for (;;) {
        while (*part == '/') {
            part++;
        }
        char *slash = strchr(part, '/');
        if (slash == NULL) {
            break;
        }
        *slash = '\0';
        if (strcmp(part, ".") != 0 && *part) {
            errno = EINVAL;
            if (strcmp(part, "..") == 0) {
                path_failed(doing, shown);
            }
            if (mkdirat(current, part, 0755) < 0 && errno != EEXIST) {
                path_failed(doing, shown);
            }
            int next = open_beneath(current, part, O_PATH | O_DIRECTORY);
            if (next < 0) {
                path_failed(doing, shown);
            }
            close(current);
            current = next;
        }
        part = slash + 1;
    }
    errno = EINVAL;
    if (*part == '\0' || strcmp(part, ".") == 0 || strcmp(part, "..") == 0) {
        path_failed(doing, shown);
    }
    *name = part;
    return current;
}

int directory_beneath(const char *path, const char *doing) {
    char split[4096];
    errno = ENAMETOOLONG;
    if (strlen(path) >= sizeof split) {
        path_failed(doing, path);
    }
    strcpy(split, path);
    const char *name;
    int parent = parent_beneath(split, &name, path, doing);
    if (mkdirat(parent, name, 0755) < 0 && errno != EEXIST) {
        path_failed(doing, path);
    }
    int directory = open_beneath(parent, name, O_PATH | O_DIRECTORY);
    if (directory < 0) {
        path_failed(doing, path);
    }
    close(parent);
    return directory;
}

void copy_in(const char *path, int source, unsigned int mode) {
    char split[4096];
    errno = ENAMETOOLONG;
    if (strlen(path) >= sizeof split) {
        copy_failed(path);
    }
    strcpy(split, path);
    const char *name;
    int parent = parent_beneath(split, &name, path, "sandbox init: copying ");
    int target = openat(parent, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
    if (target < 0 || lseek(source, 0, SEEK_SET) < 0) {
        copy_failed(path);
    }
    close(parent);
    for (;;) {
        ssize_t got = read(source, chunk, sizeof chunk);
        if (got < 0) {
            copy_failed(path);
        }
        if (got == 0) {
            break;
        }
        for (ssize_t done = 0; done < got;) {
            ssize_t written = write(target, chunk + done, (size_t)(got - done));
            if (written < 0) {
                copy_failed(path);
            }
            done += written;
        }
    }
    if (fchmod(target, mode) < 0) {
        copy_failed(path);
    }
    close(target);
}

void resize_scratch(const char *size) {
    int context = (int)syscall(SYS_fspick, AT_FDCWD, "/work", FSPICK_CLOEXEC | FSPICK_SYMLINK_NOFOLLOW);
    if (context < 0 || syscall(SYS_fsconfig, context, FSCONFIG_SET_STRING, "size", size, 0) < 0 ||
        syscall(SYS_fsconfig, context, FSCONFIG_CMD_RECONFIGURE, NULL, NULL, 0) < 0) {
        setup_failed(STAGE, "resizing the writable area");
    }
    close(context);
}
