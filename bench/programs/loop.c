/* A fixed amount of CPU-bound work: argv[1] iterations of a dependent integer loop.
 * Prints the CPU and wall time the loop itself took (ns), so the time the sandbox adds
 * around the program (start, exit) is kept apart from what it adds to running code. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 100000000UL;
    long long cpu0 = ns(CLOCK_PROCESS_CPUTIME_ID), wall0 = ns(CLOCK_MONOTONIC);
    volatile unsigned long x = 1;
    for (unsigned long i = 0; i < n; i++) x = x * 6364136223846793005UL + i;
    printf("%lld %lld\n", ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0, ns(CLOCK_MONOTONIC) - wall0);
    return 0;
}
