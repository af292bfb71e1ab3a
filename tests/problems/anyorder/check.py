"""checker input output answer: testlib's exit codes (0 ok, 1 wrong, 2 presentation, 7 partial)."""
import sys
from pathlib import Path

n = int(Path(sys.argv[1]).read_text())
words = Path(sys.argv[2]).read_bytes().split()
if len(words) != 2 or not all(w.isdigit() for w in words):
    print(f"expected two non-negative integers, got {len(words)} words", file=sys.stderr)
    sys.exit(2)
x, y = map(int, words)
if x + y != n:
    print(f"{x} + {y} is not {n}", file=sys.stderr)
    sys.exit(1)
if x > y:
    print(f"points 0.5\n{x} > {y}", file=sys.stderr)
    sys.exit(7)
print(f"ok {x} + {y} = {n}", file=sys.stderr)
