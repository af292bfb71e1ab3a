/* Cached trees a job mounts by id, host directories it binds and its volumes
 * (docs/architecture.md, "Trees", "Volumes and binds"): each arrives as an fd of a
 * detached clone of its directory, and is mounted at its path beneath the job's root
 * before the program starts. */
#ifndef SANDBOX_TREES_H
#define SANDBOX_TREES_H

/* Mount the tree `tree` (an fd of a detached mount's root) at `path` (absolute, inside
 * the sandbox; made if missing, never through a symlink): read-only as an overlay, or
 * `writable` as the clone itself. */
void mount_tree(const char *path, int tree, int writable);

/* Done mounting the job's trees: let go of what they shared. */
void trees_done(void);

#endif
