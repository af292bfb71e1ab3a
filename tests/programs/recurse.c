/* Recurse until the stack limit stops us (each frame holds 4 KiB). */
#include <stdio.h>
static int depth(int n) {
    volatile char frame[4096];
    frame[0] = (char)n;
    return depth(n + 1) + frame[0];
}
int main(void) { printf("%d\n", depth(0)); return 0; }
