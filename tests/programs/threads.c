/* Start 8 pthreads (glibc tries clone3 first, must fall back to clone). */
#include <pthread.h>
#include <stdio.h>
static void *work(void *arg) { return arg; }
int main(void) {
    pthread_t t[8];
    for (long i = 0; i < 8; i++)
        if (pthread_create(&t[i], 0, work, (void *)i)) { perror("pthread_create"); return 1; }
    long sum = 0;
    for (int i = 0; i < 8; i++) { void *r; pthread_join(t[i], &r); sum += (long)r; }
    printf("threads ok %ld\n", sum);
    return 0;
}
