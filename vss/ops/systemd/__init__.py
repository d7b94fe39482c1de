"""
The systemd units of vss, shipped in the package so that an operator finds them after
``pip install``: ``vss-cms.service`` and the template ``vss-node@.service`` (instance
name = node id). They name the venv ``/opt/vss``; ``write_units`` (``python -m
vss.ops.systemd DIR``) writes them with the venv it runs from instead (``--prefix`` to
name another). docs/operations.md, "Installing as a service", shows a whole install.
"""

import argparse
import os
import sys
from importlib import resources

from vss.version import version_line

UNITS = ("vss-cms.service", "vss-node@.service")
#: the venv the shipped units name
DEFAULT_PREFIX = "/opt/vss"


def unit_text(name, prefix=DEFAULT_PREFIX):
    """The text of unit ``name`` for a venv at ``prefix``."""
    if name not in UNITS:
        raise ValueError(f"no unit {name!r}")
    prefix = os.path.abspath(prefix)
    if any(c.isspace() for c in prefix) or "%" in prefix:
        raise ValueError(f"a unit's ExecStart cannot name {prefix!r} (space or %)")
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return text.replace(DEFAULT_PREFIX + "/", prefix.rstrip("/") + "/")


def write_units(dest, prefix=DEFAULT_PREFIX):
    """Write every unit into directory ``dest``; the paths written."""
    written = []
    for name in UNITS:
        path = os.path.join(dest, name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(unit_text(name, prefix))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m vss.ops.systemd",
        description="Write the systemd units of vss (vss-cms.service, vss-node@.service) "
                    "into DIR, for the venv given with --prefix.")
    ap.add_argument("dir", help="where to write them, e.g. /etc/systemd/system")
    ap.add_argument("--prefix", default=sys.prefix,
                    help=f"the venv vss is installed in [this one: {sys.prefix}]")
    ap.add_argument("--version", action="version", version=version_line("vss.ops.systemd"))
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.prefix, "bin", "twistd")):
        ap.error(f"--prefix: {args.prefix} has no bin/twistd")
    try:
        written = write_units(args.dir, args.prefix)
    except (OSError, ValueError) as e:
        print(f"python -m vss.ops.systemd: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    python = os.path.realpath(os.path.join(args.prefix, "bin", "python"))
    if python.startswith(("/root/", "/home/")):
        print(f"warning: this venv's Python is {python}: the service's user cannot run it "
              "under ProtectHome=yes; make the venv with the system's python3", file=sys.stderr)
    return 0
