/* Make a 32-bit (int 0x80) system call: getpid on i386 is 20. Must be killed. */
int main(void) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    return ret > 0 ? 0 : 3;
}
