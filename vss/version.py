"""The version every vss command and daemon names: ``--version`` on each command line
tool and on ``twistd vss-node``/``twistd vss-cms``, the first log line of a daemon."""

import sys

from vss import __version__


def version_line(program):
    """``"vssctl (vss) 0.1.0"``."""
    return f"{program} (vss) {__version__}"


class VersionOption:
    """A ``usage.Options`` mixin: ``--version`` prints ``version_line(program)`` and
    exits 0, before any other option is checked."""

    program = "vss"

    def opt_version(self):
        """Print the vss version and exit."""
        print(version_line(self.program))
        sys.stdout.flush()
        raise SystemExit(0)
