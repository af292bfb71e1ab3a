/* Messages to the supervisor: one JSON object per line on the report pipe (fd 3), each
 * line below PIPE_BUF so that its write is atomic (sandbox/prepare.py reads them). */
#ifndef SANDBOX_REPORT_H
#define SANDBOX_REPORT_H

enum { REPORT_FD = 3 };

void report_begin(const char *kind);
void report_number(const char *key, long long value);
void report_seconds(const char *key, long seconds, long microseconds);
void report_null(const char *key);
/* "message": prefix subject [": " strerror(err) when err >= 0] [suffix] */
void report_message(const char *prefix, const char *subject, int err, const char *suffix);
void report_end(void);
/* The same line on another fd (one datagram on a SOCK_SEQPACKET channel). */
void report_end_on(int fd);

/* A failure of the sandbox itself: setup_error with errno's text, exit 125. */
_Noreturn void setup_failed(const char *stage, const char *what);
/* setup_failed unless `ok`. */
void require(const char *stage, int ok, const char *what);

#endif
