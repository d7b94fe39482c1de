"""Small helpers shared by the bench scripts (run as scripts: bench/ is on sys.path)."""

import os
import time


class WallClock:
    """The clock the benches give to code that takes one (``seconds()``)."""

    def seconds(self):
        return time.time()


def pin(cpu):
    """Pin this process to one CPU (where the platform allows it)."""
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass
