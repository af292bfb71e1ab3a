// Prints what the compiler options and the program's arguments made of it.
#include <cstdio>
int main(int argc, char **argv) {
#ifdef GREETING
    std::printf("greeting on\n");
#else
    std::printf("greeting off\n");
#endif
    for (int i = 1; i < argc; ++i) std::printf("arg %s\n", argv[i]);
}
