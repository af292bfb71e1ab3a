// One by one from 1: found only for a small number, else too many guesses.
#include <iostream>
#include <string>

int main() {
    for (long long guess = 1;; ++guess) {
        std::cout << guess << std::endl;
        std::string answer;
        if (!(std::cin >> answer) || answer == "=") return 0;
    }
}
