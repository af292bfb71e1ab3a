/* Files out: the paths a job names to collect, opened by the init once every process of
 * the job is dead and handed to the supervisor as fds (sandbox/collect.py reads them). */
#ifndef SANDBOX_COLLECT_H
#define SANDBOX_COLLECT_H

/* One entry of the job's collect list (`path` absolute, kept by the caller); a
 * directory is walked, at most `max_entries` entries of its tree. */
void collect_add(const char *path, int directory, long max_entries);

/* How many entries the job named: none, and the init neither kills nor collects. */
int collect_count(void);

/* The list is done with (a session's exec collected it): the next exec names its own. */
void collect_forget(void);

/* Open every entry beneath the root and send the fds and errors on `channel`, then
 * "done". Call only with every other process of the job reaped: nothing can change a
 * file while it is looked at. */
void collect_send(int channel);

#endif
