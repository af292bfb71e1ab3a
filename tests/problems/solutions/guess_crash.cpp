// One guess, the answer read, then a crash.
#include <iostream>
#include <string>

int main() {
    std::cout << 500000000 << std::endl;
    std::string answer;
    std::cin >> answer;
    volatile int *nowhere = nullptr;
    return *nowhere;
}
