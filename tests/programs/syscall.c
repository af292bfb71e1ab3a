/* Make one raw system call: syscall NR [ARG0 [ARG1 [ARG2]]] (numbers, 0x.. allowed).
   Prints "ret=R errno=E" when the call returns. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long a[4] = {0, 0, 0, 0};
    for (int i = 1; i < argc && i <= 4; i++) a[i - 1] = (long)strtoull(argv[i], 0, 0);
    errno = 0;
    long r = syscall(a[0], a[1], a[2], a[3]);
    printf("ret=%ld errno=%d\n", r, r < 0 ? errno : 0);
    return 0;
}
