/* Burn CPU until this process has used argv[1] milliseconds of it (0: forever). */
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
    long want_ms = argc > 1 ? atol(argv[1]) : 0;
    struct timespec ts;
    volatile unsigned long x = 0;
    for (;;) {
        for (int i = 0; i < 100000; i++) x += i;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        if (want_ms && ts.tv_sec * 1000 + ts.tv_nsec / 1000000 >= want_ms) return 0;
    }
}
