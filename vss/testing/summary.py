"""Print trial's closing counts as one plain line: ``N passed, N failed, N skipped``."""

import re
import sys


def summary(text):
    found = re.findall(r"^(PASSED|FAILED) \(([^)]*)\)\s*$", text, re.M)
    if not found:
        return None
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found[-1][1])}
    passed = counts.get("successes", 0)
    failed = (counts.get("failures", 0) + counts.get("errors", 0)
              + counts.get("unexpectedSuccesses", 0))
    skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    return f"{passed} passed, {failed} failed, {skipped} skipped"


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        line = summary(f.read())
    print(line or "0 passed, 1 failed (no trial summary found)")
