#include <cstdlib>
#include <cstring>
int main() { char *p = (char *)malloc(256 << 20); memset(p, 1, 256 << 20); return p[4096]; }
