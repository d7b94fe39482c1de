"""
The systemd units shipped in the package (``vss.ops.systemd``): written for a venv by
``python -m vss.ops.systemd DIR``, checked by ``systemd-analyze verify`` (no error and
no warning about them), hardened as docs/operations.md says, and their ``ExecStart``
is a command line the daemons' own option parsers accept.
"""

import os
import shlex
import shutil
import subprocess
import sys

from twisted.trial import unittest

from vss.ops import systemd
from vss.rgm.localcentral import MemoryCentral

HARDENING = ("User=vss", "Group=vss", "NoNewPrivileges=yes", "ProtectSystem=strict",
             "ProtectHome=yes", "PrivateTmp=yes", "Restart=on-failure", "UMask=0077",
             "CapabilityBoundingSet=\n")


def directives(text):
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


class UnitTests(unittest.TestCase):
    def write(self):
        dest = os.path.abspath(self.mktemp())
        os.makedirs(dest)
        out = subprocess.run([sys.executable, "-m", "vss.ops.systemd", dest,
                              "--prefix", sys.prefix], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        paths = out.stdout.split()
        self.assertEqual([os.path.basename(p) for p in paths], list(systemd.UNITS))
        return dest, paths

    def test_systemd_analyze_verify(self):
        exe = shutil.which("systemd-analyze")
        if exe is None:
            raise unittest.SkipTest("systemd-analyze is not installed (Debian package "
                                    "'systemd'): the units were not verified")
        dest, paths = self.write()
        # the template as shipped, and one instance of it (%i filled in)
        instance = os.path.join(dest, "vss-node@node-a.service")
        shutil.copy(os.path.join(dest, "vss-node@.service"), instance)
        out = subprocess.run([exe, "verify", "--man=no", *paths, instance],
                             capture_output=True, text=True)
        ours = [line for line in (out.stdout + out.stderr).splitlines()
                if "vss-" in line]
        self.assertEqual((out.returncode, ours), (0, []), out.stdout + out.stderr)

    def test_a_typo_would_be_seen(self):
        """What the verify test relies on: systemd-analyze names a unit's bad key."""
        exe = shutil.which("systemd-analyze")
        if exe is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        dest, paths = self.write()
        bad = os.path.join(dest, "vss-cms.service")
        with open(bad) as f:
            text = f.read()
        with open(bad, "w") as f:
            f.write(text.replace("NoNewPrivileges=", "NoNewPrivilege="))
        out = subprocess.run([exe, "verify", "--man=no", bad], capture_output=True, text=True)
        self.assertIn("NoNewPrivilege", out.stdout + out.stderr)

    def test_hardening_and_state_directories(self):
        for name in systemd.UNITS:
            text = systemd.unit_text(name)
            for line in HARDENING:
                self.assertIn(line if line.endswith("\n") else line + "\n", text, name)
            d = directives(text)
            data_dir = "/var/lib/vss/cms" if name == "vss-cms.service" \
                else "/var/lib/vss/node-%i"
            self.assertEqual(d["StateDirectory"], [data_dir.removeprefix("/var/lib/")])
            self.assertEqual(d["WorkingDirectory"], [data_dir])
            self.assertIn(f"--data-dir {data_dir}", d["ExecStart"][0])

    def test_the_prefix_names_the_venv(self):
        text = systemd.unit_text("vss-cms.service", "/srv/vss-venv")
        self.assertIn("ExecStart=/srv/vss-venv/bin/twistd ", text)
        self.assertNotIn("/opt/vss", text)
        with self.assertRaises(ValueError):
            systemd.unit_text("vss-cms.service", "/srv/my venv")

    def test_exec_start_parses_with_the_daemons_options(self):
        """The ExecStart lines, with the files they name in a temporary directory, are
        accepted by twistd's option parser and the plugin's."""
        from twisted.scripts._twistd_unix import ServerOptions

        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        static = os.path.join(work, "static.json")
        MemoryCentral().save(static)
        with open(os.path.join(work, "cms.ini"), "w") as f:
            f.write("[cms]\nadmin-listen = tcp:7280:interface=127.0.0.1\n")
        with open(os.path.join(work, "node-node-a.ini"), "w") as f:
            f.write(f"[node]\nstatic = {static}\n")
        for name, data in (("vss-cms.service", "cms"), ("vss-node@.service", "node-node-a")):
            line = directives(systemd.unit_text(name))["ExecStart"][0]
            line = line.replace("%i", "node-a").replace("/etc/vss", work) \
                .replace("/var/lib/vss", work)
            argv = shlex.split(line)
            self.assertTrue(argv[0].endswith("/bin/twistd"))
            config = ServerOptions()
            config.parseOptions(argv[1:])
            self.assertTrue(config["nodaemon"])
            self.assertEqual(config["pidfile"], "")
            sub = config.subOptions
            self.assertEqual(config.subCommand, name.split("@")[0].removesuffix(".service"))
            got = sub.settings.data_dir if name.startswith("vss-node") else sub["data-dir"]
            self.assertEqual(got, os.path.join(work, data))
