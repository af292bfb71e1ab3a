/* Cached trees a job mounts by id (docs/architecture.md, "Trees"): each arrives as an
 * fd of a detached clone of the worker's cache directory of it, and is mounted
 * read-only at its path beneath the job's root before the program starts. */
#ifndef SANDBOX_TREES_H
#define SANDBOX_TREES_H

/* Mount the tree `tree` (an fd of a detached mount's root) read-only at `path`
 * (absolute, inside the sandbox; made if missing, never through a symlink). */
void mount_tree(const char *path, int tree);

/* Done mounting the job's trees: let go of what they shared. */
void trees_done(void);

#endif
