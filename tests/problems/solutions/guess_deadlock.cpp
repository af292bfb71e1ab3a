// Waits for the interactor to speak first; it waits for a guess: nobody writes.
#include <iostream>
#include <string>

int main() {
    std::string first;
    std::cin >> first;
    std::cout << 1 << std::endl;
}
