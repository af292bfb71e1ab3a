/* What every job gets fresh, made by the init before it forks the program stage: its
 * host name, a loopback interface that is up, a /proc of its pid namespace and the
 * size-capped scratch tmpfs behind /work, /tmp and /dev/shm. The root itself (the
 * host image's template or an image's overlay) is built before, in Python
 * (sandbox/rootfs.py, sandbox/overlay.py). */
#ifndef SANDBOX_ROOT_H
#define SANDBOX_ROOT_H

/* On the root at `root` ("/": the template's, already the root; else an image's
 * overlay, pivoted into once its filesystems are mounted - a new procfs can only be
 * mounted where a full one is visible, and the host's goes with the pivot). */
void set_up_job_root(const char *hostname, const char *disk_bytes, const char *root);

#endif
