#include <cstdio>
#include <vector>
int main() {
    std::vector<char> block(256 << 20);
    for (size_t i = 0; i < block.size(); i += 4096) block[i] = (char)i;
    std::printf("%d\n", block[4096 * 7]);
}
