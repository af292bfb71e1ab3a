// Right, but it thinks for far longer than its CPU time before each guess.
#include <iostream>
#include <string>

int main() {
    long long low = 1, high = 1000000000;
    volatile unsigned long long spin = 0;
    while (low <= high) {
        for (long long i = 0; i < 4000000000LL; ++i) spin = spin + i;
        long long guess = low + (high - low) / 2;
        std::cout << guess << std::endl;
        std::string answer;
        if (!(std::cin >> answer) || answer == "=") return 0;
        if (answer == "<") high = guess - 1; else low = guess + 1;
    }
}
