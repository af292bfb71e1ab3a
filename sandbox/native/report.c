#define _GNU_SOURCE
#include "report.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* A line's quoted pieces (one of them the job's) and numbers; a piece is cut where it
 * would leave less than RESERVED bytes for the rest of the line. */
enum { MAX_QUOTED = 1000, MAX_LINE = 4000, RESERVED = 64 };

static char line[MAX_LINE];
static size_t used;

static void append(const char *text) {
    size_t length = strlen(text);
    if (used + length < MAX_LINE) {
        memcpy(line + used, text, length);
        used += length;
    }
}

/* The inside of a JSON string, cut at MAX_QUOTED bytes of output (the text - a command
 * name - may be the job's: six bytes of escape per byte of it must not overrun the
 * line). Bytes from 0x80 up pass as they are; the reader decodes with replacement, so
 * a name that is not UTF-8 still arrives. */
static void quote(const char *text) {
    static const char hex[] = "0123456789abcdef";
    size_t end = used + MAX_QUOTED < MAX_LINE - RESERVED ? used + MAX_QUOTED : MAX_LINE - RESERVED;
    for (size_t i = 0; text[i] && used + 6 <= end; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '"' || c == '\\') {
            line[used++] = '\\';
            line[used++] = (char)c;
        } else if (c < 0x20) {
            memcpy(line + used, "\\u00", 4);
            line[used + 4] = hex[c >> 4];
            line[used + 5] = hex[c & 15];
            used += 6;
        } else {
            line[used++] = (char)c;
        }
    }
}

static void key(const char *name) {
    append(", \"");
    append(name);
    append("\": ");
}

void report_begin(const char *kind) {
    used = 0;
    append("{\"kind\": \"");
    append(kind);
    append("\"");
}

void report_number(const char *name, long long value) {
    char text[32];
    snprintf(text, sizeof text, "%lld", value);
    key(name);
    append(text);
}

void report_seconds(const char *name, long seconds, long microseconds) {
    char text[48];
    snprintf(text, sizeof text, "%ld.%06ld", seconds, microseconds);
    key(name);
    append(text);
}

void report_null(const char *name) {
    key(name);
    append("null");
}

void report_message(const char *prefix, const char *subject, int err, const char *suffix) {
    key("message");
    append("\"");
    quote(prefix);
    quote(subject);
    if (err >= 0) {
        append(": ");
        quote(strerror(err));
    }
    if (suffix) {
        quote(suffix);
    }
    append("\"");
}

void report_end_on(int fd) {
    append("}\n");
    ssize_t ignored = write(fd, line, used);
    (void)ignored;
}

void report_end(void) {
    report_end_on(REPORT_FD);
}

_Noreturn void setup_failed(const char *stage, const char *what) {
    int err = errno ? errno : -1;
    report_begin("setup_error");
    report_message(stage, what, err, NULL);
    report_end();
    _exit(125);
}

void require(const char *stage, int ok, const char *what) {
    if (!ok) {
        setup_failed(stage, what);
    }
}
