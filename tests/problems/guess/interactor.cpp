// testlib's way: interactor input output answer. The hidden number is the input's; the
// number of guesses goes to output. Exit 0 found, 1 wrong answer (too many guesses, or
// the solution stopped guessing), 3 the input is broken.
#include <csignal>
#include <cstdio>

int main(int argc, char **argv) {
    std::signal(SIGPIPE, SIG_IGN);  // a solution that went away is seen at the next read
    if (argc != 4) return 3;
    FILE *input = std::fopen(argv[1], "r");
    long long hidden;
    if (!input || std::fscanf(input, "%lld", &hidden) != 1) return 3;
    FILE *output = std::fopen(argv[2], "w");
    for (int guesses = 1; guesses <= 30; ++guesses) {
        long long guess;
        if (std::scanf("%lld", &guess) != 1) {
            std::fprintf(stderr, "guess %d: no number, the solution stopped\n", guesses);
            return 1;
        }
        if (guess == hidden) {
            std::puts("=");
            std::fflush(stdout);
            if (output) std::fprintf(output, "%d\n", guesses);
            std::fprintf(stderr, "found in %d guesses\n", guesses);
            return 0;
        }
        std::puts(hidden < guess ? "<" : ">");
        std::fflush(stdout);
    }
    std::fprintf(stderr, "too many guesses\n");
    return 1;
}
