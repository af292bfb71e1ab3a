import sys

block = b"9" * (1 << 20)
for _ in range(1024):
    sys.stdout.buffer.write(block)
