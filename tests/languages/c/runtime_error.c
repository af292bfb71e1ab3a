#include <stdio.h>
int main(void) { fprintf(stderr, "failing\n"); return 3; }
