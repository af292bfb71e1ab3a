/* What every job gets fresh, made by the init before it forks the program stage: its
 * host name, a loopback interface that is up, a /proc of its pid namespace and the
 * size-capped scratch tmpfs behind /work, /tmp and /dev/shm - and on an image, its own
 * writable layer over the image's read-only base. The roots themselves (the host
 * image's template, an image's base) are built once per zygote, in Python
 * (sandbox/rootfs.py, sandbox/overlay.py). */
#ifndef SANDBOX_ROOT_H
#define SANDBOX_ROOT_H

/* On the template's root ("/", `image_base` -1), or on an image's: `image_base` is the
 * mount namespace of the image's base, which this copies and overlays with the job's
 * writable layer, then pivots into before it mounts the job's filesystems: the base's
 * tree, its /proc with it, ends up on /tmp, covered by the scratch.
 * `job_id` (0: the template's 1000) comes to own `workdir` there. */
void set_up_job_root(const char *hostname, const char *disk_bytes, int image_base, unsigned int job_id,
                     const char *workdir);

/* An image's writable layer: an O_PATH fd (close-on-exec) of its upper directory on the
 * scratch, which a session's commit reads (whiteouts as 0:0 character devices, opaque
 * directories as user.overlay.opaque: the overlay is mounted with userxattr). -1 on the
 * host image, which has no writable layer. */
int writable_layer_upper(void);

#endif
