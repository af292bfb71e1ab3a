#include <atomic>
#include <iostream>
#include <thread>
#include <vector>
int main() {
    std::atomic<long> sum{0};
    std::vector<std::thread> pool;
    for (long i = 1; i <= 4; i++) pool.emplace_back([&sum, i] { sum += i; });
    for (auto &t : pool) t.join();
    std::cout << "threads " << sum << std::endl;
}
