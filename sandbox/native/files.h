/* The job's input files and writable-area size, applied by the init before the job's
 * program starts (the supervisor sends them with the job). */
#ifndef SANDBOX_FILES_H
#define SANDBOX_FILES_H

/* Copy `source` (read from its start) to `path` (absolute, inside the sandbox) with
 * `mode`, creating the parent directories; never following a symlink (a sandbox path
 * is never trusted: sandbox/fspath.py does the same on the Python side). */
void copy_in(const char *path, int source, unsigned int mode);

/* mkdir -p of `path` (absolute, inside the sandbox), never following a symlink; an
 * O_PATH fd of the directory. A failure ends the init, reported as `doing` the path. */
int directory_beneath(const char *path, const char *doing);

/* openat2 of `name` beneath `directory`, never through a symlink, magic link or "..";
 * the fd is close-on-exec. */
int open_beneath(int directory, const char *name, int flags);

/* The size of the scratch tmpfs behind /work, /tmp and /dev/shm. */
void resize_scratch(const char *size);

#endif
