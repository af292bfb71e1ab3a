// Binary search: at most 30 guesses over 1..10^9.
#include <iostream>
#include <string>

int main() {
    long long low = 1, high = 1000000000;
    while (low <= high) {
        long long guess = low + (high - low) / 2;
        std::cout << guess << std::endl;
        std::string answer;
        if (!(std::cin >> answer) || answer == "=") return 0;
        if (answer == "<") high = guess - 1; else low = guess + 1;
    }
}
